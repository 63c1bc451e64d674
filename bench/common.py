"""What the bench scripts share, kept once so that they measure, count and report alike.

Not a bench itself. The scripts import it as ``from bench import common``; run as
``python bench/<name>.py`` Python puts ``bench/`` on ``sys.path``, not the repository root, so each
script first adds the root (one line: it must run before this module can be found, so it cannot
live here). ``python -m bench.<name>`` from the root works as well.

jax, torch and ``mrepe_jax`` are imported inside the functions: a script must be able to set
``XLA_FLAGS`` (``configure_jax``) before JAX starts its backend, and ``bench/streaming.py``'s
parent process never needs JAX at all.
"""

from __future__ import annotations

import datetime
import os
import platform

# ----------------------------------------------------------------------------------------------
# Flags (absl scripts)


def define_flags() -> None:
    """Defines the flags every absl bench takes alike: ``--matmul_n``, ``--xla_flags``, ``--dtype``
    and ``--compile_cache`` (``configure_jax`` applies the second and the last).

    Call once at a script's top level, then ``flags.adopt_module_key_flags(common)`` so that the
    script's ``--help`` still lists them (absl shows only the main module's key flags there).
    """
    from absl import flags

    flags.DEFINE_integer("matmul_n", 2048, "side of the square fp32 matmul that measures the peak")
    flags.DEFINE_string("xla_flags", "", "appended to XLA_FLAGS before JAX starts its backend")
    flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"],
                      "compute dtype of both sides; fp32 runs matmuls at full precision (jax "
                      "'highest', torch without TF32) so the two compare like for like")
    flags.DEFINE_string("compile_cache", "", "JAX's persistent compilation cache directory "
                        "(mrepe_jax.compile_cache); empty: none, every first call compiles")


def tiny_default(name: str, tiny_value, tiny: bool):
    """``FLAGS.<name>``, or ``tiny_value`` under ``--tiny`` when the flag was left at its default:
    ``--tiny`` shrinks only what the command line did not set explicitly."""
    from absl import flags

    flag = flags.FLAGS[name]
    return tiny_value if tiny and flag.using_default_value else flag.value


def configure_jax(flag_values) -> None:
    """Applies ``--xla_flags`` (appended to ``XLA_FLAGS``) and ``--compile_cache``. Must run before
    the first ``import jax`` in the process that times anything: XLA reads the variable once, when
    its backend starts."""
    if flag_values.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag_values.xla_flags).strip()
    if flag_values.compile_cache:
        from mrepe_jax import compile_cache

        compile_cache.enable(flag_values.compile_cache)


def jax_dtype(name: str):
    """The jax dtype of ``--dtype``; for fp32 also sets full-precision matmuls (on GPU/TPU the
    default may use TF32/bf16 passes, which would compare a cheaper computation with torch's)."""
    import jax
    import jax.numpy as jnp

    if name == "fp32":
        jax.config.update("jax_default_matmul_precision", "highest")
        return jnp.float32
    return jnp.bfloat16


def torch_device_dtype(name: str):
    """(device, dtype) for the torch side: CUDA when torch sees a GPU, with TF32 off for fp32."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return device, torch.float32
    return device, torch.bfloat16


# ----------------------------------------------------------------------------------------------
# Configs

# The image tower of openai/clip-vit-base-patch32 at 224 px (49 patches + CLS): the shape the full
# benches run, so that their numbers speak of a model people actually use.
VIT_B32_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, image_size=224, patch_size=32)
VIT_B32_PROJECTION = 512


def vision_tower(tiny: bool, tiny_vision: dict, tiny_projection: int) -> tuple[dict, int]:
    """(vision config kwargs, projection dim): ViT-B/32, or under ``--tiny`` the script's own tiny
    tower (each smoke run keeps its own sizes); quick_gelu either way, as in the checkpoint.

    Plain kwargs (transformers' field names), so a script can build transformers' config too.
    """
    vision, projection = ((tiny_vision, tiny_projection) if tiny
                          else (VIT_B32_VISION, VIT_B32_PROJECTION))
    return {**vision, "hidden_act": "quick_gelu"}, projection


def clip_config(vision: dict, text: dict, projection: int):
    """Our ``CLIPConfig`` from vision and text kwargs. The benches only run the image tower; the
    text tower exists because ``CLIPModel`` has one, so the scripts keep it tiny."""
    from mrepe_jax.models.clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    return CLIPConfig(vision_config=CLIPVisionConfig(**vision), text_config=CLIPTextConfig(**text),
                      projection_dim=projection)


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs: matmuls only, 2*m*n*k each. Elementwise work (LayerNorm, softmax, activations,
# residual adds) is left out: it is a few percent of the total and not what a matmul peak measures.


def matmul_flops(n: int) -> int:
    """FLOPs of one square ``[n, n] @ [n, n]``."""
    return 2 * n**3


def layer_flops(c, tokens: int) -> int:
    """One encoder layer (``c``: a vision or text config) on one sequence of ``tokens``."""
    d, f = c.hidden_size, c.intermediate_size
    return (2 * tokens * d * 3 * d  # q, k, v projections
            + 2 * 2 * tokens * tokens * d  # Q K^T and pattern @ V, all heads together
            + 2 * tokens * d * d  # out_proj
            + 2 * 2 * tokens * d * f)  # fc1, fc2


def patch_embed_flops(c) -> int:
    """The patch embedding of one image (a conv with stride = kernel = patch: one matmul)."""
    gh, gw = c.grid
    return 2 * (gh * gw) * (c.patch_size * c.patch_size * c.num_channels) * c.hidden_size


def projection_flops(config) -> int:
    """The image tower's projection of one pooled token into the joint space."""
    return 2 * config.vision_config.hidden_size * config.projection_dim


def vision_forward_flops(config, batch: int) -> int:
    """One image-tower forward of ``batch`` images, patch embedding to projection."""
    c = config.vision_config
    per_image = (patch_embed_flops(c) + c.num_hidden_layers * layer_flops(c, c.num_positions)
                 + projection_flops(config))
    return batch * per_image


def clap_audio_forward_flops(c, projection_dim: int, batch: int, frames: int) -> int:
    """One forward of an unfused CLAP audio tower (``c``: our ``ClapAudioConfig``) on ``batch``
    clips of ``frames`` feature frames, to the projection: the bicubic time resize (one matmul, when
    ``frames < spec_width``), the patch convolution, per block q/k/v, QK^T and PV over the windows
    of the padded grid, the attention output and the MLP, each patch merging, the projection's two
    Linears."""
    if c.enable_fusion:
        raise ValueError("clap_audio_forward_flops counts unfused towers only (no fusion branch)")
    resize = 2 * c.spec_width * frames * c.num_mel_bins * c.input_channels if frames < c.spec_width else 0
    (p0, p1), (gh, gw) = c.patch_hw, c.grid
    total = resize + 2 * gh * gw * p0 * p1 * c.input_channels * c.patch_embeds_hidden_size
    for s, (dim, (h, w)) in enumerate(zip(c.stage_dims, c.stage_resolutions)):
        window = c.window_size  # the config refuses a window larger than a stage's grid
        tokens = (-(-h // window) * window) * (-(-w // window) * window)
        block = (2 * tokens * dim * 3 * dim  # q, k, v
                 + 2 * 2 * tokens * window * window * dim  # QK^T and PV, every window and head
                 + 2 * tokens * dim * dim  # attention output
                 + 2 * 2 * tokens * dim * c.mlp_dim(s))  # MLP
        total += c.depths[s] * block
        if s < c.num_stages - 1:
            total += 2 * (h * w // 4) * 4 * dim * 2 * dim  # patch merging: 4C -> 2C per 2x2 group
    total += 2 * c.num_features * projection_dim + 2 * projection_dim * projection_dim
    return batch * total


# ----------------------------------------------------------------------------------------------
# Timing: the one way the benches and the report's Table 5 time calls (``mrepe_jax.metrics.cost``
# imports no JAX at module level). Every callable timed must block until its work is done.

from mrepe_jax.metrics.cost import time_calls, time_interleaved  # noqa: E402,F401


def describe_timing(timed: dict, name: str, batch: int, flops: int, unit: str = "images") -> str:
    """One contender's line from ``time_interleaved``'s result: first call, median per forward, the
    rate in ``unit``/s and GFLOP/s (``flops``: one forward of ``batch``), every timed call."""
    first, median, times = timed[name]
    return (f"first call {first:.2f} s, median {median * 1e3:.1f} ms/forward -> "
            f"{batch / median:.1f} {unit}/s, {flops / median / 1e9:.1f} GFLOP/s "
            f"(times {[round(t * 1e3, 1) for t in times]} ms)")


def matmul_call(n: int, dtype=None):
    """A blocking callable: one jit'd ``[n, n] @ [n, n]`` (``matmul_flops(n)`` FLOPs; fp32 unless
    ``dtype``). Its rate is the peak the model's FLOPs are measured against: what this machine's
    XLA gets out of a large GEMM, rather than a datasheet number no library reaches."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.float32 if dtype is None else dtype
    ka, kb = jax.random.split(jax.random.key(2))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    return lambda: matmul(a, b).block_until_ready()


def matmul_peak(n: int, iters: int = 5, dtype=None) -> float:
    """FLOP/s of ``matmul_call(n)``: the median of ``iters`` calls after two untimed ones (the
    compile, then one warm call)."""
    call = matmul_call(n, dtype)
    call()
    _, median = time_calls(call, iters)
    return matmul_flops(n) / median


# ----------------------------------------------------------------------------------------------
# What to record next to the numbers


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device() -> str:
    """``platform:kind`` of JAX's first device, plus the CPU model and core count on CPU (the
    kind alone says just ``cpu``). Imports jax: call it after ``configure_jax``."""
    import jax

    dev = jax.devices()[0]
    device = f"{dev.platform}:{dev.device_kind}"
    if dev.platform == "cpu":
        device += f" ({cpu_name()}, {os.cpu_count()} cores)"
    return device


def load_average() -> float | None:
    """The 1-minute load average, rounded (None where the OS has none): on a shared machine it
    moves every number, so the benches print and record it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def rounded(x, digits: int = 4):
    """A figure for the JSON record: ``x`` rounded to ``digits`` decimals, None as None."""
    return None if x is None else round(float(x), digits)


def utc_now() -> str:
    """The record's ``date``: now, UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# Local checkpoints and memory


def rss_mb() -> float:
    """This process's peak resident set size so far, in MiB."""
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports ru_maxrss in KiB, macOS in bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


#: ``write_hf_clip`` shapes: a tiny CLIP for tests, and ViT-B/32's (openai/clip-vit-base-patch32).
HF_CLIP_SHAPES = {
    "tiny": dict(image_size=32, patch_size=8, vision=(16, 32, 2, 2), text=(16, 32, 2, 2), text_positions=40,
                 projection_dim=16),
    # The README's first example steers layer 6: the tiny widths, 8 layers deep.
    "tiny8": dict(image_size=32, patch_size=8, vision=(16, 32, 8, 2), text=(16, 32, 8, 2),
                  text_positions=40, projection_dim=16),
    "b32": dict(image_size=224, patch_size=32, vision=(768, 3072, 12, 12), text=(512, 2048, 12, 8),
                text_positions=77, projection_dim=512),
}


def write_hf_clip(directory, shape: str = "tiny", seed: int = 0) -> None:
    """A random transformers CLIP of ``HF_CLIP_SHAPES[shape]`` (every tensor drawn from N(0, 0.2)
    for the tiny one: HF's init zeroes biases and sets LayerNorms to 1/0; HF's init for b32, whose
    depth would blow up such weights) saved as a checkpoint directory (safetensors) with a
    character-level CLIP tokenizer and a processor of its image size: what ``configs/clip.py``
    runs on where no real checkpoint can be downloaded."""
    import json
    import pathlib
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    s = HF_CLIP_SHAPES[shape]
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + ".,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    bpe = d / "bpe"
    bpe.mkdir(exist_ok=True)
    (bpe / "vocab.json").write_text(json.dumps(vocab))
    (bpe / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(bpe, local_files_only=True).save_pretrained(d)
    size = s["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(d)

    def tower(widths):
        hidden, mlp, layers, heads = widths
        return dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                    num_attention_heads=heads)

    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=s["text_positions"], bos_token_id=0,
                         eos_token_id=1, pad_token_id=1, **tower(s["text"])),
        vision_config=dict(image_size=size, patch_size=s["patch_size"], **tower(s["vision"])),
        projection_dim=s["projection_dim"])
    torch.manual_seed(seed)
    model = CLIPModel(config)
    if shape == "tiny":
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2)
    model.save_pretrained(d, safe_serialization=True)


#: ``write_hf_clap`` shapes. ``tiny``: HTSAT over 16 mel bins folded by 3 into a 48x48 image (4x4
#: patches, depths (1, 2), window 3), a 2-layer RoBERTa, and an extractor at 8 kHz whose 1 s clips
#: give 101 frames (fewer than the image's 144: the time resize runs). ``unfused``:
#: laion/clap-htsat-unfused's (transformers' ClapConfig defaults: HTSAT-base over 64 mel bins,
#: depths (2, 2, 6, 2), RoBERTa-base), its extractor at 48 kHz with 10 s clips.
HF_CLAP_SHAPES = {}
TINY_CLAP = dict(
    audio=dict(window_size=3, num_mel_bins=16, spec_size=48, patch_size=4, patch_stride=[4, 4], depths=[1, 2],
               num_attention_heads=[2, 4], patch_embeds_hidden_size=8, hidden_size=16, mlp_ratio=2.0,
               enable_fusion=False, hidden_act="gelu"),
    text=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=64),
    features=dict(feature_size=16, sampling_rate=8000, hop_length=80, max_length_s=1, fft_window_size=256,
                  frequency_min=0, frequency_max=4000, truncation="rand_trunc", padding="repeatpad"),
    projection_dim=16)
HF_CLAP_SHAPES["tiny"] = TINY_CLAP
HF_CLAP_SHAPES["unfused"] = dict(
    audio=dict(enable_fusion=False), text=dict(),
    features=dict(feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
                  frequency_min=50, frequency_max=14_000, truncation="rand_trunc", padding="repeatpad"),
    projection_dim=512)


def write_hf_clap(directory, shape: str = "tiny", seed: int = 0) -> None:
    """A random transformers CLAP of ``HF_CLAP_SHAPES[shape]`` saved as a checkpoint directory
    (safetensors) with a character-level RoBERTa tokenizer and its feature extractor's settings:
    what ``configs/clap.py`` runs on where no real checkpoint can be downloaded. The tiny one has
    every tensor drawn again (N(0, 0.2), norms near 1, batch-norm variances in [0.5, 1.5]: HF's
    init zeroes biases); the real shape keeps HF's init, whose depth would blow such weights up."""
    import json
    import pathlib
    import string

    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in ("\u0120", ".", *string.ascii_lowercase):  # U+0120 (G with dot): byte-level BPE's space
        vocab[ch] = len(vocab)
    vocab["<mask>"] = len(vocab)
    bpe = d / "bpe"
    bpe.mkdir(exist_ok=True)
    (bpe / "vocab.json").write_text(json.dumps(vocab))
    (bpe / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer.from_pretrained(bpe, local_files_only=True).save_pretrained(d)
    s = HF_CLAP_SHAPES[shape]
    ClapFeatureExtractor(**s["features"]).save_pretrained(d)
    # The real shape keeps RoBERTa-base's 50,265-row embedding: the char vocab uses its first rows.
    vocab_size = len(vocab) if shape == "tiny" else 50_265
    config = ClapConfig(text_config=dict(vocab_size=vocab_size, **s["text"]), audio_config=s["audio"],
                        projection_dim=s["projection_dim"])
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    if shape != "tiny":
        model.save_pretrained(d, safe_serialization=True)
        return
    norms = {n for n, m in model.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))}
    with torch.no_grad():
        for key, t in model.state_dict().items():
            module, _, leaf = key.rpartition(".")
            if not t.is_floating_point() or leaf.startswith("logit_scale"):
                continue
            if leaf == "running_var":
                t.copy_(0.5 + torch.rand_like(t))
            elif module in norms and leaf == "weight":
                t.copy_(1.0 + 0.2 * torch.randn_like(t))
            else:
                t.normal_(0, 0.2)
    model.save_pretrained(d, safe_serialization=True)


def write_concept_data(root, classes, per_split: dict, size: int, families: dict, captions: int,
                       seed: int = 0) -> None:
    """A local data set for ``configs/clip.py``: ``root/<split>/<class>/*.png`` (``per_split``:
    images per split, spread over the classes; each class its own tint) and ``root/captions.txt``,
    ``captions`` lines each naming one value of every family in ``families``."""
    import pathlib

    import numpy as np
    from PIL import Image

    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    tints = rng.integers(0, 256, (len(classes), 3))
    for split, n in per_split.items():
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(-(-n // len(classes))):
                img = np.clip(rng.normal(tints[k], 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:05d}.png")
    write_captions(root / "captions.txt", families, captions, rng)


def write_audio_data(root, classes, per_split: dict, rate: int, families: dict, captions: int,
                     seconds: float = 1.0, seed: int = 0) -> None:
    """A local data set for ``configs/clap.py``: ``root/<split>/<class>/*.wav`` (``per_split``:
    recordings per split, spread over the classes; each class a tone of its own pitch, 16-bit PCM
    at ``rate``) and ``root/captions.txt`` as ``write_concept_data`` writes it."""
    import pathlib
    import wave

    import numpy as np

    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    for split, n in per_split.items():
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(-(-n // len(classes))):
                x = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * 220 * (k + 1) * t) + 0.05 * rng.standard_normal(len(t))
                with wave.open(str(root / split / c / f"{i:05d}.wav"), "wb") as f:
                    f.setnchannels(1)
                    f.setsampwidth(2)
                    f.setframerate(rate)
                    f.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    write_captions(root / "captions.txt", families, captions, rng)


def write_captions(path, families: dict, captions: int, rng) -> None:
    """``captions`` lines, each naming one value of every family in ``families``."""
    values = [tuple(v) for v in families.values()]
    picks = [rng.integers(0, len(v), captions) for v in values]
    lines = [f"a photo of {' and '.join(v[p[n]] for v, p in zip(values, picks))} things."
             for n in range(captions)]
    path.write_text("\n".join(lines) + "\n")


def print_run(bench: str, what: str, results: dict, seconds: float, setup: float, **extra) -> None:
    """An experiment bench's figures: each stage's seconds, the total and the peak host RSS, then
    the JSON line (``extra`` added to it)."""
    import json

    import jax

    print(f"{what} on {describe_device()}: data and checkpoint written in {setup:.1f} s")
    for name, s in results["stage_seconds"].items():
        print(f"  {name:<28} {s:8.1f} s")
    print(f"  {'total (incl. loading)':<28} {seconds:8.1f} s; peak host RSS {rss_mb():.0f} MiB")
    print(json.dumps({"bench": bench, "device": str(jax.devices()[0]), "seconds": round(seconds, 1),
                      "stage_seconds": results["stage_seconds"], "rss_mb": round(rss_mb(), 1), **extra}))


def run_worker(script: str, args, env: dict, what: str) -> dict:
    """Runs ``python script *args`` in a fresh process (its peak memory and devices its own) and
    returns the JSON object on its last stdout line; a failure raises with its stderr's tail."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker for {what} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
