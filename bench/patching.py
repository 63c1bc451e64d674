"""The full residual patching sweep of eq 2 on a ViT-B/32 image tower: ours, nnsight, hooks.

One clean/corrupt image pair, every (layer, token) of ``vision.layers.*.resid_pre``: 12 layers x 50
tokens (49 patches + CLS at 224px) = 600 patches, *denoising* (each patch puts the clean run's
residual into the corrupt run), metric = zero-shot logit difference between two random text
embeddings. The weights are random (a transformers ``CLIPModel`` converted to ours, so every
method patches the same network and their effects are cross-checked).

  (1) ours, exact: ``causal_effect`` (one jit'd call per layer, vmapped over the 50 positions,
      starting from the cached clean prefix);
  (2) ours, attribution: ``attribution_effect`` (one forward + one backward + the source forward),
      also in forward-equivalents: its time / one jit'd forward of the same batch;
  (3) nnsight: its documented usage, one ``model.trace`` per patch (``layers[L].input[:, p] =
      clean[:, p]``), the clean values saved in a prior trace. ``--nnsight_patches N`` times N
      patches spread over the sweep and extrapolates linearly to all 600 (said in the output);
  (4) plain PyTorch hooks batched over positions: per layer, one forward of 50 copies of the
      corrupt image with a forward pre-hook putting position p of copy p to its clean value.

The FLOP floor is the matmul FLOPs the sweep cannot avoid, sum over L of 50 x (layers L..11 +
projection) for one image, over a measured fp32 matmul peak (one big jit'd ``jnp.matmul``). A
1,000-resample ``bootstrap_ci`` over synthetic per-example effects ``[examples, 12, 50]`` is timed
against one estimate of the same statistic.

Every timing is a median over ``--iters`` calls after a first (compiling) call, which is reported
separately. The load average is printed: on a shared machine it moves every number. The last
stdout line is one JSON object.

    python bench/patching.py                       # the full bench (minutes on 2 CPU cores)
    python bench/patching.py --tiny                # a seconds-long smoke run
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

# Run as ``python bench/patching.py`` from a checkout, without the package installed, Python puts
# bench/ on sys.path, not the repository root: add it, so that ``bench`` and ``mrepe_jax`` import.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_bool("tiny", False, "a tiny config and a few nnsight patches: a smoke run")
flags.DEFINE_integer("nnsight_patches", 120,
                     "nnsight traces to time (spread over the sweep), extrapolated to the full "
                     "sweep; 0 or >= the sweep size runs every patch")
flags.DEFINE_integer("iters", 2, "timed calls after the first; the median is reported")
flags.DEFINE_integer("bootstrap_examples", 100, "examples in the synthetic bootstrap samples")
flags.DEFINE_bool("nnsight", True, "time nnsight (skipped with a note when not importable)")
flags.DEFINE_bool("hooks", True, "time batched PyTorch forward hooks")
flags.DEFINE_string("save_effects", "", "write the exact and attribution effects [layers, "
                    "positions] to this .npz (bench/compile_time.py compares them across flags)")
common.define_flags()  # --matmul_n, --xla_flags, --dtype, --compile_cache
flags.adopt_module_key_flags(common)


# ----------------------------------------------------------------------------------------------
# Configs, FLOPs

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, image_size=16, patch_size=8)
# The text tower is never run; a tiny one keeps the converted checkpoint small.
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            vocab_size=100, max_position_embeddings=16, pad_token_id=1, eos_token_id=99)


def configs(tiny: bool):
    """(our config, transformers' config) of the same CLIP: ViT-B/32 at 224, or tiny."""
    import transformers

    vision, projection = common.vision_tower(tiny, TINY_VISION, tiny_projection=16)
    ours = common.clip_config(vision, TEXT, projection)
    hf = transformers.CLIPConfig(text_config={**TEXT, "bos_token_id": 0}, vision_config=vision,
                                 projection_dim=projection)
    return ours, hf


def sweep_floor_flops(config) -> int:
    """sum_L positions x (FLOPs of layers L..N-1 + projection), one image: what exact patching of
    every (layer, position) must compute once the clean prefix is cached."""
    c = config.vision_config
    t = c.num_positions
    n = c.num_hidden_layers
    readout = common.projection_flops(config)
    return sum(t * ((n - layer) * common.layer_flops(c, t) + readout) for layer in range(n))


# ----------------------------------------------------------------------------------------------
# The models: one random transformers CLIP, converted to ours


def build_models(tiny: bool, dtype, torch_device, torch_dtype, seed: int = 0):
    import torch
    import transformers

    from mrepe_jax.models.clip import CLIPModel

    our_config, hf_config = configs(tiny)
    torch.manual_seed(seed)
    hf = transformers.CLIPModel(hf_config).eval()
    # HF init zeroes biases and sets LayerNorms to 1/0; random values make the cross-check real.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1 and "embedding" not in name:
                p.add_(0.02 * torch.randn_like(p))
    state = hf.state_dict()
    vision_config = transformers.CLIPVisionConfig(
        **{**hf_config.vision_config.to_dict(), "projection_dim": hf_config.projection_dim})
    torch_vision = transformers.CLIPVisionModelWithProjection(vision_config).eval()
    vision_state = {k: v for k, v in state.items()
                    if k.startswith(("vision_model.", "visual_projection."))}
    missing, unexpected = torch_vision.load_state_dict(vision_state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise RuntimeError(
            f"vision weights did not load: missing {missing}, unexpected {unexpected}")
    torch_vision = torch_vision.to(torch_device, torch_dtype)
    try:
        from mrepe_jax.models.clip.convert import convert_state_dict

        variables = {"params": convert_state_dict(state, our_config, "bench model")}
        same_weights = True
    except Exception as e:  # the converter is not what this bench measures
        print(f"note: weight conversion failed ({type(e).__name__}: {e}); ours uses its own random "
              "init and the effects are not cross-checked")
        import jax

        px = jax.numpy.zeros((1, *our_config.vision_config.image_hw, 3))
        variables = CLIPModel(our_config).init(jax.random.key(seed), "vision", px, method="encode")
        same_weights = False
    return CLIPModel(our_config, dtype=dtype), variables, torch_vision, our_config, same_weights


# ----------------------------------------------------------------------------------------------
# The four sweeps


def _time_sweep(effect_fn, model, variables, clean, corrupt, metric, iters):
    """(first call s, median s, last result) of ``effect_fn`` (``causal_effect`` or
    ``attribution_effect``) over the whole sweep, denoising; blocks on the result, since jax
    returns before the work is done."""
    out = {}

    def run():
        out["res"] = effect_fn(model, variables, "vision", clean, corrupt, metric,
                               direction="denoising")
        out["res"].per_example.block_until_ready()

    first, median = common.time_calls(run, iters)
    return first, median, out["res"]


def ours_exact(model, variables, clean, corrupt, metric, iters):
    from mrepe_jax.reading.causal import causal_effect

    return _time_sweep(causal_effect, model, variables, clean, corrupt, metric, iters)


def ours_attribution(model, variables, clean, corrupt, metric, iters):
    import jax

    from mrepe_jax.reading.causal import attribution_effect

    first, median, res = _time_sweep(attribution_effect, model, variables, clean, corrupt, metric,
                                     iters)
    forward = jax.jit(lambda v, x: metric(model.apply(v, "vision", x, method="encode")[0]))
    _, fwd = common.time_calls(lambda: forward(variables, corrupt).block_until_ready(),
                               max(iters, 3))
    return first, median, fwd, res


def torch_metric(emb, direction):
    emb = emb.float()
    return (emb / emb.norm(dim=-1, keepdim=True)) @ direction


def clean_layer_inputs(torch_vision, clean):
    """The clean run's residual entering every layer, by forward pre-hooks."""
    import torch

    saved, handles = {}, []
    for i, layer in enumerate(torch_vision.vision_model.encoder.layers):
        def hook(mod, args, kwargs, i=i):
            saved[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.inference_mode():
        torch_vision(pixel_values=clean)
    for h in handles:
        h.remove()
    return [saved[i] for i in range(len(saved))]


def torch_hooks(torch_vision, clean, corrupt, direction, positions):
    """Per layer: one forward of ``positions`` copies, copy p patched at token p by a pre-hook."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        base = torch_metric(torch_vision(pixel_values=corrupt).image_embeds, direction)
    clean_h = clean_layer_inputs(torch_vision, clean)
    batch = corrupt.expand(positions, *corrupt.shape[1:]).contiguous()
    rows = torch.arange(positions)
    effects = []
    for i, layer in enumerate(torch_vision.vision_model.encoder.layers):
        def hook(mod, args, kwargs, i=i):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[rows, rows] = clean_h[i][0, rows]
            if args:
                return (h,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.inference_mode():
                m = torch_metric(torch_vision(pixel_values=batch).image_embeds, direction)
        finally:
            handle.remove()
        effects.append(m - base)
    return time.perf_counter() - t0, torch.stack(effects).cpu().numpy()


def nnsight_sweep(torch_vision, clean, corrupt, direction, patches):
    """nnsight's documented activation patching: one trace per (layer, position)."""
    import nnsight
    import torch
    from nnsight import NNsight

    model = NNsight(torch_vision)
    layers = model.vision_model.encoder.layers
    n = len(torch_vision.vision_model.encoder.layers)
    t0 = time.perf_counter()
    with torch.no_grad():
        with model.trace(clean):
            # A list built in a trace reaches the enclosing function only through nnsight.save.
            clean_h = nnsight.save([layers[i].input for i in range(n)])
        with model.trace(corrupt):
            base_emb = model.output.image_embeds.save()
    setup = time.perf_counter() - t0
    base = torch_metric(base_emb, direction)
    effects = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for layer, pos in patches:
            with model.trace(corrupt):
                layers[layer].input[:, pos] = clean_h[layer][:, pos]
                emb = model.output.image_embeds.save()
            effects[layer, pos] = float((torch_metric(emb, direction) - base)[0])
    return setup, time.perf_counter() - t0, effects


def spread(items, k):
    """k items evenly spread over ``items`` (all when k <= 0 or k >= len)."""
    if k <= 0 or k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def bench_bootstrap(shape, iters):
    import jax
    import jax.numpy as jnp

    from mrepe_jax.reading.bootstrap import bootstrap_ci

    x = jax.random.normal(jax.random.key(5), shape)
    _, boot = common.time_calls(lambda: jax.block_until_ready(bootstrap_ci(x, jnp.mean, 1000)),
                                max(iters, 5))
    single = jax.jit(lambda v: jnp.mean(v, axis=0))
    _, one = common.time_calls(lambda: single(x).block_until_ready(), max(iters, 20))
    return boot, one


def main(argv):
    del argv
    common.configure_jax(FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    tiny = FLAGS.tiny
    torch.set_num_threads(os.cpu_count() or 1)
    iters = common.tiny_default("iters", 1, tiny)
    nn_patches = common.tiny_default("nnsight_patches", 6, tiny)
    matmul_n = common.tiny_default("matmul_n", 256, tiny)
    load_start = common.load_average()

    dtype = common.jax_dtype(FLAGS.dtype)
    torch_device, torch_dtype = common.torch_device_dtype(FLAGS.dtype)
    model, variables, torch_vision, config, same_weights = build_models(
        tiny, dtype, torch_device, torch_dtype)
    c = config.vision_config
    layers, positions = c.num_hidden_layers, c.num_positions
    device = common.describe_device()
    print(f"device: {device}; load average (1 min) at start: {load_start}")
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"model: CLIP image tower, hidden {c.hidden_size}, {layers} layers, "
          f"{c.num_attention_heads} heads, mlp {c.intermediate_size}, image {c.image_hw}, patch "
          f"{c.patch_size}, {FLAGS.dtype}; sweep {layers} layers x {positions} positions = "
          f"{layers * positions} patches of resid_pre, denoising, one image pair")

    rng = np.random.default_rng(0)
    clean_np = rng.normal(size=(1, *c.image_hw, 3)).astype(np.float32)
    corrupt_np = rng.normal(size=(1, *c.image_hw, 3)).astype(np.float32)
    text = rng.normal(size=(2, config.projection_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    text_dir = jnp.asarray(text[0] - text[1])

    def metric(e):  # zero-shot logit difference between two prompts
        return (e / jnp.linalg.norm(e, axis=-1, keepdims=True)) @ text_dir

    clean, corrupt = jnp.asarray(clean_np, dtype), jnp.asarray(corrupt_np, dtype)
    to_torch = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(torch_device, torch_dtype)  # noqa: E731
    clean_t, corrupt_t = to_torch(clean_np), to_torch(corrupt_np)
    dir_t = torch.from_numpy(text[0] - text[1]).to(torch_device)

    # The peak is measured right before and right after the exact sweep and the higher one is
    # used: on a shared machine this keeps the floor honest (it never credits us with a slow peak).
    peak_before = common.matmul_peak(matmul_n, dtype=dtype)
    ex_first, ex_s, exact = ours_exact(model, variables, clean, corrupt, metric, iters)
    peak_after = common.matmul_peak(matmul_n, dtype=dtype)
    peak = max(peak_before, peak_after)
    floor_flops = sweep_floor_flops(config)
    floor_s = floor_flops / peak
    print(f"matmul peak ({matmul_n}^3, {FLAGS.dtype}, jit): {peak_before / 1e9:.1f} GFLOP/s before, "
          f"{peak_after / 1e9:.1f} after the sweep; sweep FLOP floor {floor_flops / 1e9:.1f} GFLOP "
          f"-> {floor_s:.3f} s at {peak / 1e9:.1f} GFLOP/s")
    print(f"(1) ours exact (causal_effect): first call (compiles one program for all layers) "
          f"{ex_first:.2f} s, then median {ex_s:.3f} s = {ex_s / floor_s:.2f}x the FLOP floor "
          f"({floor_flops / ex_s / 1e9:.1f} GFLOP/s, {floor_flops / ex_s / peak:.1%} of peak)")
    at_first, at_s, fwd_s, attr = ours_attribution(model, variables, clean, corrupt, metric, iters)
    print(f"(2) ours attribution: first {at_first:.2f} s, median {at_s * 1e3:.1f} ms; one forward "
          f"(batch 1) {fwd_s * 1e3:.1f} ms -> {at_s / fwd_s:.2f} forward-equivalents")
    ours_eff = np.asarray(exact.effects)  # [layers, positions]
    if FLAGS.save_effects:
        np.savez(FLAGS.save_effects, exact=ours_eff, attribution=np.asarray(attr.effects))
    corr = np.corrcoef(ours_eff.ravel(), np.asarray(attr.effects).ravel())[0, 1]
    print(f"    attribution vs exact: correlation {corr:.3f} over {ours_eff.size} sites")

    hooks_s = None
    max_diff = {}
    if FLAGS.hooks:
        hooks_s, hook_eff = torch_hooks(torch_vision, clean_t, corrupt_t, dir_t, positions)
        print(f"(4) torch hooks, batched over positions ({layers} forwards of batch {positions}): "
              f"{hooks_s:.2f} s")
        if same_weights:
            max_diff["hooks"] = float(np.abs(hook_eff - ours_eff).max())
            print(f"    max |ours - hooks| effect: {max_diff['hooks']:.2e}")

    nn_s, nn_timed, nn_extrapolated, nn_version = None, None, False, None
    if FLAGS.nnsight:
        try:
            import nnsight

            nn_version = nnsight.__version__
        except ImportError as e:
            print(f"(3) nnsight: skipped, not importable ({e})")
        if nn_version is not None:
            every = [(i, p) for i in range(layers) for p in range(positions)]
            chosen = spread(every, nn_patches)
            setup, patch_s, nn_eff = nnsight_sweep(torch_vision, clean_t, corrupt_t, dir_t, chosen)
            nn_timed = len(chosen)
            nn_extrapolated = nn_timed < len(every)
            nn_s = setup + patch_s * len(every) / nn_timed
            note = (f"EXTRAPOLATED linearly from {nn_timed} timed traces" if nn_extrapolated
                    else "all traces timed")
            print(f"(3) nnsight {nn_version}, one trace per patch: {patch_s / nn_timed * 1e3:.1f} "
                  f"ms/patch + {setup:.2f} s clean/base traces -> {nn_s:.2f} s for "
                  f"{len(every)} patches ({note})")
            if same_weights:
                got = np.array([nn_eff[k] for k in chosen])
                want = np.array([ours_eff[k] for k in chosen])
                max_diff["nnsight"] = float(np.abs(got - want).max())
                print(f"    max |ours - nnsight| effect over the timed patches: "
                      f"{max_diff['nnsight']:.2e}")

    boot_shape = (FLAGS.bootstrap_examples, layers, positions)
    boot_s, one_s = bench_bootstrap(boot_shape, iters)
    print(f"bootstrap_ci, 1000 resamples of the mean over {boot_shape}: {boot_s * 1e3:.2f} ms vs "
          f"one estimate {one_s * 1e3:.3f} ms -> {boot_s / one_s:.1f}x; vs the exact sweep of one "
          f"pair: {boot_s / ex_s:.4f}x")

    load_end = common.load_average()
    print(f"load average (1 min) at end: {load_end}")
    print(f"ours exact vs nnsight: {nn_s / ex_s:.2f}x faster" if nn_s else "nnsight: not timed")
    print(f"ours exact vs hooks:   {hooks_s / ex_s:.2f}x faster" if hooks_s else "hooks: not timed")
    result = {
        "bench": "patching",
        "device": device,
        "dtype": FLAGS.dtype,
        "torch_device": torch_device,
        "tiny": tiny,
        "layers": layers,
        "positions": positions,
        "patches": layers * positions,
        "ours_exact_s": common.rounded(ex_s),
        "ours_exact_first_call_s": common.rounded(ex_first, 2),
        "ours_attribution_s": common.rounded(at_s),
        "ours_attribution_first_call_s": common.rounded(at_first, 2),
        "forward_s": common.rounded(fwd_s, 5),
        "attribution_forward_equivalents": common.rounded(at_s / fwd_s, 3),
        "attribution_exact_correlation": common.rounded(corr, 4),
        "nnsight_s": common.rounded(nn_s, 3),
        "nnsight_extrapolated": nn_extrapolated,
        "nnsight_timed_patches": nn_timed,
        "hooks_s": common.rounded(hooks_s, 3),
        "speedup_vs_nnsight": common.rounded(nn_s / ex_s if nn_s else None, 3),
        "speedup_vs_hooks": common.rounded(hooks_s / ex_s if hooks_s else None, 3),
        "matmul_peak_gflops": common.rounded(peak / 1e9, 2),
        "matmul_peak_before_after_gflops": [common.rounded(peak_before / 1e9, 2), common.rounded(peak_after / 1e9, 2)],
        "flop_floor_gflop": common.rounded(floor_flops / 1e9, 3),
        "flop_floor_s": common.rounded(floor_s),
        "exact_over_flop_floor": common.rounded(ex_s / floor_s, 3),
        "fraction_of_flop_floor": common.rounded(floor_s / ex_s, 4),
        "bootstrap_s": common.rounded(boot_s, 6),
        "bootstrap_single_estimate_s": common.rounded(one_s, 7),
        "bootstrap_over_single_estimate": common.rounded(boot_s / one_s, 2),
        "bootstrap_over_exact_sweep": common.rounded(boot_s / ex_s, 6),
        "bootstrap_shape": list(boot_shape),
        "same_weights": same_weights,
        "max_abs_diff_vs_ours": {k: common.rounded(v, 8) for k, v in max_diff.items()},
        "load_average_start": load_start,
        "load_average_end": load_end,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "nnsight": nn_version,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": common.utc_now(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
