"""ToyWorld audio synthesis, vectorised over the batch.

Each concept changes one measurable acoustic property, and the properties live in separate
places of the time-frequency plane so a small ViT over log-mel patches can read them apart:

* colour   -> fundamental frequency of a harmonic tone (150 / 240 / 380 / 600 Hz),
* shape    -> timbre: circle = sine, square = odd harmonics (1/k), triangle = sawtooth (1/k),
* size     -> loudness of the tone (RMS 0.04 / 0.12 / 0.36, ~9.5 dB apart),
* position -> onset time of the tone (4 / 24 / 44 % into the clip; it lasts half the clip),
* emblem   -> a quiet motif in a separate 2.4-3.8 kHz band over the whole clip:
  skull = band noise, flame = rising chirp, blade = pulsed 3.6 kHz tone,
  flower = steady 2.6 kHz tone, sun = steady 3.2 kHz tone, feather = falling chirp.

The tone is band-limited below ``TONE_BAND_HZ`` so its harmonics never reach the motif band.

With ``ToyWorldConfig.distractors`` > 0 each distractor object adds a shorter, quieter tone of its
own colour (pitch) and shape (timbre) at a random time; labels describe the main tone only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES
from mrepe_jax.data.toyworld.sampling import uniform_index

F0_HZ = {"red": 150.0, "green": 240.0, "blue": 380.0, "yellow": 600.0}
TONE_BAND_HZ = 2000.0
LOUDNESS_RMS = {"small": 0.04, "medium": 0.12, "large": 0.36}
ONSET_FRACTION = {"left": 0.04, "centre": 0.24, "right": 0.44}
TONE_DURATION_FRACTION = 0.5
MOTIF_BAND_HZ = (2400.0, 3800.0)
MOTIF_RMS = 0.03
PULSE_RATE_HZ = 12.5
# (kind, start Hz, end Hz); "noise" uses the band edges.
MOTIFS = {
    "skull": ("noise", *MOTIF_BAND_HZ),
    "flame": ("chirp", 2400.0, 3800.0),
    "blade": ("pulse", 3600.0, 3600.0),
    "flower": ("chirp", 2600.0, 2600.0),
    "sun": ("chirp", 3200.0, 3200.0),
    "feather": ("chirp", 3800.0, 2400.0),
}
MIN_SAMPLE_RATE = 8000  # the motif band must sit below Nyquist
_F0_JITTER = 0.015  # relative, +-
_TABLE_SIZE = 4096  # wavetable points per period; linear interpolation error ~1e-4
_RAMP_S = 0.01  # fade in/out so on/offsets do not click across the whole spectrum
# A distractor tone is 6-10 dB below the main tone (relative, so it is quieter at every size)
# and lasts 35 % of the clip, starting anywhere it fits.
DISTRACTOR_GAIN = (0.3, 0.5)
DISTRACTOR_DURATION_FRACTION = 0.35


def _table(mapping: Mapping[str, float], family: str) -> np.ndarray:
    return np.asarray([mapping[v] for v in CONCEPT_FAMILIES[family]], np.float64)


def _sym(u: np.ndarray) -> np.ndarray:
    return 2.0 * u - 1.0


def harmonic_weights(max_harmonics: int) -> np.ndarray:
    """Amplitude of harmonic k (k = 1..max_harmonics) per shape: float64 [n_shapes, K]."""
    k = np.arange(1, max_harmonics + 1, dtype=np.float64)
    by_shape = {
        "circle": (k == 1).astype(np.float64),
        "square": np.where(k % 2 == 1, 1.0 / k, 0.0),
        "triangle": 1.0 / k,
    }
    return np.stack([by_shape[s] for s in CONCEPT_FAMILIES["shape"]])


def _ramp_envelope(t: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    rise = np.clip((t - start) / _RAMP_S, 0.0, 1.0)
    fall = np.clip((stop - t) / _RAMP_S, 0.0, 1.0)
    return rise * fall


def tone_tables(table_size: int = _TABLE_SIZE) -> np.ndarray:
    """One period of each unit-RMS tone, float64 [n_shapes, n_colours, table_size + 1].

    The number of harmonics per colour keeps the highest one below ``TONE_BAND_HZ`` even at the
    top of the f0 jitter range, so timbre is fixed per (shape, colour) and a wavetable lookup
    replaces summing K sines over every sample.
    """
    phase = 2.0 * np.pi * np.arange(table_size + 1) / table_size
    per_colour = []
    for colour in CONCEPT_FAMILIES["colour"]:
        n_harm = int(np.ceil(TONE_BAND_HZ / (F0_HZ[colour] * (1.0 + _F0_JITTER)))) - 1
        weights = harmonic_weights(n_harm)  # [S,K]
        k = np.arange(1, n_harm + 1)
        waves = weights @ np.sin(k[:, None] * phase[None, :])
        per_colour.append(waves / np.sqrt(0.5 * np.sum(weights**2, axis=1, keepdims=True)))
    return np.stack(per_colour, axis=1)


def _tone(labels, nuisance, t: np.ndarray) -> np.ndarray:
    """Unit-RMS band-limited harmonic tone [B,N] by linear interpolation in ``tone_tables``."""
    f0 = _table(F0_HZ, "colour")[labels["colour"]] * (1.0 + _F0_JITTER * _sym(nuisance["aud_f0"]))
    cycles = f0[:, None] * t[None, :] + nuisance["aud_phase"][:, None]
    pos = (cycles - np.floor(cycles)) * _TABLE_SIZE
    i = np.minimum(pos.astype(np.int64), _TABLE_SIZE - 1)
    frac = pos - i
    tables = tone_tables()
    # Flat gather from the small (cache-resident) table beats take_along_axis on [B, T+1] rows.
    row = np.ravel_multi_index((labels["shape"], labels["colour"]), tables.shape[:2])
    flat = i + (row * (_TABLE_SIZE + 1))[:, None]
    tables = tables.reshape(-1)
    lo, hi = tables[flat], tables[flat + 1]
    return lo + frac * (hi - lo)


def _motif(labels, nuisance, t: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-RMS emblem motif [B,N]."""
    b, n = len(labels["emblem"]), t.shape[0]
    duration = n / sample_rate
    out = np.zeros((b, n), np.float64)
    detune = 1.0 + 0.01 * _sym(nuisance["aud_motif_freq"])
    phase0 = 2.0 * np.pi * nuisance["aud_motif_phase"]
    for e, name in enumerate(CONCEPT_FAMILIES["emblem"]):
        rows = np.flatnonzero(labels["emblem"] == e)
        if rows.size == 0:
            continue
        kind, f_start, f_end = MOTIFS[name]
        if kind == "noise":
            spec = np.fft.rfft(nuisance["band_noise"][rows].astype(np.float64), axis=-1)
            freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
            lo, hi = f_start * detune[rows], f_end * detune[rows]
            band = (freqs[None, :] >= lo[:, None]) & (freqs[None, :] <= hi[:, None])
            sig = np.fft.irfft(spec * band, n=n, axis=-1)
        else:
            fa, fb = f_start * detune[rows, None], f_end * detune[rows, None]
            # Linear chirp: instantaneous frequency fa -> fb over the clip.
            phase = 2.0 * np.pi * (fa * t + 0.5 * (fb - fa) * t * t / duration) + phase0[rows, None]
            sig = np.sin(phase)
            if kind == "pulse":
                gate = np.sin(2.0 * np.pi * PULSE_RATE_HZ * t + phase0[rows, None])
                sig = sig * np.clip(0.5 + 2.0 * gate, 0.0, 1.0)
        out[rows] = sig / np.sqrt(np.mean(sig * sig, axis=-1, keepdims=True))
    return out


def _distractor_tones(nuisance, main_gain: np.ndarray, t: np.ndarray,
                      duration: float) -> np.ndarray:
    """Sum [B,N] of the distractor objects' tones (draws ``dis_*`` [B, D] from ``nuisance``)."""
    out = np.zeros((len(main_gain), len(t)), np.float64)
    for j in range(nuisance["dis_aud_f0"].shape[1]):
        u = {name: v[:, j] for name, v in nuisance.items() if name.startswith("dis_")}
        # The same colour and shape as the object's image (image._draw_distractors).
        labels = {"colour": uniform_index(u["dis_colour"], len(CONCEPT_FAMILIES["colour"])),
                  "shape": uniform_index(u["dis_shape"], len(CONCEPT_FAMILIES["shape"]))}
        tone = _tone(labels, {"aud_f0": u["dis_aud_f0"], "aud_phase": u["dis_aud_phase"]}, t)
        onset = (1.0 - DISTRACTOR_DURATION_FRACTION) * duration * u["dis_aud_onset"]
        stop = onset + DISTRACTOR_DURATION_FRACTION * duration
        lo, hi = DISTRACTOR_GAIN
        gain = main_gain * (lo + (hi - lo) * u["dis_aud_gain"])
        out += gain[:, None] * _ramp_envelope(t[None, :], onset[:, None], stop[:, None]) * tone
    return out


def render_audio(labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray],
                 sample_rate: int, n_samples: int) -> np.ndarray:
    """Render mono float32 waveforms [B, n_samples] in [-1, 1] from labels and nuisance (pure)."""
    if sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"ToyWorld audio needs sample_rate >= {MIN_SAMPLE_RATE} Hz so the "
                         f"emblem band {MOTIF_BAND_HZ} Hz is below Nyquist; got {sample_rate}")
    t = np.arange(n_samples, dtype=np.float64) / sample_rate
    duration = n_samples / sample_rate

    onset = (_table(ONSET_FRACTION, "position")[labels["position"]]
             + 0.02 * _sym(nuisance["aud_onset"])) * duration
    stop = onset + TONE_DURATION_FRACTION * duration
    envelope = _ramp_envelope(t[None, :], onset[:, None], stop[:, None])
    gain = _table(LOUDNESS_RMS, "size")[labels["size"]] * (1.0 + 0.1 * _sym(nuisance["aud_gain"]))
    tone = gain[:, None] * envelope * _tone(labels, nuisance, t)

    motif_env = _ramp_envelope(t[None, :], 0.0, duration)
    motif_gain = MOTIF_RMS * (1.0 + 0.15 * _sym(nuisance["aud_motif_gain"]))
    motif = motif_gain[:, None] * motif_env * _motif(labels, nuisance, t, sample_rate)

    noise_std = 0.002 + 0.003 * nuisance["aud_noise_std"]
    wave = tone + motif
    if "dis_aud_f0" in nuisance:  # absent without distractors: that world's bytes stay as they were
        wave = wave + _distractor_tones(nuisance, gain, t, duration)
    wave = wave + noise_std[:, None] * nuisance["audio_noise"]
    return np.clip(wave, -1.0, 1.0).astype(np.float32)
