"""Log-mel front end: ``log_mel_spectrogram`` in jax.numpy and ``log_mel_numpy``, a reference.

The JAX version frames by a gather with static indices, windows with a periodic Hann window,
takes the rfft power and applies a mel filterbank built in numpy at trace time, so it is
jit-able (``cfg`` is hashable, pass it as a static argument) and works on any leading batch
shape (and under vmap). The numpy reference is written independently (loop over frames,
per-bin filter formula) so that a test comparing the two checks both.

Defaults suit ToyWorld's 8 kHz, 0.5 s clips: ``n_fft=256`` (32 ms, 31.25 Hz bins), hop 59 so that
4000 samples give exactly 64 frames (a whole number of 8- or 16-frame patches), 32 mel bands
from 20 Hz to Nyquist.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

MEL_SCALES = ("htk", "slaney")
NORMS = (None, "slaney")


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel parameters.

    Attributes:
      sample_rate: Hz.
      n_fft: frame length = FFT size (no zero padding); ``n_fft // 2 + 1`` frequency bins.
      hop_length: samples between frame starts. Frames are not centred (no padding): a clip of N
        samples gives ``1 + (N - n_fft) // hop_length`` frames.
      n_mels: mel bands.
      fmin, fmax: band edges in Hz; ``fmax=None`` means Nyquist.
      log_floor: power floor before the log, ``log(max(mel, log_floor))``; 1e-6 sits below
        ToyWorld's noise floor and keeps silence finite.
      mel_scale: "htk" (2595 log10(1 + f/700)) or "slaney" (linear below 1 kHz, log above).
      norm: None (triangles peak at 1) or "slaney" (each triangle has unit area in Hz).
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 59
    n_mels: int = 32
    fmin: float = 20.0
    fmax: float | None = None
    log_floor: float = 1e-6
    mel_scale: str = "htk"
    norm: str | None = "slaney"

    def __post_init__(self):
        if self.mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale {self.mel_scale!r} is not one of {MEL_SCALES}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} is not one of {NORMS}")
        if not 0 <= self.fmin < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, "
                             f"fmax={self.f_max}, sample_rate={self.sample_rate}")
        if self.n_fft < 2 or self.hop_length < 1 or self.n_mels < 1 or self.log_floor <= 0:
            raise ValueError(f"invalid LogMelConfig {self}")

    @property
    def f_max(self) -> float:
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


def n_frames(num_samples: int, cfg: LogMelConfig = LogMelConfig()) -> int:
    """Frames produced for a clip of ``num_samples`` samples."""
    if num_samples < cfg.n_fft:
        raise ValueError(f"clip of {num_samples} samples is shorter than n_fft={cfg.n_fft}")
    return 1 + (num_samples - cfg.n_fft) // cfg.hop_length


def hz_to_mel(f, scale: str = "htk"):
    f = np.asarray(f, np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney: linear (3 bands per 200 Hz) below 1 kHz, logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz)
                    / logstep, f / f_sp)


def mel_to_hz(m, scale: str = "htk"):
    m = np.asarray(m, np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Triangular mel filters, float32 [n_freqs, n_mels] (power spectrum @ filters = mel power)."""
    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs)
    mels = np.linspace(hz_to_mel(cfg.fmin, cfg.mel_scale), hz_to_mel(cfg.f_max, cfg.mel_scale),
                       cfg.n_mels + 2)
    edges = mel_to_hz(mels, cfg.mel_scale)  # [n_mels + 2]
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, n_freqs]
    if cfg.norm == "slaney":
        weights *= 2.0 / (upper - lower)
    return weights.T.astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention of torch/librosa), float64 [n]."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def log_mel_spectrogram(waveform, cfg: LogMelConfig = LogMelConfig()):
    """Log-mel spectrogram of ``waveform[..., N]`` -> ``[..., frames, n_mels]`` (jax.numpy).

    jit with ``cfg`` static, e.g. ``jax.jit(log_mel_spectrogram, static_argnums=1)``.
    """
    waveform = jnp.asarray(waveform)
    if not jnp.issubdtype(waveform.dtype, jnp.floating):
        waveform = waveform.astype(jnp.float32)
    frames_n = n_frames(waveform.shape[-1], cfg)
    # Static gather indices [frames, n_fft]: framing without strides tricks works under vmap.
    idx = (np.arange(frames_n)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :])
    frames = waveform[..., idx]
    window = jnp.asarray(hann_window(cfg.n_fft), waveform.dtype)
    spec = jnp.fft.rfft(frames * window, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    fb = jnp.asarray(mel_filterbank(cfg), power.dtype)
    mel = jnp.matmul(power, fb, precision="highest")
    return jnp.log(jnp.maximum(mel, cfg.log_floor))


def log_mel_numpy(waveform: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Reference implementation in float64 numpy: one frame at a time, filters bin by bin.

    Written without sharing code with ``log_mel_spectrogram`` (only the mel-scale formulas),
    so that agreement between the two tests the framing, windowing, power and filterbank.
    """
    x = np.asarray(waveform, np.float64)
    lead, n = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, n)
    count = 1 + (n - cfg.n_fft) // cfg.hop_length
    window = np.array([np.sin(np.pi * j / cfg.n_fft) ** 2 for j in range(cfg.n_fft)])
    bin_hz = cfg.sample_rate / cfg.n_fft
    lo_mel, hi_mel = hz_to_mel(cfg.fmin, cfg.mel_scale), hz_to_mel(cfg.f_max, cfg.mel_scale)
    step = (hi_mel - lo_mel) / (cfg.n_mels + 1)
    filters = np.zeros((cfg.n_mels, cfg.n_fft // 2 + 1))
    for m in range(cfg.n_mels):
        f_lo, f_c, f_hi = (float(mel_to_hz(lo_mel + (m + j) * step, cfg.mel_scale))
                           for j in range(3))
        for k in range(cfg.n_fft // 2 + 1):
            f = k * bin_hz
            if f_lo < f <= f_c:
                filters[m, k] = (f - f_lo) / (f_c - f_lo)
            elif f_c < f < f_hi:
                filters[m, k] = (f_hi - f) / (f_hi - f_c)
        if cfg.norm == "slaney":
            filters[m] *= 2.0 / (f_hi - f_lo)
    out = np.empty((x.shape[0], count, cfg.n_mels))
    for b in range(x.shape[0]):
        for t in range(count):
            frame = x[b, t * cfg.hop_length:t * cfg.hop_length + cfg.n_fft] * window
            power = np.abs(np.fft.rfft(frame)) ** 2
            out[b, t] = np.log(np.maximum(filters @ power, cfg.log_floor))
    return out.reshape(*lead, count, cfg.n_mels)
