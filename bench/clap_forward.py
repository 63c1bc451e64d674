"""Forward throughput of the CLAP audio tower: ours (jit'd Flax) against transformers' PyTorch.

The HTSAT audio tower of ``laion/clap-htsat-unfused`` (window 8, 64 mel bins folded by 4 into a
256 x 256 image, 4 x 4 patches, depths (2, 2, 6, 2), heads (4, 8, 16, 32), widths 96 -> 768,
projection 512, no fusion), with random weights, on a batch of 10-s clips' log-mel features
``[B, 1, 1001, 64]`` (``ClapFeatureExtractor``'s ``rand_trunc`` layout: 48 kHz, hop 480; the
model resizes them to 1024 frames). Reports

  (a) our jit'd ``ClapModel.apply(v, "audio", x, method="encode")`` (the projection, unnormalised)
      throughput, clips/s;
  (b) transformers' ``audio_projection(audio_model(x).pooler_output)`` of the same weights (what
      ``ClapAudioModelWithProjection`` returns as ``audio_embeds``) in the same process
      (``torch.inference_mode``, ``torch.set_num_threads(os.cpu_count())``; on CUDA when torch sees
      a GPU);
  (c) a measured matmul peak (a jit'd square ``jnp.matmul``) and our achieved FLOP/s as a fraction
      of it, the model's FLOPs counted analytically (``common.clap_audio_forward_flops``);
  (d) the largest absolute difference between the two sides' projections.

The weights: transformers' init for the model, then every audio norm, batch norm statistic and
relative position table re-randomised (HF's init zeroes the tables and sets the norms to 1/0, which
would leave the bias gather and the norms' affine terms unchecked by (d)). Our params come from
``mrepe_jax.models.clap.from_torch_model``. The text tower exists because ``ClapModel`` has one; it
is tiny and never run.

The features: by default our ``log_mel_features`` of random noise (``--features=random``: N(0, 1)
features instead). Timing as in ``bench/forward.py``: medians over ``--iters`` calls after
``--warmup`` calls (the first compiles), the contenders interleaved round-robin; fp32 runs jax at
``highest`` matmul precision (``common.jax_dtype``) and torch without TF32, and the output compared
is the timed call's own. (On XLA:CPU ``highest`` and ``default`` give bitwise the same forward: it
matters on accelerators only.) ``ratio_best`` compares the fastest call of each side: on a shared
machine other processes slow torch's OpenMP threads more than XLA's, so the medians' ratio can
flatter ours; the best-of ratio is the closer estimate of an idle machine. The last stdout line is
one JSON object.

    python bench/clap_forward.py                  # the full bench (about a minute on 2 CPU cores)
    python bench/clap_forward.py --tiny           # a seconds-long smoke run
    python bench/clap_forward.py --batch=1 --iters=10
    python bench/clap_forward.py --dtype=bf16     # both sides in bfloat16 (torch on CUDA if present)
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

# Run as ``python bench/clap_forward.py`` Python puts bench/ on sys.path, not the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "10-s clips per forward")
flags.DEFINE_integer("iters", 6, "timed calls; the median is reported")
flags.DEFINE_integer(
    "warmup", 2, "untimed calls of each contender before timing (the first compiles)"
)
flags.DEFINE_bool("tiny", False, "a tiny config, batch 2, 2 iters: a smoke run of the script")
flags.DEFINE_bool("torch", True, "also time transformers' PyTorch audio tower and compare outputs")
flags.DEFINE_enum("features", "extractor", ["extractor", "random"],
                  "the input: our log-mel feature extractor on random noise, or N(0, 1) features")
flags.DEFINE_integer("seed", 0, "seed of the weights and the input")
common.define_flags()  # --matmul_n, --xla_flags, --dtype, --compile_cache
flags.adopt_module_key_flags(common)

# laion/clap-htsat-unfused's audio tower (transformers' field names; its config.json values).
UNFUSED_AUDIO = dict(window_size=8, num_mel_bins=64, spec_size=256, patch_size=4, patch_stride=[4, 4],
                     depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32],
                     patch_embeds_hidden_size=96, hidden_size=768, mlp_ratio=4.0, enable_fusion=False,
                     hidden_act="gelu", layer_norm_eps=1e-5)
UNFUSED_PROJECTION = 512
# 16 mel bins folded by 2 into a 32 x 32 image, an 8 x 8 patch grid, window 4: stage 0 shifts.
TINY_AUDIO = dict(window_size=4, num_mel_bins=16, spec_size=32, patch_size=4, patch_stride=[4, 4],
                  depths=[2, 2], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32,
                  mlp_ratio=4.0, enable_fusion=False, hidden_act="gelu", layer_norm_eps=1e-5)
TINY_PROJECTION = 16
# Never run: ClapModel needs a text tower to exist.
TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=16, type_vocab_size=1)
# The extractor's clip length: 10 s (1001 frames) for the full model, 0.5 s (51 frames) for the tiny.
CLIP_SECONDS = {False: 10, True: 0.5}


def hf_clap_config(tiny: bool):
    import transformers

    audio, projection = (TINY_AUDIO, TINY_PROJECTION) if tiny else (UNFUSED_AUDIO, UNFUSED_PROJECTION)
    config = transformers.ClapConfig(text_config=TEXT, audio_config=audio, projection_dim=projection,
                                     projection_hidden_act="relu")
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    return config


def random_hf_clap(tiny: bool, seed: int):
    """transformers' ``ClapModel`` at the bench's shape, HF's init with the audio tower's norms,
    batch-norm statistics and relative position tables re-randomised (module docstring)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.ClapModel(hf_clap_config(tiny)).eval()
    audio = model.audio_model
    norms = {n for n, m in audio.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))}
    with torch.no_grad():
        for key, t in audio.state_dict().items():
            module, _, leaf = key.rpartition(".")
            if not t.is_floating_point():
                continue
            if leaf == "relative_position_bias_table":
                t.normal_(0, 0.5)
            elif module in norms and leaf == "running_var":
                t.copy_(0.5 + torch.rand_like(t))
            elif module in norms and leaf == "weight":
                t.copy_(1.0 + 0.1 * torch.randn_like(t))
            elif module in norms:  # bias, running_mean
                t.normal_(0, 0.1)
    return model


def input_features(audio_config, batch: int, tiny: bool, kind: str, seed: int):
    """``[batch, 1, frames, mel]`` float32 features: our extractor on noise, or N(0, 1)."""
    import numpy as np

    from mrepe_jax.models.clap.features import AudioFeatureConfig, log_mel_features

    rng = np.random.default_rng(seed)
    fe = AudioFeatureConfig(feature_size=audio_config.num_mel_bins, max_length_s=CLIP_SECONDS[tiny],
                            truncation="rand_trunc")
    frames = fe.max_samples // fe.hop_length + 1
    if kind == "random":
        return rng.standard_normal((batch, 1, frames, audio_config.num_mel_bins), dtype=np.float32)
    noise = (0.1 * rng.standard_normal((batch, fe.max_samples))).astype(np.float32)
    return log_mel_features(noise, fe, sampling_rate=fe.sampling_rate, rng=seed).input_features


def ours_forward(model, params, features, dtype):
    """(a blocking callable: one jit'd forward of our audio tower, the last output as numpy)."""
    import jax
    import numpy as np

    from mrepe_jax.models.clap import ClapModel

    model = ClapModel(model.config, dtype=dtype, execution=model.execution)
    # The text tower's params are left out: it is never run (setup only declares the logit scales).
    variables = {"params": {k: v for k, v in params.items() if not k.startswith("text_")}}
    variables = jax.device_put(variables)
    x = jax.device_put(np.asarray(features))
    forward = jax.jit(lambda v, f: model.apply(v, "audio", f, method="encode")[0])
    last = {}

    def call():
        last["out"] = forward(variables, x).block_until_ready()

    return call, lambda: np.asarray(last["out"], np.float32)


def torch_forward(hf, features, dtype_name: str):
    """(a blocking callable: one transformers audio forward to the projection, the last output as
    numpy, facts to report); on CUDA when torch sees a GPU."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device, dtype = common.torch_device_dtype(dtype_name)
    hf = hf.to(device, dtype)
    audio, projection = hf.audio_model, hf.audio_projection
    x = torch.from_numpy(features).to(device, dtype)
    last = {}

    def call():
        with torch.inference_mode():
            out = projection(audio(input_features=x).pooler_output)
            last["out"] = out.float().cpu()  # waits for the device

    info = {"threads": torch.get_num_threads(), "version": torch.__version__, "device": device}
    return call, lambda: last["out"].numpy(), info


def main(argv):
    del argv
    common.configure_jax(FLAGS)
    import jax
    import numpy as np

    from mrepe_jax.models.clap import from_torch_model

    tiny = FLAGS.tiny
    batch = common.tiny_default("batch", 2, tiny)
    iters = common.tiny_default("iters", 2, tiny)
    matmul_n = common.tiny_default("matmul_n", 256, tiny)
    device = common.describe_device()
    dtype = common.jax_dtype(FLAGS.dtype)

    hf = random_hf_clap(tiny, FLAGS.seed)
    model, params = from_torch_model(hf)
    c = model.config.audio_config
    features = input_features(c, batch, tiny, FLAGS.features, FLAGS.seed)
    frames = features.shape[2]
    print(f"device: {device}")
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"model: CLAP HTSAT audio tower{' (tiny)' if tiny else ' (laion/clap-htsat-unfused shape)'}, "
          f"window {c.window_size}, spec {c.spec_size} ({c.num_mel_bins} mel x {c.freq_ratio}), patch "
          f"{c.patch_hw}, depths {c.depths}, heads {c.num_attention_heads}, widths {c.stage_dims}, "
          f"projection {model.config.projection_dim}, {FLAGS.dtype}; input {list(features.shape)} "
          f"({FLAGS.features}); {iters} iters, {FLAGS.warmup} warmup")
    flops = common.clap_audio_forward_flops(c, model.config.projection_dim, batch, frames)
    print(f"model FLOPs per forward (batch {batch}): {flops / 1e9:.2f} GFLOP "
          f"({flops / batch / 1e9:.3f} GFLOP/clip)")

    calls, outputs = {"matmul": common.matmul_call(matmul_n, dtype)}, {}
    calls["ours"], outputs["ours"] = ours_forward(model, params, features, dtype)
    torch_info = None
    if FLAGS.torch:
        calls["torch"], outputs["torch"], torch_info = torch_forward(hf, features, FLAGS.dtype)
    load_before = common.load_average()
    timed = common.time_interleaved(calls, iters, FLAGS.warmup)
    load_after = common.load_average()
    print(f"load average (1 min) before/after timing: {load_before:.2f} / {load_after:.2f} "
          f"on {os.cpu_count()} cores (other processes slow every contender alike: the timed "
          "calls are interleaved)")

    peak = common.matmul_flops(matmul_n) / timed["matmul"][1]
    print(f"matmul peak ({matmul_n}x{matmul_n} @ {matmul_n}x{matmul_n}, {FLAGS.dtype}, jit): "
          f"{peak / 1e9:.1f} GFLOP/s")
    ours_cps = batch / timed["ours"][1]
    ours_flops = flops / timed["ours"][1]
    print(f"ours  (jax jit): {common.describe_timing(timed, 'ours', batch, flops, 'clips')}; "
          f"{ours_flops / peak:.1%} of the matmul peak")
    torch_cps = max_diff = max_ref = None
    if torch_info is not None:
        torch_cps = batch / timed["torch"][1]
        print(f"torch (transformers on {torch_info['device']}, {torch_info['threads']} threads): "
              f"{common.describe_timing(timed, 'torch', batch, flops, 'clips')}")
        print(f"ours / torch: {ours_cps / torch_cps:.2f}x (medians), "
              f"{min(timed['torch'][2]) / min(timed['ours'][2]):.2f}x (fastest calls)")
        ours_out, torch_out = outputs["ours"](), outputs["torch"]()
        max_diff = float(np.max(np.abs(ours_out - torch_out)))
        max_ref = float(np.max(np.abs(torch_out)))
        print(f"projections [{batch}, {ours_out.shape[-1]}]: max |ours - torch| = {max_diff:.3g} "
              f"(max |torch| = {max_ref:.3g})")

    result = {
        "bench": "clap_forward",
        "device": device,
        "dtype": FLAGS.dtype,
        "torch_device": None if torch_info is None else torch_info["device"],
        "batch": batch,
        "frames": frames,
        "features": FLAGS.features,
        "tiny": tiny,
        "iters": iters,
        "ours_clips_per_s": round(ours_cps, 3),
        "torch_clips_per_s": None if torch_cps is None else round(torch_cps, 3),
        "ratio": None if torch_cps is None else round(ours_cps / torch_cps, 3),
        "max_abs_diff": None if max_diff is None else float(f"{max_diff:.3g}"),
        "max_abs_ref": None if max_ref is None else float(f"{max_ref:.3g}"),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "ours_gflops": round(ours_flops / 1e9, 2),
        "fraction_of_peak": round(ours_flops / peak, 4),
        "model_gflop_per_forward": round(flops / 1e9, 3),
        "compile_and_first_s": round(timed["ours"][0], 2),
        "loadavg_1min": load_after,
        "ours_best_clips_per_s": round(batch / min(timed["ours"][2]), 3),
        "torch_best_clips_per_s": (
            None if torch_cps is None else round(batch / min(timed["torch"][2]), 3)
        ),
        "ratio_best": None if torch_cps is None else round(min(timed["torch"][2]) / min(timed["ours"][2]), 3),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": None if torch_info is None else torch_info["version"],
        "date": common.utc_now(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
