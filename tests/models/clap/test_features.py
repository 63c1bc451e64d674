"""``models.clap.features`` against transformers' ``ClapFeatureExtractor``, built locally (no downloads).

Tolerance: ``rtol=1e-5, atol=1e-4`` on the log-mel values in dB (issue 25's bound), for both
truncation modes and all three paddings, on clips shorter than, equal to, just over (the fusion
corner case) and well over the maximum length. On x86 with transformers 5.24 / torch 2.13 the port
is bit-exact (max abs error 0); the tolerance leaves room for torch kernels compiled without FMA.

HF draws its crops with ``np.random``; seeding the global generator with ``np.random.seed(s)``
before each HF call and passing ``rng=s`` to ours makes both draw the same crop offsets.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor

from mrepe_jax.models.clap.features import (
    AudioFeatureConfig,
    bilinear_resize_rows,
    log_mel,
    log_mel_features,
    mel_filters,
)

RTOL, ATOL = 1e-5, 1e-4
NON_DEFAULT = dict(sampling_rate=16_000, feature_size=64, fft_window_size=400, hop_length=160,
                   max_length_s=1, frequency_min=50, frequency_max=7_000,
                   truncation="rand_trunc", padding="repeat")
# max 16000 samples; 16100 is over it by less than a hop (fusion keeps the whole clip).
NON_DEFAULT_LENGTHS = [100, 3000, 7001, 8000, 16000, 16100, 16170, 40000, 48017]


def _clips(lengths, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n)).astype(dtype) for n in lengths]


def _hf(kwargs, clips, seed, **call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fe = ClapFeatureExtractor(**kwargs)
        np.random.seed(seed)
        out = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="np", **call)
    return out["input_features"], out["is_longer"]


def _assert_matches_hf(kwargs, clips, seed=0, **call):
    config = AudioFeatureConfig(**kwargs)
    ours = log_mel_features(clips, config, sampling_rate=config.sampling_rate, rng=seed, **call)
    hf_features, hf_longer = _hf(kwargs, clips, seed, **call)
    assert ours.input_features.dtype == np.float32
    assert ours.input_features.shape == hf_features.shape
    np.testing.assert_allclose(ours.input_features, hf_features, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(ours.is_longer, hf_longer)
    return ours


@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
def test_default_extractor_matches_hf(truncation):
    """HF's class defaults (48 kHz, 10 s): short, exact, just-over (< 1 hop) and long clips."""
    sr = 48_000
    lengths = [3 * sr + 11, 10 * sr, 10 * sr + 100, 14 * sr + 7]
    ours = _assert_matches_hf({}, _clips(lengths), seed=3, truncation=truncation)
    assert ours.input_features.shape == (4, 4 if truncation == "fusion" else 1, 1001, 64)
    expected_longer = [False, False, False, True] if truncation == "fusion" else [0, 0, 1, 1]
    np.testing.assert_array_equal(ours.is_longer[:, 0], expected_longer)


@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
def test_non_default_extractor_matches_hf(truncation, padding):
    clips = _clips(NON_DEFAULT_LENGTHS, seed=1)
    _assert_matches_hf(NON_DEFAULT, clips, seed=7, truncation=truncation, padding=padding)


def test_config_modes_odd_window_and_other_mel_count_match_hf():
    """The config's own modes; an odd FFT window, 32 mels, 8 kHz. HF's fusion shrink is fixed at
    64 mels, so with 32 it only runs on clips no longer than the maximum."""
    kwargs = dict(sampling_rate=8_000, feature_size=32, fft_window_size=401, hop_length=100,
                  max_length_s=2, frequency_min=20, frequency_max=3_900, padding="pad")
    _assert_matches_hf({**kwargs, "truncation": "rand_trunc"}, _clips([5000, 16000, 23456]))
    ours = _assert_matches_hf({**kwargs, "truncation": "fusion"}, _clips([5000, 9999, 16000]))
    assert ours.is_longer.sum() == 1  # HF marks one random clip of an all-short fusion batch


def test_input_forms_match_hf():
    """A single 1-D clip, float64 clips and a ``[batch, samples]`` array, as HF accepts them."""
    single = _clips([20000], seed=4)[0]
    _assert_matches_hf(NON_DEFAULT, single, seed=2)
    _assert_matches_hf(NON_DEFAULT, _clips([9000, 30000], seed=5, dtype=np.float64), seed=2)
    _assert_matches_hf(NON_DEFAULT, np.stack(_clips([20000, 20000], seed=6)), seed=2)


def test_randomness_is_explicit():
    config = AudioFeatureConfig(**NON_DEFAULT)
    clip = _clips([48000], seed=8)
    run = lambda truncation, rng: log_mel_features(  # noqa: E731
        clip, config, sampling_rate=16_000, truncation=truncation, rng=rng).input_features
    for truncation in ("rand_trunc", "fusion"):
        # Different seeds crop differently, so the parity tests above do pin the crop offsets.
        assert not np.array_equal(run(truncation, 0), run(truncation, 1))
        np.testing.assert_array_equal(run(truncation, 5), run(truncation, 5))
        np.testing.assert_array_equal(run(truncation, np.random.RandomState(5)), run(truncation, 5))
        np.testing.assert_array_equal(run(truncation, np.random.default_rng(9)),
                                      run(truncation, np.random.default_rng(9)))


def test_fusion_channels_are_the_shrunk_mel_and_three_crops():
    """With 32 mels (where HF's fusion cannot run) a long clip still gives the shrunk full mel
    plus crops taken from the front, middle and back thirds of the valid offsets."""
    config = AudioFeatureConfig(sampling_rate=8_000, feature_size=32, fft_window_size=256,
                                hop_length=80, max_length_s=1, frequency_max=4_000)
    clip = _clips([40000], seed=9)[0]
    out = log_mel_features(clip, config, sampling_rate=8_000, rng=np.random.default_rng(0))
    full = log_mel(clip.astype(np.float64), config, mel_filters(config, "fusion"))
    chunk = config.max_samples // config.hop_length + 1
    features = out.input_features[0]
    assert features.shape == (4, chunk, 32) and out.is_longer[0, 0]
    np.testing.assert_array_equal(features[0], bilinear_resize_rows(full, chunk))
    count = full.shape[0] - chunk + 1
    bounds = [-(-i * count // 3) for i in range(4)]  # np.array_split's thirds of range(count)
    for third, crop in enumerate(features[1:]):
        offsets = [o for o in range(count) if np.array_equal(full[o : o + chunk], crop)]
        assert len(offsets) == 1 and bounds[third] <= offsets[0] < bounds[third + 1]


@pytest.mark.parametrize("shape", [(1401, 1001, 64), (5, 3, 64), (40, 13, 17), (200, 65, 64)])
def test_bilinear_resize_matches_torch(shape):
    rows_in, rows_out, cols = shape
    x = (30 * np.random.default_rng(0).standard_normal((rows_in, cols)) - 50).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.tensor(x[None, None]), size=[rows_out, cols],
                                          mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bilinear_resize_rows(x, rows_out), ref, rtol=1e-6, atol=1e-5)


def test_from_dir_reads_hf_save_pretrained(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ClapFeatureExtractor(**NON_DEFAULT).save_pretrained(tmp_path / "fe")
        hf = ClapFeatureExtractor.from_pretrained(tmp_path / "fe", local_files_only=True)
    config = AudioFeatureConfig.from_dir(tmp_path / "fe")
    assert config == AudioFeatureConfig(**NON_DEFAULT)
    clips = _clips([5000, 30000], seed=10)
    ours = log_mel_features(clips, config, sampling_rate=16_000, rng=4)
    np.random.seed(4)
    ref = hf(clips, sampling_rate=16_000, return_tensors="np")
    np.testing.assert_allclose(ours.input_features, ref["input_features"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(ours.is_longer, ref["is_longer"])
    # transformers 5's ClapProcessor.save_pretrained nests it in processor_config.json.
    os.makedirs(tmp_path / "proc")
    with open(tmp_path / "proc" / "processor_config.json", "w") as f:
        json.dump({"feature_extractor": config.to_hf_dict(), "processor_class": "ClapProcessor"}, f)
    assert AudioFeatureConfig.from_dir(tmp_path / "proc") == config


def test_from_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no preprocessor_config\.json in .*nowhere"):
        AudioFeatureConfig.from_dir(tmp_path / "nowhere")
    d = AudioFeatureConfig().to_hf_dict()
    del d["hop_length"]
    file = tmp_path / "preprocessor_config.json"
    file.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: missing 'hop_length'"):
        AudioFeatureConfig.from_dir(tmp_path)
    file.write_text(json.dumps({**AudioFeatureConfig().to_hf_dict(), "truncation": "crop"}))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json.*'crop'.*fusion, rand_trunc"):
        AudioFeatureConfig.from_dir(tmp_path)


def test_input_errors():
    config = AudioFeatureConfig(**NON_DEFAULT)
    call = lambda x, **kw: log_mel_features(x, config, **{"sampling_rate": 16_000, **kw})  # noqa: E731
    clip = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match=r"waveform 1 has shape \(1000, 2\); expected 1-D mono"):
        call([clip, np.zeros((1000, 2), np.float32)])
    with pytest.raises(ValueError, match=r"1-D mono clip or a \[batch, samples\].*\(2, 3, 1000\)"):
        call(np.zeros((2, 3, 1000), np.float32))
    with pytest.raises(ValueError, match=r"dtype int16; expected float audio.*32768"):
        call(np.zeros(1000, np.int16))
    with pytest.raises(ValueError, match=r"waveform 0 is empty"):
        call(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match=r"sampled at 44100 Hz but .* expects 16000 Hz; resample"):
        call(clip, sampling_rate=44_100)
    with pytest.raises(ValueError, match=r"unknown truncation 'crop'; choose one of fusion, rand"):
        call(clip, truncation="crop")
    with pytest.raises(ValueError, match=r"unknown padding 'zeros'; choose one of repeatpad, repeat,"):
        call(clip, padding="zeros")
    with pytest.raises(ValueError, match=r"unknown padding 'zeros'"):
        AudioFeatureConfig(padding="zeros")
    with pytest.raises(TypeError, match=r"rng must be an int seed"):
        call(clip, rng="seed")
    odd = AudioFeatureConfig(sampling_rate=8_000, fft_window_size=255, hop_length=64,
                             max_length_s=1, frequency_max=4_000)
    with pytest.raises(ValueError, match=r"shapes \[\(4, 125, 64\), \(4, 126, 64\)\].*odd fft_wi"):
        log_mel_features([clip, np.ones(9000, np.float32)], odd, sampling_rate=8_000)
