"""Log-mel front end against its numpy reference, and ToyWorld's acoustic concept encoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mrepe_jax.data import (
    CONCEPT_FAMILIES,
    LogMelConfig,
    ToyWorld,
    ToyWorldConfig,
    log_mel_numpy,
    log_mel_spectrogram,
    mel_filterbank,
    n_frames,
)
from mrepe_jax.data.audio import hz_to_mel, mel_to_hz

SR = 8000


@pytest.fixture(scope="module")
def world():
    return ToyWorld(ToyWorldConfig(seed=0))


def _assert_log_mel_close(x, cfg):
    got = np.asarray(jax.jit(log_mel_spectrogram, static_argnums=1)(x, cfg))
    want = log_mel_numpy(x, cfg)
    assert got.shape == want.shape == (*x.shape[:-1], n_frames(x.shape[-1], cfg), cfg.n_mels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---- log-mel ----

@pytest.mark.parametrize("cfg", [
    LogMelConfig(),
    LogMelConfig(mel_scale="slaney", norm=None, n_mels=24, hop_length=64, fmin=0.0),
    LogMelConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40, fmax=7600.0),
], ids=["default", "slaney-scale-peak-norm", "16k"])
def test_log_mel_matches_numpy_on_random_audio(cfg):
    x = 0.3 * np.random.default_rng(1).standard_normal((3, 4000)).astype(np.float32)
    _assert_log_mel_close(x, cfg)


def test_log_mel_matches_numpy_on_toyworld_audio(world):
    audio = world.batch(range(6), "test")["audio"]
    _assert_log_mel_close(audio, LogMelConfig())
    _assert_log_mel_close(audio[0], LogMelConfig())  # no batch axis


def test_log_mel_vmaps_and_keeps_leading_axes(world):
    cfg = LogMelConfig()
    audio = world.batch(range(4), "test")["audio"]
    direct = np.asarray(log_mel_spectrogram(audio, cfg))
    mapped = np.asarray(jax.vmap(lambda a: log_mel_spectrogram(a, cfg))(audio))
    np.testing.assert_allclose(mapped, direct, rtol=1e-6, atol=1e-6)
    nested = np.asarray(log_mel_spectrogram(audio.reshape(2, 2, -1), cfg))
    np.testing.assert_allclose(nested.reshape(direct.shape), direct, rtol=1e-6, atol=1e-6)


def test_toyworld_clip_gives_a_patchable_grid():
    assert n_frames(ToyWorldConfig().n_audio) == 64  # 8 patches of 8 frames
    assert LogMelConfig().n_mels == 32
    silence = np.asarray(log_mel_spectrogram(np.zeros(4000, np.float32)))
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-6)  # the floor, not -inf


def test_filterbank_shape_and_normalisation():
    cfg = LogMelConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_fft // 2 + 1, cfg.n_mels) and fb.dtype == np.float32
    assert (fb >= 0).all() and ((fb > 0).sum(0) >= 2).all()  # no empty filter
    bin_hz = cfg.sample_rate / cfg.n_fft
    area = fb.sum(0) * bin_hz
    np.testing.assert_allclose(area, 1.0, atol=0.15)  # slaney: unit area per filter
    peak = mel_filterbank(LogMelConfig(norm=None))
    assert (peak.max(0) <= 1.0 + 1e-6).all() and (peak.max(0) > 0.5).all()
    centres = (peak * np.arange(fb.shape[0])[:, None]).sum(0) / peak.sum(0)
    assert (np.diff(centres) > 0).all()  # filters ordered by frequency


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_scale_round_trip(scale):
    f = np.array([0.0, 20.0, 440.0, 999.0, 1000.0, 1001.0, 3999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, rtol=1e-9, atol=1e-9)
    assert (np.diff(hz_to_mel(f, scale)) > 0).all()


def test_log_mel_config_errors():
    with pytest.raises(ValueError, match="mel_scale"):
        LogMelConfig(mel_scale="bark")
    with pytest.raises(ValueError, match="fmax"):
        LogMelConfig(fmax=5000.0)
    with pytest.raises(ValueError, match="shorter than n_fft"):
        log_mel_spectrogram(np.zeros(100, np.float32))


# ---- each concept changes its acoustic property ----

def _tone_part(audio):
    """The tone (below 2 kHz) without the emblem motif, by FFT masking."""
    spec = np.fft.rfft(audio.astype(np.float64), axis=-1)
    spec[..., np.fft.rfftfreq(audio.shape[-1], 1 / SR) > 2100] = 0
    return np.fft.irfft(spec, n=audio.shape[-1], axis=-1)


def _magnitude_at(audio, f):
    """Peak magnitude within 2% of frequency f (per row)."""
    mag = np.abs(np.fft.rfft(audio.astype(np.float64) * np.hanning(audio.shape[-1]), axis=-1))
    freqs = np.fft.rfftfreq(audio.shape[-1], 1 / SR)
    return np.stack([mag[i, np.abs(freqs - f[i]) < 0.02 * f[i] + 3].max()
                     for i in range(len(audio))])


def test_colour_sets_the_fundamental(world):
    expected = {"red": 150, "green": 240, "blue": 380, "yellow": 600}
    freqs = np.fft.rfftfreq(4000, 1 / SR)
    band = (freqs > 80) & (freqs < 1000)
    for colour, f0 in expected.items():
        audio = world.counterfactual(range(20), "test", {"colour": colour})["audio"]
        mag = np.abs(np.fft.rfft(audio.astype(np.float64), axis=-1))[:, band]
        peak = freqs[band][mag.argmax(1)]
        np.testing.assert_allclose(peak, f0, rtol=0.03, err_msg=colour)


def test_shape_sets_the_harmonics(world):
    f0 = np.full(20, 150.0)
    ratios = {}
    for shape in CONCEPT_FAMILIES["shape"]:
        audio = world.counterfactual(range(20), "test", {"shape": shape, "colour": "red"})["audio"]
        h1, h2, h3 = (_magnitude_at(audio, k * f0) for k in (1, 2, 3))
        ratios[shape] = (h2 / h1, h3 / h1)
    assert (ratios["circle"][0] < 0.05).all() and (ratios["circle"][1] < 0.05).all()
    assert (ratios["square"][0] < 0.05).all() and (np.abs(ratios["square"][1] - 1 / 3) < 0.08).all()
    assert (np.abs(ratios["triangle"][0] - 1 / 2) < 0.1).all()


def test_size_sets_the_loudness(world):
    rms = {}
    for size in CONCEPT_FAMILIES["size"]:
        audio = world.counterfactual(range(20), "test", {"size": size})["audio"]
        rms[size] = np.sqrt((_tone_part(audio) ** 2).mean(1))
    assert (rms["medium"] / rms["small"] > 2).all() and (rms["large"] / rms["medium"] > 2).all()


def test_position_sets_the_onset(world):
    onset = {}
    for position in CONCEPT_FAMILIES["position"]:
        tone = _tone_part(world.counterfactual(range(20), "test", {"position": position})["audio"])
        env = np.abs(tone).reshape(20, -1, 40).max(-1)  # 5 ms blocks
        onset[position] = (env > 0.5 * env.max(1, keepdims=True)).argmax(1) * 0.005
    np.testing.assert_allclose(onset["left"], 0.02, atol=0.02)
    np.testing.assert_allclose(onset["centre"], 0.12, atol=0.02)
    np.testing.assert_allclose(onset["right"], 0.22, atol=0.02)


def _motif_stats(audio):
    """Spectral centroid slope (Hz/s), mean centroid (Hz), spread (Hz) and frame-energy CV in
    the 2.3-3.9 kHz motif band."""
    n_fft, hop = 256, 64
    frames = np.stack([audio[:, t:t + n_fft] for t in range(0, audio.shape[1] - n_fft, hop)], 1)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)
    band = (freqs > 2300) & (freqs < 3900)
    p, f = power[..., band], freqs[band]
    p = p[:, 2:-2]  # skip the fade-in/out frames
    energy = p.sum(-1)
    centroid = (p * f).sum(-1) / energy
    t = np.arange(centroid.shape[1]) * hop / SR
    slope = np.polyfit(t, centroid.T, 1)[0]
    spread = np.sqrt((p * (f - centroid[..., None]) ** 2).sum(-1) / energy).mean(1)
    mean_centroid = (centroid * energy).sum(1) / energy.sum(1)  # silent frames are just noise
    return slope, mean_centroid, spread, energy.std(1) / energy.mean(1)


def test_emblem_sets_the_motif(world):
    stats = {e: _motif_stats(world.counterfactual(range(10), "test", {"emblem": e})["audio"])
             for e in CONCEPT_FAMILIES["emblem"]}
    slope = {e: s[0] for e, s in stats.items()}
    centre = {e: s[1] for e, s in stats.items()}
    spread = {e: s[2] for e, s in stats.items()}
    cv = {e: s[3] for e, s in stats.items()}
    assert (slope["flame"] > 1500).all() and (slope["feather"] < -1500).all()
    for steady, hz in (("flower", 2600), ("sun", 3200), ("blade", 3600)):
        assert (np.abs(slope[steady]) < 300).all(), steady
        np.testing.assert_allclose(centre[steady], hz, rtol=0.03, err_msg=steady)
    assert (cv["blade"] > 0.5).all() and (cv["flower"] < 0.2).all() and (cv["sun"] < 0.2).all()
    assert (spread["skull"] > 250).all() and (spread["sun"] < 150).all()
