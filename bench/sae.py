"""TopK SAE training throughput: ours (``features.train.SAEStep``, jit'd) against plain PyTorch.

Two parts, both in activations (token rows) per second, each side timed in the same run with
interleaved repeats (``common.time_interleaved``):

  (1) **training only**: one Adam step of one TopK SAE (``d_in``, ``d_sae``, ``k``, batch ``B``) on
      a fixed pool of random activation batches. Ours: ``jax.jit(SAEStep(cfg, k_max=k),
      donate_argnums=0)`` on an ``SAEState`` of one member (what ``train_saes`` runs through
      ``loop.fit``, minus ``fit``'s finiteness flags and checkpointing): the dense encoder GEMM,
      ``lax.top_k``, then ``features.sparse``'s kernels on the ``k`` selected latents (decoder and
      every gradient as gathers and scatter-adds, custom VJPs). Torch: the same SAE written plainly
      (``pre = (x - b_dec) W_enc + b_enc``; ``torch.topk`` then ``scatter`` of the ReLU'd values;
      ``x_hat = z W_dec + b_dec``; loss = squared error summed over features, mean over rows;
      ``torch.optim.Adam`` at the same learning rate and defaults as optax's; decoder rows
      renormalised to unit norm after every step): dense latents, autograd, as plain trainers do.
      Both sides start from the same params (``sae.init_params``). **AuxK is off on ours**
      (``aux_k=0``) and absent from torch, and the input scale is 1 (``SAEConfig.normalize``
      folds a fixed factor in; here the batch is given as is): the two compute the same loss, and
      one step from the same start must give the same params (``max_abs_diff``; Adam's first step
      is about ``lr * g / (|g| + eps)``, so entries of gradients near ``eps`` differ by a fraction
      of ``lr`` for fp32 rounding alone).
  (2) **end to end**: a ViT-B/32-shaped CLIP image tower (openai/clip-vit-base-patch32's shape,
      transformers' init, random weights; both sides the same weights, ours converted with
      ``models.clip.from_torch_model``) streams ``vision.layers.<L>.resid_post`` (default L = 6)
      into the SAE step. Each step: one forward of a batch of random 224-px images (a pool of
      ``--pool`` batches, cycled), ``B`` of its token rows sampled. Ours:
      ``features.stream.site_batches`` (one jit'd captured forward; rows picked on the host from a
      generator seeded by ``(seed, step)``) then the jit'd step. Torch: transformers'
      ``CLIPVisionModel(pixel_values, output_hidden_states=True).hidden_states[L + 1]`` (entry 0 is
      the embeddings after ``pre_layrnorm``, entry ``i + 1`` the output of layer ``i``, i.e. our
      ``vision.layers.i.resid_post``; ``site_max_abs_diff`` checks it on the first step's rows), the
      same rows, then the torch step. ``torch_trunc``: the same with a ``CLIPVisionModel`` of
      ``L + 1`` layers, i.e. stopping where the site is; ours computes only that much too, since
      ``site_batches``' program returns the captured site alone and XLA drops the layers after it.

FLOPs: matmuls only. A dense SAE step runs five ``[B, d_in] x [d_in, d_sae]``-sized GEMMs: the
encoder and decoder forward, the decoder's two gradients (``dW_dec = z^T g``, ``dz = g W_dec^T``)
and the encoder's weight gradient (``dW_enc = x^T dpre``; the input gradient of the encoder is not
needed, ``x`` being data): ``10 B d_in d_sae`` per step, the work of the function both sides
compute, and the rates below are of that work (torch does all of it; ours skips what multiplies
zeros). Ours' own work is one such GEMM plus ``10 B k d_in`` (``sparse_step_flops``), reported
beside it. Adam, the top-k selection and the renormalisation are not counted. Rates are compared
with a measured matmul peak (``common.matmul_peak``'s square jit'd GEMM). End to end, the work is
the tower up to layer L (patch embedding and L + 1 layers, ``common.layer_flops``) plus the step.

**Variant** (``--variant``): ``ours_dense``, the same ``SAEStep`` with ``k_max=0``: dense latents
(``sae._rank_mask``, a radix select at a traced ``k``: 32 compare-and-count passes) and five GEMMs,
i.e. ours before the sparse kernels (its params after the first step are compared with ours'). The
same run times the selection alone on a ``[B, d_sae]`` array (``select_ms``): ours
(``sparse.select``: ``lax.top_k``, XLA:CPU's runtime top-k when its indices are used; when only
the values are, XLA rewrites it into a sort that takes over a second), the dense step's radix
select, and ``torch.topk``.

fp32 only, both sides: jax at ``highest`` matmul precision (``common.jax_dtype``), torch without
TF32, torch threads set to ``os.cpu_count()`` (XLA:CPU's intra-op pool uses every core). The last
stdout line is one JSON object.

Defaults: a ViT-B/32 residual (``d_in`` 768), 8192 latents (not 16 x 768 = 12288, to keep the
run short), ``k`` 32, 1024 rows a step, 20 timed steps: about 2.5 min on 2 idle CPU cores.

    python bench/sae.py                 # the full bench
    python bench/sae.py --tiny          # a seconds-long smoke run
    python bench/sae.py --d_sae=12288 --k=64 --batch=4096 --iters=10 --noe2e
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

# Run as ``python bench/sae.py`` Python puts bench/ on sys.path, not the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("d_in", 768, "SAE input width of the training-only part (the end-to-end part "
                     "uses the tower's width)")
flags.DEFINE_integer("d_sae", 8192, "SAE latents")
flags.DEFINE_integer("k", 32, "active latents per row (TopK)")
flags.DEFINE_integer("batch", 1024, "activation rows per step")
flags.DEFINE_float("lr", 4e-4, "Adam learning rate, both sides")
flags.DEFINE_integer("iters", 20, "timed training-only steps per contender; the median is reported")
flags.DEFINE_integer("e2e_iters", 8, "timed end-to-end steps per contender")
flags.DEFINE_integer("warmup", 2, "untimed calls of each contender before timing (the first compiles)")
flags.DEFINE_integer("layer", 6, "the end-to-end site: vision.layers.<layer>.resid_post")
flags.DEFINE_integer("images", 0, "images per end-to-end step; 0: the fewest that hold --batch tokens")
flags.DEFINE_integer("pool", 3, "distinct batches (activations, or images end to end), cycled")
flags.DEFINE_bool("e2e", True, "also time the end-to-end part (CLIP forward + SAE step)")
flags.DEFINE_bool("variant", True, "also time ours with the dense step (k_max=0; module docstring)")
flags.DEFINE_bool("tiny", False, "tiny sizes, 2 iters: a smoke run of the script")
flags.DEFINE_integer("seed", 0, "seed of the weights, the data and the row picks")
common.define_flags()  # --matmul_n, --xla_flags, --dtype, --compile_cache
flags.adopt_module_key_flags(common)

# Eight layers, so that the default site (layer 6) exists; 32 px, patch 8: 17 tokens per image.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=2,
                   image_size=32, patch_size=8)
TINY_PROJECTION = 16
# Never run: CLIPModel needs a text tower to exist.
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def sae_step_flops(batch: int, d_in: int, d_sae: int) -> int:
    """Matmul FLOPs of one dense SAE training step: 5 GEMMs of ``2 B d_in d_sae`` (docstring)."""
    return 5 * 2 * batch * d_in * d_sae


def sparse_step_flops(batch: int, d_in: int, d_sae: int, k: int) -> int:
    """What ours computes: the encoder's GEMM, then five ``2 B k d_in`` sparse products (decode,
    the latents' and the decoder's gradients, the encoder's weight and input gradients)."""
    return 2 * batch * d_in * d_sae + 5 * 2 * batch * k * d_in


# ----------------------------------------------------------------------------------------------
# Ours


def sae_config(d_in: int, d_sae: int, batch: int, lr: float, seed: int):
    from mrepe_jax.features.sae import SAEConfig

    return SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", aux_k=0, learning_rate=lr,
                     batch_size=batch, seed=seed, normalize=False)


def init_params(cfg, sample, seed: int) -> dict:
    """One SAE's fresh params (numpy), ``b_dec`` the sample's mean: both sides start here."""
    import jax
    import numpy as np

    from mrepe_jax.features import sae as sae_lib

    return {n: np.asarray(v) for n, v in sae_lib.init_params(cfg, jax.random.key(seed), sample).items()}


def ours_state(cfg, params: dict, k: int):
    """An ``SAEState`` of one member (leaves ``[1, ...]``), input scale 1."""
    import jax
    import jax.numpy as jnp
    import optax

    from mrepe_jax.features.sae import Member
    from mrepe_jax.features.train import SAEState

    stacked = {n: jnp.asarray(v)[None] for n, v in params.items()}
    members = jax.tree.map(lambda a: a[None], Member.of(cfg.d_sae, k=k))
    return SAEState.create(apply_fn=None, params=stacked, tx=optax.adam(cfg.learning_rate),
                           since_fired=jnp.zeros((1, cfg.d_sae), jnp.int32),
                           threshold=jnp.zeros((1, cfg.d_sae), jnp.float32), members=members,
                           scale=jnp.ones((1,), jnp.float32))


def ours_step(cfg, state, batch, k_max: int):
    """``jax.jit(SAEStep(cfg, k_max), donate_argnums=0)`` compiled for ``state`` and ``batch``:
    ``k_max = k`` is what ``train_saes`` runs (``features.sparse``), ``k_max = 0`` the dense step."""
    import jax

    from mrepe_jax.features.train import SAEStep

    return jax.jit(SAEStep(cfg, k_max), donate_argnums=0).lower(state, batch).compile()


class OursTrainer:
    """A blocking step of ours on batches from ``next_batch()`` (host numpy ``[B, d]`` or a device
    array ``[B, 1, d]``); the state is donated and replaced every call."""

    def __init__(self, cfg, params, k, example, dense: bool = False):
        import jax.numpy as jnp

        self.state = ours_state(cfg, params, k)
        start = time.perf_counter()
        self.step = ours_step(cfg, self.state, {"x": jnp.asarray(example)}, 0 if dense else k)
        self.compile_s = time.perf_counter() - start
        self.last = None

    def __call__(self, x):
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(x)
        if x.ndim == 2:
            x = x[:, None]
        self.state, metrics = self.step(self.state, {"x": x})
        jax.block_until_ready(self.state)
        self.last = metrics

    def params(self) -> dict:
        import numpy as np

        return {n: np.asarray(v[0]) for n, v in self.state.params.items()}


# ----------------------------------------------------------------------------------------------
# Torch


class TorchTopKSAE:
    """The same TopK SAE in plain PyTorch: topk + scatter, dense decoder, Adam, unit decoder rows."""

    def __init__(self, params: dict, k: int, lr: float):
        import numpy as np
        import torch

        self.k = k
        self.p = {n: torch.nn.Parameter(torch.from_numpy(np.array(v, np.float32)))
                  for n, v in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=lr)

    def __call__(self, x):
        import torch

        p = self.p
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        x_hat = z @ p["W_dec"] + p["b_dec"]
        loss = (x_hat - x).pow(2).sum(-1).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            p["W_dec"].div_(p["W_dec"].norm(dim=-1, keepdim=True))
        return loss

    def params(self) -> dict:
        return {n: v.detach().numpy().copy() for n, v in self.p.items()}


def max_param_diff(a: dict, b: dict) -> float:
    import numpy as np

    return max(float(np.max(np.abs(a[n] - b[n]))) for n in a)


# ----------------------------------------------------------------------------------------------
# The selection alone


def selection_calls(batch: int, d_sae: int, k: int, seed: int) -> dict:
    """Blocking callables, each selecting the top ``k`` of every row of one ``[batch, d_sae]``
    array: ours (``sparse.select``, ``lax.top_k`` values and indices), the dense step's mask
    (``sae._rank_mask``, radix select at a traced ``k``) and ``torch.topk``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from mrepe_jax.features import sae as sae_lib
    from mrepe_jax.features import sparse

    v = np.random.default_rng(seed).standard_normal((batch, d_sae), dtype=np.float32)
    vj, vt = jnp.asarray(v), torch.from_numpy(v)
    select = jax.jit(lambda a: sparse.select(a, k))
    radix_mask = jax.jit(sae_lib._rank_mask)  # k traced, as in the dense step
    kk = jnp.int32(k)
    return {"ours": lambda: jax.block_until_ready(select(vj)),
            "radix": lambda: radix_mask(vj, kk).block_until_ready(),
            "torch_topk": lambda: vt.topk(k, dim=-1, sorted=False)}


# ----------------------------------------------------------------------------------------------
# End to end


def hf_clip(tiny: bool, seed: int):
    """transformers' ``CLIPModel`` at ViT-B/32's shape (or the tiny one), HF's init, eval mode."""
    import torch
    import transformers

    vision, projection = common.vision_tower(tiny, TINY_VISION, TINY_PROJECTION)
    config = transformers.CLIPConfig(text_config=TEXT, vision_config=vision, projection_dim=projection)
    torch.manual_seed(seed)
    return transformers.CLIPModel(config).eval()


def truncated_vision(vision, layers: int):
    """A ``CLIPVisionModel`` of the first ``layers`` layers of ``vision``, the same weights."""
    import transformers

    config = vision.config.__class__.from_dict({**vision.config.to_dict(), "num_hidden_layers": layers})
    trunc = transformers.CLIPVisionModel(config).eval()
    own = trunc.state_dict()
    trunc.load_state_dict({n: t for n, t in vision.state_dict().items() if n in own}, strict=True)
    return trunc


def row_picks(tokens: int, batch: int, seed: int, step: int):
    """The rows ``site_batches`` picks at ``step`` (its rule, for the torch side)."""
    import numpy as np

    return np.sort(np.random.default_rng([seed, step]).choice(tokens, batch, replace=False))


def main(argv):
    del argv
    if FLAGS.dtype != "fp32":
        raise app.UsageError("bench/sae.py compares fp32 training only")
    common.configure_jax(FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from mrepe_jax.features.stream import site_batches
    from mrepe_jax.models.clip import from_torch_model

    tiny = FLAGS.tiny
    d_in = common.tiny_default("d_in", 32, tiny)
    d_sae = common.tiny_default("d_sae", 256, tiny)
    k = common.tiny_default("k", 8, tiny)
    batch = common.tiny_default("batch", 64, tiny)
    iters = common.tiny_default("iters", 2, tiny)
    e2e_iters = common.tiny_default("e2e_iters", 2, tiny)
    matmul_n = common.tiny_default("matmul_n", 256, tiny)
    seed, pool, lr = FLAGS.seed, max(FLAGS.pool, 1), FLAGS.lr
    device = common.describe_device()
    common.jax_dtype("fp32")
    common.torch_device_dtype("fp32")
    torch.set_num_threads(os.cpu_count() or 1)
    torch_info = {"threads": torch.get_num_threads(), "version": torch.__version__}
    print(f"device: {device}; torch {torch.__version__} on cpu, {torch_info['threads']} threads")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    flops = sae_step_flops(batch, d_in, d_sae)
    sparse_flops = sparse_step_flops(batch, d_in, d_sae, k)
    print(f"SAE: TopK, d_in {d_in}, d_sae {d_sae}, k {k}, batch {batch}, Adam lr {lr}, fp32, AuxK off "
          f"(aux_k=0 on ours, none in torch), decoder rows renormalised every step; {iters} iters, "
          f"{FLAGS.warmup} warmup; step FLOPs 10*B*d_in*d_sae = {flops / 1e9:.2f} GFLOP")

    # ---- (1) training only -------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(d_in).astype(np.float32)
    data = [mean + rng.standard_normal((batch, d_in), dtype=np.float32) for _ in range(pool)]
    cfg = sae_config(d_in, d_sae, batch, lr, seed)
    params0 = init_params(cfg, data[0], seed)
    xs_jax = [jnp.asarray(x)[:, None] for x in data]
    xs_torch = [torch.from_numpy(x) for x in data]

    ours = OursTrainer(cfg, params0, k, xs_jax[0])
    theirs = TorchTopKSAE(params0, k, lr)
    variant = OursTrainer(cfg, params0, k, xs_jax[0], dense=True) if FLAGS.variant else None
    # One step each from the same start on the same batch: the same params, up to fp32 rounding.
    ours(xs_jax[0])
    loss_torch = float(theirs(xs_torch[0]).detach())
    loss_ours = float(ours.last["loss"])
    max_diff = max_param_diff(ours.params(), theirs.params())
    variant_diff = None
    print(f"one step from the same start: loss ours {loss_ours:.6g} / torch {loss_torch:.6g}; "
          f"max |params ours - torch| = {max_diff:.3g}")
    if variant is not None:
        variant(xs_jax[0])
        variant_diff = max_param_diff(variant.params(), ours.params())
        print(f"  dense variant: max |params dense - ours| = {variant_diff:.3g}")

    counters = {}

    def cycling(name, fn, xs):
        counters[name] = 1  # step 0 was the parity step

        def call():
            fn(xs[counters[name] % pool])
            counters[name] += 1

        return call

    calls = {"matmul": common.matmul_call(matmul_n), "ours": cycling("ours", ours, xs_jax)}
    if variant is not None:
        calls["ours_dense"] = cycling("ours_dense", variant, xs_jax)
    calls["torch"] = cycling("torch", theirs, xs_torch)
    load_before = common.load_average()
    timed = common.time_interleaved(calls, iters, FLAGS.warmup)
    select = common.time_interleaved(selection_calls(batch, d_sae, k, seed), 3, 1)
    load_after = common.load_average()
    print(f"load average (1 min) before/after timing: {load_before:.2f} / {load_after:.2f} on "
          f"{os.cpu_count()} cores (the timed calls are interleaved: load slows every contender alike)")
    peak = common.matmul_flops(matmul_n) / timed["matmul"][1]
    print(f"matmul peak ({matmul_n}^3, fp32, jit): {peak / 1e9:.1f} GFLOP/s")

    def rate(name, t=timed, rows=batch):
        return rows / t[name][1]

    def line(name, label, t=timed, rows=batch, work=flops):
        """``work``: the FLOPs a step needs (for torch's full tower, less than it runs)."""
        first, median, times = t[name]
        return (f"{label}: first call {first:.2f} s, median {median * 1e3:.1f} ms/step -> "
                f"{rows / median:,.0f} activations/s, {work / median / 1e9:.1f} GFLOP/s of needed work = "
                f"{work / median / peak:.1%} of the matmul peak (times {[round(s * 1e3, 1) for s in times]} ms)")

    print(line("ours", "ours  (SAEStep, jit, sparse)"))
    print(f"  ours' own work (one GEMM + the sparse kernels, {sparse_flops / 1e9:.2f} GFLOP): "
          f"{sparse_flops / timed['ours'][1] / peak:.1%} of the matmul peak")
    if variant is not None:
        print(line("ours_dense", "ours  (dense step variant)  "))
    print(line("torch", "torch (plain, eager)        "))
    ratio = rate("ours") / rate("torch")
    ratio_best = min(timed["torch"][2]) / min(timed["ours"][2])
    print(f"ours / torch: {ratio:.2f}x (medians), {ratio_best:.2f}x (fastest steps)"
          + (f"; dense variant / torch: {rate('ours_dense') / rate('torch'):.2f}x" if variant is not None else ""))
    select_ms = {n: round(v[1] * 1e3, 2) for n, v in select.items()}
    print(f"top-{k} selection alone on [{batch}, {d_sae}] (median ms): ours (sparse.select, lax.top_k) "
          f"{select_ms['ours']}, the dense step's radix select {select_ms['radix']}, "
          f"torch.topk {select_ms['torch_topk']}")

    # ---- (2) end to end ----------------------------------------------------------------------
    e2e = {}
    if FLAGS.e2e:
        layer = FLAGS.layer
        hf = hf_clip(tiny, seed)
        model, params = from_torch_model(hf)
        vc = model.config.vision_config
        if not 0 <= layer < vc.num_hidden_layers:
            raise app.UsageError(f"--layer={layer}: the tower has {vc.num_hidden_layers} layers")
        site = f"vision.layers.{layer}.resid_post"
        tokens_per_image = vc.num_positions
        images = FLAGS.images or -(-batch // tokens_per_image)
        if images * tokens_per_image < batch:
            raise app.UsageError(f"--images={images} hold {images * tokens_per_image} tokens, fewer than "
                                 f"--batch={batch}")
        h, w = vc.image_hw
        pixels = [rng.standard_normal((images, h, w, vc.num_channels), dtype=np.float32) for _ in range(pool)]
        pixels_t = [torch.from_numpy(np.ascontiguousarray(p.transpose(0, 3, 1, 2))) for p in pixels]
        batches = site_batches(model, params, "vision", lambda s: {"pixel_values": pixels[s % pool]}, [site],
                               batch, input_key="pixel_values", seed=seed)
        vision = hf.vision_model  # a CLIPVisionModel
        trunc = truncated_vision(vision, layer + 1)
        d = vc.hidden_size
        cfg_e = sae_config(d, d_sae, batch, lr, seed)
        first = batches(0)[:, 0]
        params_e = init_params(cfg_e, first, seed)
        with torch.no_grad():
            hs = vision(pixel_values=pixels_t[0], output_hidden_states=True).hidden_states
        ref = hs[layer + 1].reshape(-1, d)[torch.from_numpy(row_picks(images * tokens_per_image, batch, seed, 0))]
        site_diff = float(np.max(np.abs(first - ref.numpy())))
        site_ref = float(np.max(np.abs(ref.numpy())))
        print(f"\nend to end: CLIP image tower {'(tiny)' if tiny else '(openai/clip-vit-base-patch32 shape)'}, "
              f"{vc.num_hidden_layers} layers x {d}, {tokens_per_image} tokens/image, {images} images/step "
              f"({images * tokens_per_image} tokens, {batch} sampled) -> {site}; torch hidden_states[{layer + 1}] "
              f"(len {len(hs)}): max |ours - torch| = {site_diff:.3g} (max |torch| = {site_ref:.3g})")

        ours_e = OursTrainer(cfg_e, params_e, k, first[:, None])
        theirs_e = TorchTopKSAE(params_e, k, lr)
        variant_e = OursTrainer(cfg_e, params_e, k, first[:, None], dense=True) if FLAGS.variant else None
        steps = {}

        def ours_call(name, trainer):
            steps[name] = 0

            def call():
                trainer(batches(steps[name]))
                steps[name] += 1

            return call

        def torch_call(name, tower):
            steps[name] = 0
            sae = TorchTopKSAE(params_e, k, lr) if name != "torch_e2e" else theirs_e

            def call():
                s = steps[name]
                with torch.no_grad():
                    out = tower(pixel_values=pixels_t[s % pool], output_hidden_states=True)
                    flat = out.hidden_states[layer + 1].reshape(-1, d)
                    x = flat[torch.from_numpy(row_picks(flat.shape[0], batch, seed, s))]
                sae(x)
                steps[name] += 1

            return call

        e_calls = {"ours_e2e": ours_call("ours_e2e", ours_e)}
        if variant_e is not None:
            e_calls["ours_dense_e2e"] = ours_call("ours_dense_e2e", variant_e)
        e_calls["torch_e2e"] = torch_call("torch_e2e", vision)
        e_calls["torch_trunc_e2e"] = torch_call("torch_trunc_e2e", trunc)
        load_before = common.load_average()
        t_e = common.time_interleaved(e_calls, e2e_iters, FLAGS.warmup)
        load_after = common.load_average()
        tower_flops = images * (common.patch_embed_flops(vc) + (layer + 1) * common.layer_flops(vc, tokens_per_image))
        e_flops = tower_flops + sae_step_flops(batch, d, d_sae)
        full_flops = images * (common.patch_embed_flops(vc)
                               + vc.num_hidden_layers * common.layer_flops(vc, tokens_per_image))
        print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}; work needed per step: "
              f"tower to layer {layer} {tower_flops / 1e9:.1f} GFLOP + SAE step "
              f"{sae_step_flops(batch, d, d_sae) / 1e9:.1f} GFLOP (the full {vc.num_hidden_layers}-layer tower "
              f"that torch_e2e runs: {full_flops / 1e9:.1f} GFLOP)")
        labels = {"ours_e2e": "ours  (site_batches + SAEStep)", "ours_dense_e2e": "ours  (dense step variant)    ",
                  "torch_e2e": "torch (HF full tower + step)  ",
                  "torch_trunc_e2e": f"torch (HF {layer + 1} layers + step)".ljust(30)}
        for name in e_calls:
            print(line(name, labels[name], t_e, batch, e_flops))
        r = {n: batch / t_e[n][1] for n in e_calls}
        print(f"end to end, ours / torch: {r['ours_e2e'] / r['torch_e2e']:.2f}x (torch's full tower), "
              f"{r['ours_e2e'] / r['torch_trunc_e2e']:.2f}x (torch stopping at layer {layer})")
        e2e = {
            "e2e_site": site, "e2e_images": images, "e2e_tokens_per_image": tokens_per_image, "e2e_iters": e2e_iters,
            "ours_e2e_acts_per_s": round(r["ours_e2e"], 1), "torch_e2e_acts_per_s": round(r["torch_e2e"], 1),
            "ratio_e2e": round(r["ours_e2e"] / r["torch_e2e"], 3),
            "ratio_e2e_best": round(min(t_e["torch_e2e"][2]) / min(t_e["ours_e2e"][2]), 3),
            "torch_trunc_e2e_acts_per_s": round(r["torch_trunc_e2e"], 1),
            "ratio_e2e_trunc": round(r["ours_e2e"] / r["torch_trunc_e2e"], 3),
            "ours_dense_e2e_acts_per_s": round(r["ours_dense_e2e"], 1) if variant_e is not None else None,
            "ratio_dense_e2e": round(r["ours_dense_e2e"] / r["torch_e2e"], 3) if variant_e is not None else None,
            "ratio_dense_e2e_trunc": (round(r["ours_dense_e2e"] / r["torch_trunc_e2e"], 3)
                                      if variant_e is not None else None),
            "e2e_gflop_per_step": round(e_flops / 1e9, 3),
            "e2e_fraction_of_peak": round(e_flops * r["ours_e2e"] / batch / peak, 4),
            "site_max_abs_diff": float(f"{site_diff:.3g}"), "site_max_abs_ref": float(f"{site_ref:.3g}"),
            "e2e_loadavg_1min": load_after,
        }

    result = {
        "bench": "sae",
        "device": device,
        "dtype": "fp32",
        "tiny": tiny,
        "d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "lr": lr, "aux_k": 0, "iters": iters,
        "ours_acts_per_s": round(rate("ours"), 1),
        "torch_acts_per_s": round(rate("torch"), 1),
        "ratio": round(ratio, 3),
        "ratio_best": round(ratio_best, 3),
        "ours_dense_acts_per_s": round(rate("ours_dense"), 1) if variant is not None else None,
        "ratio_dense": round(rate("ours_dense") / rate("torch"), 3) if variant is not None else None,
        "step_gflop": round(flops / 1e9, 4),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "ours_gflops": round(flops / timed["ours"][1] / 1e9, 2),
        "fraction_of_peak": round(flops / timed["ours"][1] / peak, 4),
        "torch_fraction_of_peak": round(flops / timed["torch"][1] / peak, 4),
        "dense_fraction_of_peak": (round(flops / timed["ours_dense"][1] / peak, 4) if variant is not None else None),
        "sparse_step_gflop": round(sparse_flops / 1e9, 4),
        "ours_own_fraction_of_peak": round(sparse_flops / timed["ours"][1] / peak, 4),
        "select_ms": select_ms,
        "max_abs_diff": float(f"{max_diff:.3g}"),
        "variant_max_abs_diff": None if variant_diff is None else float(f"{variant_diff:.3g}"),
        "loss_ours": common.rounded(loss_ours, 6), "loss_torch": common.rounded(loss_torch, 6),
        "compile_s": round(ours.compile_s, 2),
        **e2e,
        "loadavg_1min": load_after,
        "rss_mb": round(common.rss_mb(), 1),
        "torch_threads": torch_info["threads"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch_info["version"],
        "date": common.utc_now(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
