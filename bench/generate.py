"""Greedy captioning speed of a BLIP-2 (OPT): ours against transformers, with and without an edit.

One random BLIP-2 checkpoint, loaded by both sides from the same safetensors directory: an EVA
vision tower 12 x 768 (MLP 3072, 12 heads, 224 px, patch 14 as in BLIP-2's ViT-g/14: 256 patches
+ CLS), a Q-Former 12 x 768 (cross-attention every 2nd layer, as in BLIP-2), 32 query tokens and an
OPT-125m-shaped decoder 12 x 768 (FFN 3072, 12 heads, vocab 50272, image token 50265). A batch of
``--batch`` random images is captioned from the default prompt ``[IMG]*32 + [BOS]``: one prefill,
then ``--new_tokens`` greedy tokens, EOS stopping off on both sides so that each call produces
exactly B x N tokens. Measured, as tokens/s = B x N / seconds of one whole generate call (vision
tower + Q-Former + prefill + N tokens):

  (a) ours: ``mrepe_jax.models.blip2.generate``, one compiled program (image features once, then
      ``opt.generate``'s KV-cached ``lax.while_loop``);
  (b) transformers' ``Blip2ForConditionalGeneration.generate(do_sample=False)`` in the same process
      (``torch.inference_mode``, all CPU threads; on CUDA when torch sees a GPU);

each (c) unedited and (d) with a steering edit at every decoding step, prefill and every new token:
ours an ``Add(delta, alpha)`` at ``lm.layers.{L}.resid_post``, torch a forward hook adding
``alpha * delta`` to ``language_model.model.decoder.layers[L]``'s output. ``delta`` is a fixed
random unit vector and ``alpha`` is ``--edit_scale`` times the mean norm of that residual on the
unedited prompt, so the edit changes the caption at any width.

Correctness in the same run: both sides' tokens are compared, unedited and edited
(``tokens_match``, ``tokens_match_edit``: every one of the B x N tokens equal; in fp32 they must be,
in bf16 the match share is reported). fp32 runs matmuls at full precision on both sides (jax
'highest', torch without TF32).

Each contender is called once untimed (ours' first call traces and compiles: reported as
``ours_compile_s``, and ``ours_edit_compile_s`` for the edited program, whose edit structure is
new), then ``--repeats`` timed calls round-robin over the four, so background load on a shared
machine slows them alike; medians are reported. The last stdout line is one JSON object.

    python bench/generate.py                  # the full bench (about 2 minutes on 2 CPU cores)
    python bench/generate.py --tiny           # a seconds-long smoke run (tested)
    python bench/generate.py --dtype=bf16     # both sides in bfloat16 (torch on CUDA if present)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags

# Run as ``python bench/generate.py`` from a checkout, without the package installed, Python puts
# bench/ on sys.path, not the repository root: add it, so that ``bench`` and ``mrepe_jax`` import.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 4, "images captioned per generate call")
flags.DEFINE_integer("new_tokens", 20, "greedy tokens generated per image (EOS never stops them)")
flags.DEFINE_integer("repeats", 5, "timed calls of each contender after one untimed; the median is reported")
flags.DEFINE_integer("edit_layer", 6, "the OPT layer whose resid_post the edit adds to (clipped to the "
                     "middle layer of a shallower model)")
flags.DEFINE_float("edit_scale", 1.0, "the edit's norm, in units of the mean norm of that residual on the "
                   "unedited prompt")
flags.DEFINE_bool("tiny", False, "a tiny BLIP-2, batch 2, 8 tokens, 2 repeats: a smoke run of the script")
flags.DEFINE_bool("torch", True, "also run transformers' Blip2ForConditionalGeneration.generate")
common.define_flags()  # --matmul_n (unused here), --xla_flags, --dtype, --compile_cache
flags.adopt_module_key_flags(common)

# (vision, qformer, text, num_query_tokens, image_token_index); transformers' field names.
SHAPES = {
    "bench": (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=14),
              dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   cross_attention_frequency=2),
              dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                   max_position_embeddings=2048),
              32, 50265),
    "tiny": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8),
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  cross_attention_frequency=2),
             dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                  max_position_embeddings=64),
             8, 500),
}
PAD, BOS, EOS = 1, 2, 2  # OPT's


# Random-weight gains (see ``write_checkpoint``): sharper attention, smaller residual branches.
QK_GAIN, OUT_GAIN = 2.0, 0.3
QK_NAMES = ("q_proj", "k_proj", ".query.", ".key.", ".qkv.")
OUT_NAMES = ("out_proj", "fc2", "self_attn.projection", "output.dense", "output_query.dense")


def gain(name: str) -> float:
    """The gain of a weight matrix (std = gain / sqrt(fan_in)), by its transformers name."""
    if any(s in name for s in QK_NAMES):
        return QK_GAIN
    return OUT_GAIN if any(s in name for s in OUT_NAMES) else 1.0


def write_checkpoint(directory: str, shape: str, seed: int = 0) -> None:
    """A random transformers BLIP-2 of ``SHAPES[shape]``, saved as safetensors to ``directory``.

    Every tensor is redrawn (HF's own init zeroes biases and draws the vision tower from
    N(0, 1e-10)): weight matrices N(0, gain^2 / fan_in), embeddings and query tokens
    N(0, 1 / width), biases N(0, 0.02^2), LayerNorm weights 1 + N(0, 0.02^2). With unit gains
    the 32 queries come out of the Q-Former as one vector and greedy decoding repeats one token;
    sharper attention (``QK_GAIN`` on the query/key projections) and residual branches that do
    not drown the stream (``OUT_GAIN`` on every block's output projection) keep the queries,
    images and decoded tokens apart, so that comparing the two sides' tokens means something.
    """
    import torch
    import transformers

    vision, qformer, text, nq, img = SHAPES[shape]
    text = transformers.OPTConfig(**text, activation_function="relu", word_embed_proj_dim=text["hidden_size"],
                                  pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config = transformers.Blip2Config(
        vision_config=dict(vision, hidden_act="gelu", layer_norm_eps=1e-6),
        qformer_config=dict(qformer, encoder_hidden_size=vision["hidden_size"]),
        text_config=text.to_dict(), num_query_tokens=nq, image_token_index=img)
    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((name.endswith("weight") and "norm" in name.lower()) + 0.02 * torch.randn_like(p))
            elif p.ndim == 4 or not any(s in name for s in ("embed", "query_tokens")):  # Linear, conv
                p.copy_(gain(name) / p[0].numel() ** 0.5 * torch.randn_like(p))
            else:
                p.copy_(p.shape[-1] ** -0.5 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)


def load_ours(directory: str, dtype):
    """(model, params) from the checkpoint; in bf16 the params are cast too, as torch's are."""
    import jax
    import jax.numpy as jnp

    from mrepe_jax.models.blip2 import Blip2ForConditionalGeneration, load_pretrained

    model, params = load_pretrained(directory)
    if dtype != jnp.float32:
        model = Blip2ForConditionalGeneration(model.config, dtype=dtype)
        params = jax.tree.map(lambda p: p.astype(dtype), params)
    return model, params


def edit_vector(model, params, pixels, layer: int, scale: float, seed: int = 3):
    """(delta [D] unit vector, alpha): alpha = ``scale`` x the mean norm of
    ``lm.layers.{layer}.resid_post`` over the unedited default prompt."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mrepe_jax.models.blip2 import default_prompt

    site = f"lm.layers.{layer}.resid_post"
    ids = default_prompt(model.config, pixels.shape[0])
    _, acts = jax.jit(lambda p, x: model.apply({"params": p}, x, ids, capture=(site,)))(params, pixels)
    norm = float(jnp.linalg.norm(acts[site].astype(jnp.float32), axis=-1).mean())
    d = np.random.default_rng(seed).normal(size=model.config.text_config.hidden_size)
    return (d / np.linalg.norm(d)).astype(np.float32), scale * norm


def ours_generate(model, params, pixels, new_tokens: int, edits=None):
    """A blocking callable: one ``blip2.generate`` (default prompt, no EOS stop); keeps its tokens."""
    import numpy as np

    from mrepe_jax.models import blip2

    out = {}

    def call():
        out["tokens"] = np.asarray(blip2.generate(model, params, pixels, max_new_tokens=new_tokens,
                                                  edits=edits, eos_token_id=()))
    return call, out


def torch_generate(hf, pixels, new_tokens: int, hook=None):
    """A blocking callable: one HF ``generate(do_sample=False)`` of exactly ``new_tokens`` tokens
    (a generation config without EOS, so no row stops early); ``hook`` (module, fn) is a forward
    hook registered for the call only. Keeps the new tokens (HF returns the prompt before them)."""
    import torch
    import transformers

    nq = hf.config.num_query_tokens
    gen = transformers.GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                                        min_new_tokens=0, eos_token_id=None, pad_token_id=PAD, bos_token_id=BOS)
    out = {}

    def call():
        handle = None if hook is None else hook[0].register_forward_hook(hook[1])
        try:
            with torch.inference_mode():
                seq = hf.generate(pixel_values=pixels, generation_config=gen)
        finally:
            if handle is not None:
                handle.remove()
        out["tokens"] = seq[:, nq + 1:].cpu().numpy()
    return call, out


def add_to_output(delta):
    """A forward hook adding ``delta`` to a module's output hidden states. In transformers 5.24
    ``OPTDecoderLayer`` returns the tensor itself; older versions return a tuple whose first item
    is the hidden states: both are handled."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + delta,) + output[1:]
        return output + delta
    return hook


def match(a, b):
    """(all equal, share of equal tokens) of two [B, N] token arrays; (False, 0) on a shape mismatch."""
    import numpy as np

    if a.shape != b.shape:
        return False, 0.0
    return bool((a == b).all()), float(np.mean(a == b))


def _r(x, digits: int = 3):
    return common.rounded(x, digits)


def main(argv):
    del argv
    common.configure_jax(FLAGS)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mrepe_jax.edits import Add
    from mrepe_jax.models.blip2 import model as blip2_model

    tiny = FLAGS.tiny
    batch = common.tiny_default("batch", 2, tiny)
    new_tokens = common.tiny_default("new_tokens", 8, tiny)
    repeats = common.tiny_default("repeats", 2, tiny)
    shape = "tiny" if tiny else "bench"
    dtype = common.jax_dtype(FLAGS.dtype)
    device = common.describe_device()
    load_start = common.load_average()
    print(f"device: {device}; load average (1 min) at start: {load_start}")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as directory:
        t0 = time.perf_counter()
        write_checkpoint(directory, shape)
        model, params = load_ours(directory, dtype)
        hf = torch_device = torch_dtype = None
        if FLAGS.torch:
            import torch
            import transformers

            torch.set_num_threads(os.cpu_count() or 1)
            torch_device, torch_dtype = common.torch_device_dtype(FLAGS.dtype)
            hf = transformers.Blip2ForConditionalGeneration.from_pretrained(
                directory, dtype=torch_dtype).to(torch_device).eval()
        print(f"random checkpoint written and loaded by both sides in {time.perf_counter() - t0:.1f} s")

    c = model.config
    v, q, t = c.vision_config, c.qformer_config, c.text_config
    layer = min(FLAGS.edit_layer, t.num_hidden_layers // 2)
    print(f"model ({shape}): vision {v.num_hidden_layers} x {v.hidden_size} (mlp {v.intermediate_size}, "
          f"{v.num_attention_heads} heads, image {v.image_size}, patch {v.patch_size}, {v.num_positions} "
          f"tokens); Q-Former {q.num_hidden_layers} x {q.hidden_size} (cross-attention every "
          f"{q.cross_attention_frequency}), {c.num_query_tokens} queries; OPT {t.num_hidden_layers} x "
          f"{t.hidden_size} (ffn {t.ffn_dim}, {t.num_attention_heads} heads, vocab {t.vocab_size}); "
          f"{FLAGS.dtype}; batch {batch}, prompt {c.num_query_tokens + 1} tokens + {new_tokens} new, "
          f"{repeats} repeats")

    rng = np.random.default_rng(0)
    pixels_nchw = rng.normal(size=(batch, 3, v.image_size, v.image_size)).astype(np.float32)
    pixels = jnp.asarray(pixels_nchw.transpose(0, 2, 3, 1), dtype)
    delta, alpha = edit_vector(model, params, pixels, layer, FLAGS.edit_scale)
    site = f"lm.layers.{layer}.resid_post"
    edits = {site: Add(jnp.asarray(delta, dtype), jnp.asarray(alpha, dtype))}
    print(f"edit: Add(unit delta, alpha={alpha:.3f}) at {site} ({FLAGS.edit_scale} x its mean norm), "
          f"every step")

    calls, outs = {}, {}
    calls["ours"], outs["ours"] = ours_generate(model, params, pixels, new_tokens)
    calls["ours_edit"], outs["ours_edit"] = ours_generate(model, params, pixels, new_tokens, edits)
    attn = None
    if hf is not None:
        px = torch.from_numpy(pixels_nchw).to(torch_device, torch_dtype)
        hook = (hf.language_model.model.decoder.layers[layer],
                add_to_output(torch.from_numpy(alpha * delta).to(torch_device, torch_dtype)))
        calls["torch"], outs["torch"] = torch_generate(hf, px, new_tokens)
        calls["torch_edit"], outs["torch_edit"] = torch_generate(hf, px, new_tokens, hook)
        attn = getattr(hf.language_model.config, "_attn_implementation", None)

    timed = common.time_interleaved(calls, repeats, warmup=1)
    # One program per edit structure, compiled at the first call: the repeats must not retrace.
    programs = blip2_model._generate._cache_size()
    load_end = common.load_average()
    rss = common.rss_mb()
    tokens = batch * new_tokens
    rate = {name: tokens / med for name, (_, med, _) in timed.items()}
    for name, (first, med, times) in timed.items():
        print(f"{name:10s}: first call {first:.2f} s, median {med:.3f} s/call -> {rate[name]:.1f} tokens/s "
              f"(times {[round(x, 3) for x in times]} s)")

    ours_tok, ours_edit_tok = outs["ours"]["tokens"], outs["ours_edit"]["tokens"]
    changed = float(np.mean(ours_tok != ours_edit_tok))
    print(f"ours tokens, image 0: {ours_tok[0].tolist()}")
    print(f"ours edited, image 0: {ours_edit_tok[0].tolist()} ({changed:.0%} of all tokens changed by the edit)")
    distinct = len(set(ours_tok.ravel().tolist()))
    result_match = {}
    if hf is not None:
        for name in ("", "_edit"):
            got = outs["torch" + name]["tokens"]
            assert got.shape == (batch, new_tokens), f"transformers generated {got.shape}, not {(batch, new_tokens)}"
            same, share = match(ours_tok if not name else ours_edit_tok, got)
            result_match[f"tokens_match{name}"] = same
            result_match[f"tokens_match_share{name}"] = round(share, 4)
        print(f"tokens equal to transformers': unedited {result_match['tokens_match']} "
              f"({result_match['tokens_match_share']:.1%}), edited {result_match['tokens_match_edit']} "
              f"({result_match['tokens_match_share_edit']:.1%})")
        print(f"ours / transformers: {rate['ours'] / rate['torch']:.2f}x unedited, "
              f"{rate['ours_edit'] / rate['torch_edit']:.2f}x edited")
    print(f"ours compiled {programs} generate program(s) for {repeats + 1} calls of each condition")
    print(f"load average (1 min) at end: {load_end}; process peak RSS {rss:.0f} MiB (both sides' models)")

    def ratio(a, b):
        return _r(rate[a] / rate[b]) if b in rate else None

    result = {
        "bench": "generate",
        "device": device,
        "dtype": FLAGS.dtype,
        "torch_device": torch_device,
        "tiny": tiny,
        "shape": {"vision": [v.num_hidden_layers, v.hidden_size, v.intermediate_size, v.num_attention_heads],
                  "image_size": v.image_size, "patch_size": v.patch_size,
                  "qformer": [q.num_hidden_layers, q.hidden_size, q.intermediate_size, q.num_attention_heads],
                  "cross_attention_frequency": q.cross_attention_frequency,
                  "num_query_tokens": c.num_query_tokens,
                  "opt": [t.num_hidden_layers, t.hidden_size, t.ffn_dim, t.num_attention_heads],
                  "vocab_size": t.vocab_size},
        "batch": batch,
        "new_tokens": new_tokens,
        "prompt_tokens": c.num_query_tokens + 1,
        "repeats": repeats,
        "edit_site": site,
        "edit_alpha": _r(alpha, 4),
        "edit_changed_tokens_share": round(changed, 4),
        "distinct_tokens": distinct,
        "ours_tokens_per_s": _r(rate["ours"], 2),
        "torch_tokens_per_s": _r(rate.get("torch"), 2),
        "ratio": ratio("ours", "torch"),
        "ours_edit_tokens_per_s": _r(rate["ours_edit"], 2),
        "torch_edit_tokens_per_s": _r(rate.get("torch_edit"), 2),
        "ratio_edit": ratio("ours_edit", "torch_edit"),
        # Best-of-repeats rates: less sensitive than medians to other processes on a shared machine.
        "best_tokens_per_s": {name: _r(tokens / min(ts), 2) for name, (_, _, ts) in timed.items()},
        "ours_s": _r(timed["ours"][1], 4),
        "torch_s": _r(timed["torch"][1], 4) if "torch" in timed else None,
        "ours_edit_s": _r(timed["ours_edit"][1], 4),
        "torch_edit_s": _r(timed["torch_edit"][1], 4) if "torch_edit" in timed else None,
        "ours_compile_s": _r(timed["ours"][0], 2),
        "ours_edit_compile_s": _r(timed["ours_edit"][0], 2),
        "ours_programs_compiled": programs,
        "tokens_match": result_match.get("tokens_match"),
        "tokens_match_edit": result_match.get("tokens_match_edit"),
        "tokens_match_share": result_match.get("tokens_match_share"),
        "tokens_match_share_edit": result_match.get("tokens_match_share_edit"),
        "torch_attn_implementation": attn,
        "torch_threads": torch.get_num_threads() if hf is not None else None,
        "peak_rss_mb": round(rss, 1),
        "loadavg_1min": load_end,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch.__version__ if hf is not None else None,
        "date": common.utc_now(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
