"""Forward throughput of the CLIP image tower: ours (jit'd Flax) against transformers' PyTorch.

A ViT-B/32-shaped image tower (hidden 768, 12 layers, 12 heads, MLP 3072, 224px, patch 32,
quick_gelu, projection 512) with random weights, fp32. Reports

  (a) our jit'd ``CLIPModel.apply(v, "vision", x, method="encode")`` throughput (images/s);
  (b) transformers' ``CLIPVisionModelWithProjection`` throughput in the same process
      (``torch.inference_mode``, ``torch.set_num_threads(os.cpu_count())``);
  (c) a measured fp32 matmul peak (a jit'd square ``jnp.matmul``) and our achieved FLOP/s as a
      fraction of it, with the model's FLOPs counted analytically from the config.

Every timing is the median over ``--iters`` calls after ``--warmup`` calls (the first of which
compiles); the timed calls of the three contenders are interleaved round-robin so background load
on a shared machine hits them alike. The last stdout line is one JSON object, for scripts that
collect bench results.

    python bench/forward.py                      # the full bench (about a minute on 2 CPU cores)
    python bench/forward.py --tiny               # a seconds-long smoke run
    python bench/forward.py --xla_flags=--xla_cpu_use_onednn=true   # try XLA flags
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

# The script runs as ``python bench/forward.py`` from a checkout, without the package installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "images per forward")
flags.DEFINE_integer("iters", 8, "timed calls; the median is reported")
flags.DEFINE_integer(
    "warmup", 2, "untimed calls of each contender before timing (the first compiles)"
)
flags.DEFINE_integer("matmul_n", 2048, "side of the square fp32 matmul that measures the peak")
flags.DEFINE_bool("tiny", False, "a tiny config, batch 4, 2 iters: a smoke run of the script")
flags.DEFINE_bool("torch", True, "also time transformers' PyTorch CLIPVisionModelWithProjection")
flags.DEFINE_string("xla_flags", "", "appended to XLA_FLAGS before JAX starts its backend")


def vit_b32_config(tiny: bool):
    from mrepe_jax.models.clip_config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if tiny:
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8,
                                  hidden_act="quick_gelu")
        projection = 32
    else:
        vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, image_size=224, patch_size=32,
                                  hidden_act="quick_gelu")
        projection = 512
    # The text tower is never run (``encode("vision", ...)`` only builds the vision path).
    text = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, vocab_size=128)
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection)


def vision_forward_flops(config, batch: int) -> int:
    """Matmul FLOPs (2*m*n*k each) of one image-tower forward, patch embedding to projection.

    Elementwise work (LayerNorm, softmax, activations, residual adds) is left out: it is a few
    percent of the total and is not what a matmul peak measures.
    """
    c = config.vision_config
    d, f, p = c.hidden_size, c.intermediate_size, c.patch_size
    gh, gw = c.grid
    t = gh * gw + 1  # patches + CLS
    patch = 2 * (gh * gw) * (p * p * c.num_channels) * d
    per_layer = (
        2 * t * d * (3 * d)  # q, k, v projections
        + 2 * t * t * d  # Q K^T, all heads together
        + 2 * t * t * d  # pattern @ V
        + 2 * t * d * d  # out_proj
        + 2 * t * d * f * 2  # fc1, fc2
    )
    projection = 2 * d * config.projection_dim
    return batch * (patch + c.num_hidden_layers * per_layer + projection)


def time_interleaved(calls: dict, iters: int, warmup: int) -> dict:
    """Times each blocking callable in ``calls``: {name: (first call s, median s, timed s)}.

    The timed calls go round-robin (one of each per round), so that background load on a shared
    machine slows every contender alike and the ratios stay meaningful even when the absolute
    numbers do not.
    """
    first = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()  # compiles (jax) / allocates and picks kernels (torch)
        first[name] = time.perf_counter() - t0
        for _ in range(max(warmup - 1, 0)):
            fn()
    times = {name: [] for name in calls}
    for _ in range(iters):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (first[name], statistics.median(ts), ts) for name, ts in times.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ours_forward(config, batch: int):
    """A blocking callable: one jit'd forward of our image tower on a random batch."""
    import jax
    import jax.numpy as jnp

    from mrepe_jax.models.clip import CLIPModel

    c = config.vision_config
    model = CLIPModel(config)
    x = jax.random.normal(jax.random.key(1), (batch, *c.image_hw, c.num_channels), jnp.float32)
    # Only the vision path: no text-tower parameters are created or passed around.
    variables = model.init(jax.random.key(0), "vision", x[:1], method="encode")
    forward = jax.jit(lambda v, pixels: model.apply(v, "vision", pixels, method="encode")[0])
    return lambda: forward(variables, x).block_until_ready()


def torch_forward(config, batch: int):
    """(a blocking callable: one transformers forward on a random batch, facts to report)."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    c = config.vision_config
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        image_size=c.image_hw[0], patch_size=c.patch_size, hidden_act=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps, projection_dim=config.projection_dim,
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(hf_config).eval()
    x = torch.randn(batch, c.num_channels, *c.image_hw)

    def call():
        with torch.inference_mode():
            model(pixel_values=x).image_embeds.sum().item()

    attn = getattr(model.config, "_attn_implementation", None)
    return call, {"threads": torch.get_num_threads(), "attn_implementation": attn,
                  "version": torch.__version__}


def matmul_call(n: int):
    """A blocking callable: one jit'd fp32 ``[n, n] @ [n, n]`` (2 n^3 FLOPs)."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(2))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    return lambda: matmul(a, b).block_until_ready()


def main(argv):
    del argv
    if FLAGS.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAGS.xla_flags).strip()
    import jax

    tiny = FLAGS.tiny
    batch = 4 if tiny and FLAGS["batch"].using_default_value else FLAGS.batch
    iters = 2 if tiny and FLAGS["iters"].using_default_value else FLAGS.iters
    matmul_n = 256 if tiny and FLAGS["matmul_n"].using_default_value else FLAGS.matmul_n
    config = vit_b32_config(tiny)
    dev = jax.devices()[0]
    device = f"{dev.platform}:{dev.device_kind}"
    if dev.platform == "cpu":
        device += f" ({cpu_name()}, {os.cpu_count()} cores)"
    c = config.vision_config
    print(f"device: {device}")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"model: CLIP image tower, hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
          f"{c.num_attention_heads} heads, mlp {c.intermediate_size}, image {c.image_hw}, patch "
          f"{c.patch_size}, {c.hidden_act}, fp32; batch {batch}, {iters} iters, "
          f"{FLAGS.warmup} warmup")

    flops = vision_forward_flops(config, batch)
    print(f"model FLOPs per forward (batch {batch}): {flops / 1e9:.2f} GFLOP "
          f"({flops / batch / 1e9:.3f} GFLOP/image)")

    calls = {"matmul": matmul_call(matmul_n), "ours": ours_forward(config, batch)}
    torch_info = None
    if FLAGS.torch:
        calls["torch"], torch_info = torch_forward(config, batch)
    load_before = os.getloadavg()
    timed = time_interleaved(calls, iters, FLAGS.warmup)
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after timing: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} cores (other processes slow every contender alike: the timed "
          "calls are interleaved)")

    peak = 2 * matmul_n**3 / timed["matmul"][1]
    print(f"matmul peak ({matmul_n}x{matmul_n} @ {matmul_n}x{matmul_n}, fp32, jit): "
          f"{peak / 1e9:.1f} GFLOP/s")

    def describe(name):
        first, median, times = timed[name]
        return (f"first call {first:.2f} s, median {median * 1e3:.1f} ms/forward -> "
                f"{batch / median:.1f} images/s, {flops / median / 1e9:.1f} GFLOP/s "
                f"(times {[round(t * 1e3, 1) for t in times]} ms)")

    ours_ips = batch / timed["ours"][1]
    ours_flops = flops / timed["ours"][1]
    print(f"ours  (jax jit): {describe('ours')}; {ours_flops / peak:.1%} of the matmul peak")
    torch_ips = torch_version = None
    if torch_info is not None:
        torch_ips, torch_version = batch / timed["torch"][1], torch_info["version"]
        print(f"torch (transformers, {torch_info['threads']} threads, attn "
              f"{torch_info['attn_implementation']}): {describe('torch')}")
        print(f"ours / torch: {ours_ips / torch_ips:.2f}x")

    result = {
        "bench": "forward",
        "device": device,
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
        "loadavg_1min": round(load_after[0], 2),
        # Best-of-iters rates: less sensitive than medians to other processes on a shared machine.
        "ours_best_img_per_s": round(batch / min(timed["ours"][2]), 2),
        "torch_best_img_per_s": (
            None if torch_ips is None else round(batch / min(timed["torch"][2]), 2)
        ),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
