"""Forward throughput of the CLIP image tower: ours (jit'd Flax) against transformers' PyTorch.

A ViT-B/32-shaped image tower (hidden 768, 12 layers, 12 heads, MLP 3072, 224px, patch 32,
quick_gelu, projection 512) with random weights, in fp32 or bf16 (``--dtype``). Reports

  (a) our jit'd ``CLIPModel.apply(v, "vision", x, method="encode")`` throughput (images/s);
  (b) transformers' ``CLIPVisionModelWithProjection`` throughput in the same process
      (``torch.inference_mode``, ``torch.set_num_threads(os.cpu_count())``; on CUDA when torch
      sees a GPU, so one script measures both sides on one accelerator);
  (c) a measured matmul peak in the same dtype (a jit'd square ``jnp.matmul``) and our achieved FLOP/s as a
      fraction of it, with the model's FLOPs counted analytically from the config.

Every timing is the median over ``--iters`` calls after ``--warmup`` calls (the first of which
compiles); the timed calls of the three contenders are interleaved round-robin so background load
on a shared machine hits them alike. The last stdout line is one JSON object, for scripts that
collect bench results.

    python bench/forward.py                      # the full bench (about a minute on 2 CPU cores)
    python bench/forward.py --tiny               # a seconds-long smoke run
    python bench/forward.py --dtype=bf16         # both sides in bfloat16 (torch on CUDA if present)
    python bench/forward.py --xla_flags=--xla_cpu_use_onednn=true   # try XLA flags
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

# Run as ``python bench/forward.py`` from a checkout, without the package installed, Python puts
# bench/ on sys.path, not the repository root: add it, so that ``bench`` and ``mrepe_jax`` import.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "images per forward")
flags.DEFINE_integer("iters", 8, "timed calls; the median is reported")
flags.DEFINE_integer(
    "warmup", 2, "untimed calls of each contender before timing (the first compiles)"
)
flags.DEFINE_bool("tiny", False, "a tiny config, batch 4, 2 iters: a smoke run of the script")
flags.DEFINE_bool("torch", True, "also time transformers' PyTorch CLIPVisionModelWithProjection")
common.define_flags()  # --matmul_n, --xla_flags, --dtype, --compile_cache
flags.adopt_module_key_flags(common)

TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, image_size=32, patch_size=8)
# The text tower is never run (``encode("vision", ...)`` only builds the vision path).
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            vocab_size=128)


def vit_b32_config(tiny: bool):
    vision, projection = common.vision_tower(tiny, TINY_VISION, tiny_projection=32)
    return common.clip_config(vision, TEXT, projection)


def ours_forward(config, batch: int, dtype):
    """A blocking callable: one jit'd forward of our image tower on a random batch."""
    import jax

    from mrepe_jax.models.clip import CLIPModel

    c = config.vision_config
    model = CLIPModel(config, dtype=dtype)
    x = jax.random.normal(jax.random.key(1), (batch, *c.image_hw, c.num_channels), dtype)
    # Only the vision path: no text-tower parameters are created or passed around.
    variables = model.init(jax.random.key(0), "vision", x[:1], method="encode")
    forward = jax.jit(lambda v, pixels: model.apply(v, "vision", pixels, method="encode")[0])
    return lambda: forward(variables, x).block_until_ready()


def torch_forward(config, batch: int, dtype_name: str):
    """(a blocking callable: one transformers forward on a random batch, facts to report); on
    CUDA when torch sees a GPU."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    device, dtype = common.torch_device_dtype(dtype_name)
    c = config.vision_config
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        image_size=c.image_hw[0], patch_size=c.patch_size, hidden_act=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps, projection_dim=config.projection_dim,
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(hf_config).eval().to(device, dtype)
    x = torch.randn(batch, c.num_channels, *c.image_hw).to(device, dtype)

    def call():
        with torch.inference_mode():
            model(pixel_values=x).image_embeds.sum().item()

    attn = getattr(model.config, "_attn_implementation", None)
    return call, {"threads": torch.get_num_threads(), "attn_implementation": attn,
                  "version": torch.__version__, "device": device}


def main(argv):
    del argv
    common.configure_jax(FLAGS)
    import jax

    tiny = FLAGS.tiny
    batch = common.tiny_default("batch", 4, tiny)
    iters = common.tiny_default("iters", 2, tiny)
    matmul_n = common.tiny_default("matmul_n", 256, tiny)
    config = vit_b32_config(tiny)
    device = common.describe_device()
    c = config.vision_config
    print(f"device: {device}")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"model: CLIP image tower, hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
          f"{c.num_attention_heads} heads, mlp {c.intermediate_size}, image {c.image_hw}, patch "
          f"{c.patch_size}, {c.hidden_act}, {FLAGS.dtype}; batch {batch}, {iters} iters, "
          f"{FLAGS.warmup} warmup")

    flops = common.vision_forward_flops(config, batch)
    print(f"model FLOPs per forward (batch {batch}): {flops / 1e9:.2f} GFLOP "
          f"({flops / batch / 1e9:.3f} GFLOP/image)")

    dtype = common.jax_dtype(FLAGS.dtype)
    calls = {"matmul": common.matmul_call(matmul_n, dtype), "ours": ours_forward(config, batch, dtype)}
    torch_info = None
    if FLAGS.torch:
        calls["torch"], torch_info = torch_forward(config, batch, FLAGS.dtype)
    load_before = common.load_average()
    timed = common.time_interleaved(calls, iters, FLAGS.warmup)
    load_after = common.load_average()
    print(f"load average (1 min) before/after timing: {load_before:.2f} / {load_after:.2f} "
          f"on {os.cpu_count()} cores (other processes slow every contender alike: the timed "
          "calls are interleaved)")

    peak = common.matmul_flops(matmul_n) / timed["matmul"][1]
    print(f"matmul peak ({matmul_n}x{matmul_n} @ {matmul_n}x{matmul_n}, {FLAGS.dtype}, jit): "
          f"{peak / 1e9:.1f} GFLOP/s")

    def describe(name):
        return common.describe_timing(timed, name, batch, flops)

    ours_ips = batch / timed["ours"][1]
    ours_flops = flops / timed["ours"][1]
    print(f"ours  (jax jit): {describe('ours')}; {ours_flops / peak:.1%} of the matmul peak")
    torch_ips = torch_version = None
    if torch_info is not None:
        torch_ips, torch_version = batch / timed["torch"][1], torch_info["version"]
        print(f"torch (transformers on {torch_info['device']}, {torch_info['threads']} threads, attn "
              f"{torch_info['attn_implementation']}): {describe('torch')}")
        print(f"ours / torch: {ours_ips / torch_ips:.2f}x")

    result = {
        "bench": "forward",
        "device": device,
        "dtype": FLAGS.dtype,
        "torch_device": None if torch_info is None else torch_info["device"],
        "batch": batch,
        "tiny": tiny,
        "iters": iters,
        "ours_img_per_s": round(ours_ips, 2),
        "torch_img_per_s": None if torch_ips is None else round(torch_ips, 2),
        "ratio": None if torch_ips is None else round(ours_ips / torch_ips, 3),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "ours_gflops": round(ours_flops / 1e9, 2),
        "fraction_of_peak": round(ours_flops / peak, 4),
        "model_gflop_per_forward": round(flops / 1e9, 3),
        "compile_and_first_s": round(timed["ours"][0], 2),
        "loadavg_1min": load_after,
        # Best-of-iters rates: less sensitive than medians to other processes on a shared machine.
        "ours_best_img_per_s": round(batch / min(timed["ours"][2]), 2),
        "torch_best_img_per_s": (
            None if torch_ips is None else round(batch / min(timed["torch"][2]), 2)
        ),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch_version,
        "date": common.utc_now(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
