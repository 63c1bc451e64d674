"""``bench/clap_forward.py --tiny`` runs end to end, ends with its JSON record, and both sides'
audio projections agree in fp32; the FLOP count its GFLOP/s are made of, checked by hand."""

import pytest

from tests.benches import run_tiny

KEYS = {
    "bench", "device", "dtype", "batch", "frames", "ours_clips_per_s", "torch_clips_per_s", "ratio",
    "ratio_best", "max_abs_diff", "max_abs_ref", "matmul_peak_gflops", "ours_gflops", "fraction_of_peak",
    "model_gflop_per_forward", "jax", "torch", "date",
}

# The tiny tower's matmul FLOPs for batch 2, counted by hand (bench/clap_forward.py's TINY_AUDIO:
# 16 mel bins folded by 2 into a 32 x 32 image, 4 x 4 patches: an 8 x 8 grid, window 4, depths (2, 2),
# widths (16, 32), MLP ratio 4, projection 16; 0.5-s clips: 51 frames resized to 64).
_RESIZE = 2 * 64 * 51 * 16  # [64, 51] bicubic matrix over 16 mel bins
_PATCH = 2 * 64 * (4 * 4) * 16  # 64 patches of 16 pixels -> 16 channels


def _block(tokens, dim, window=4):
    return (2 * tokens * dim * 3 * dim + 2 * 2 * tokens * window**2 * dim + 2 * tokens * dim * dim
            + 2 * 2 * tokens * dim * 4 * dim)


_MERGE = 2 * 16 * (4 * 16) * 32  # 16 groups of 2 x 2 tokens, 64 -> 32
_PROJ = 2 * 32 * 16 + 2 * 16 * 16
TINY_FLOPS = 2 * (_RESIZE + _PATCH + 2 * _block(64, 16) + _MERGE + 2 * _block(16, 32) + _PROJ)  # 3,947,520


def test_the_bench_counts_the_tiny_towers_flops_as_by_hand():
    """``bench.common.clap_audio_forward_flops`` against the count above, and at
    clap-htsat-unfused's shape against a per-stage count (fast: runs in ``make test``; the bench
    script itself is not imported, its absl flags would clash with another bench's)."""
    from bench import common
    from mrepe_jax.models.clap import ClapAudioConfig

    tiny = ClapAudioConfig(window_size=4, num_mel_bins=16, spec_size=32, patch_size=4, patch_stride=(4, 4),
                           depths=(2, 2), num_attention_heads=(2, 4), patch_embeds_hidden_size=16,
                           hidden_size=32)
    assert TINY_FLOPS == 3_947_520
    assert common.clap_audio_forward_flops(tiny, 16, 2, 51) == TINY_FLOPS
    # laion/clap-htsat-unfused (our config's defaults): every stage costs 24 N C^2 per block for its
    # linears, with N C^2 the same at every stage (tokens / 4, width x 2).
    unfused = ClapAudioConfig()
    n_c2 = 64 * 64 * 96**2
    attention = sum(d * 4 * (64 * 64 // 4**s) * 64 * (96 * 2**s) for s, d in enumerate((2, 2, 6, 2)))
    want = (2 * 1024 * 1001 * 64 + 2 * 64 * 64 * 16 * 96 + 12 * 24 * n_c2 + attention + 3 * 4 * n_c2
            + 2 * 768 * 512 + 2 * 512 * 512)
    assert common.clap_audio_forward_flops(unfused, 512, 1, 1001) == want


@pytest.mark.slow  # a subprocess run of a bench script (~17 s on 2 cores): `make test-slow`
def test_bench_clap_forward_tiny_runs():
    """The record's rates follow from its own timings and the hand-counted FLOPs. The bench's target
    (ours at least at transformers' speed at clap-htsat-unfused's shape, BUILD.md) is not asserted:
    the tiny tower runs in about a millisecond, where per-call overhead decides the ratio."""
    record, stdout = run_tiny("clap_forward", timeout=180)
    assert KEYS <= set(record), KEYS - set(record)
    assert record["bench"] == "clap_forward" and record["tiny"] is True and record["dtype"] == "fp32"
    assert record["batch"] == 2 and record["frames"] == 51  # 0.5 s at 48 kHz, hop 480
    for key in ("ours_clips_per_s", "torch_clips_per_s", "ratio", "ratio_best", "matmul_peak_gflops",
                "ours_gflops", "fraction_of_peak", "max_abs_ref"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
    assert record["model_gflop_per_forward"] == round(TINY_FLOPS / 1e9, 3)
    want = TINY_FLOPS / 1e9 * record["ours_clips_per_s"] / 2
    assert record["ours_gflops"] == pytest.approx(want, rel=0.01, abs=0.006), (record["ours_gflops"], want)
    assert record["ratio"] == pytest.approx(record["ours_clips_per_s"] / record["torch_clips_per_s"], rel=0.01)
    # The parity tests' tolerance (fp32, atol 1e-5), here on the bench's own weights and features.
    assert record["max_abs_diff"] <= 1e-5, stdout
