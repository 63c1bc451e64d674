"""CLAP's audio front end: transformers' ``ClapFeatureExtractor`` (5.24) log-mel features in numpy.

``log_mel_features`` turns mono float waveforms into the ``input_features`` ``[batch, channels,
frames, mel]`` (float32) and ``is_longer`` ``[batch, 1]`` (bool) that ``ClapModel`` takes, step for
step as HF does:

1. Clips longer than ``max_samples = max_length_s * sampling_rate``:

   - ``rand_trunc``: a random crop of ``max_samples`` samples (HF's ``np.random.randint``), its
     log-mel with the Slaney filter bank, one channel; ``is_longer`` True.
   - ``fusion``: the log-mel of the *whole* clip with the HTK filter bank, then 4 channels: the
     whole mel shrunk to ``chunk_frames = max_samples // hop_length + 1`` rows (HF's
     ``torch.nn.functional.interpolate`` bilinear, ``align_corners=False``, redone here in float32
     numpy) and three ``chunk_frames`` crops whose starts are drawn from the front, middle and
     back thirds of the valid offsets (HF's ``_random_mel_fusion``). When the whole clip has
     exactly ``chunk_frames`` frames (fewer than ``hop_length`` extra samples) HF stacks that mel
     4 times with ``is_longer`` False.

2. Shorter clips are padded to ``max_samples`` first: ``repeatpad`` tiles the clip
   ``int(max / n)`` times then zero-pads, ``repeat`` tiles it past the end and cuts, ``pad`` only
   zero-pads. ``fusion`` stacks the HTK log-mel 4 times, ``rand_trunc`` gives one Slaney channel.

3. With ``fusion``, a batch in which no clip is longer gets ``is_longer`` True on one random clip,
   as HF does (``np.random.randint(0, batch)``); the model's fusion branch then runs on that clip,
   so a short clip's embedding from a fused checkpoint can depend on its batch and the draw.

The log-mel is HF's ``_np_extract_fbank_features``: ``audio_utils.spectrogram`` with a periodic
Hann window (``window_function``), ``frame_length = fft_window_size``, centred reflect padding,
power 2, ``mel_floor`` 1e-10, and ``power_to_db`` with reference 1.0, min_value 1e-10 and no
``db_range``. HF never passes ``top_db`` on, so neither do we. The filter banks are HF's
``mel_filter_bank`` (``norm=None, mel_scale="htk"`` for ``fusion``; ``norm="slaney",
mel_scale="slaney"`` otherwise).

Randomness: every draw goes through ``rng``, in HF's order (per clip in batch order, then the
``is_longer`` pick). An int seeds a fresh ``np.random.RandomState``, the legacy generator behind
``np.random.randint`` / ``np.random.choice``, so ``log_mel_features(x, cfg, rng=s, ...)`` equals
HF's output after ``np.random.seed(s)``: both draw the same integers and turn them into the same
crop offsets. A ``np.random.Generator`` is also accepted (fresh crops per call when reused).

The output is bit-identical to HF's on x86 (transformers 5.24, torch 2.x; see the tests). One
deviation: HF's fusion shrink is hard-coded to 64 mel bins, so HF fails on a longer clip when
``feature_size != 64``; we shrink to ``feature_size`` (identical output when it is 64). Where HF's
batch cannot be stacked (an odd ``fft_window_size`` mixing fusion crops with padded clips) we raise.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from mrepe_jax.models.clip.preprocess import processor_config

TRUNCATIONS = ("fusion", "rand_trunc")
PADDINGS = ("repeatpad", "repeat", "pad")
# Every key HF's save_pretrained writes that changes the features (top_db is written but unused).
CONFIG_KEYS = ("sampling_rate", "feature_size", "fft_window_size", "hop_length", "max_length_s",
               "frequency_min", "frequency_max", "truncation", "padding")
# audio_utils.spectrogram / power_to_db defaults, which ClapFeatureExtractor leaves as they are.
MEL_FLOOR = 1e-10
DB_MIN_VALUE = 1e-10
DB_REFERENCE = 1.0

Rng = int | np.random.Generator | np.random.RandomState


def _check_mode(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclasses.dataclass(frozen=True)
class AudioFeatureConfig:
    """``ClapFeatureExtractor``'s settings; defaults are its class defaults (what HF uses)."""

    sampling_rate: int = 48_000
    feature_size: int = 64
    fft_window_size: int = 1024
    hop_length: int = 480
    max_length_s: int | float = 10
    frequency_min: float = 0.0
    frequency_max: float = 14_000.0
    truncation: str = "fusion"
    padding: str = "repeatpad"

    def __post_init__(self):
        for name in ("sampling_rate", "feature_size", "fft_window_size", "hop_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        samples = self.max_length_s * self.sampling_rate
        if self.max_length_s <= 0 or int(samples) != samples:
            raise ValueError(f"max_length_s * sampling_rate must be a positive whole number of "
                             f"samples, got {self.max_length_s} * {self.sampling_rate}")
        if not 0 <= self.frequency_min <= self.frequency_max:
            raise ValueError(f"need 0 <= frequency_min <= frequency_max, got "
                             f"{self.frequency_min}, {self.frequency_max}")
        _check_mode("truncation", self.truncation, TRUNCATIONS)
        _check_mode("padding", self.padding, PADDINGS)

    @property
    def max_samples(self) -> int:
        """HF's ``nb_max_samples``: clips are cropped or padded to this many samples."""
        return int(self.max_length_s * self.sampling_rate)

    @property
    def num_frequency_bins(self) -> int:
        return self.fft_window_size // 2 + 1

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "<dict>") -> AudioFeatureConfig:
        """From a ``ClapFeatureExtractor`` ``preprocessor_config.json`` dict; ``source`` names it
        in errors. All of ``CONFIG_KEYS`` must be present (HF's save_pretrained writes them)."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in CONFIG_KEYS if k not in d]
        if missing:
            raise ValueError(f"{source}: missing {', '.join(repr(k) for k in missing)} in the CLAP "
                           f"feature extractor config (it has {sorted(d)})")
        try:
            return cls(**{k: d[k] for k in CONFIG_KEYS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: bad CLAP feature extractor config: {e}") from None

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> AudioFeatureConfig:
        """Reads ``<path>/preprocessor_config.json``, or else the ``feature_extractor`` entry of
        ``<path>/processor_config.json`` (where transformers 5's ``ClapProcessor`` saves it)."""
        return cls.from_hf_dict(*processor_config(path, "feature_extractor"))

    def to_hf_dict(self) -> dict[str, Any]:
        """The keys ``ClapFeatureExtractor(**d)`` takes, plus its type name."""
        d = {k: getattr(self, k) for k in CONFIG_KEYS}
        return {"feature_extractor_type": "ClapFeatureExtractor", **d}


class AudioFeatures(NamedTuple):
    input_features: np.ndarray  # float32 [batch, 4 (fusion) or 1 (rand_trunc), frames, mel]
    is_longer: np.ndarray  # bool [batch, 1]


def _hertz_to_mel(freq: np.ndarray, slaney: bool) -> np.ndarray:
    """HF's ``hertz_to_mel`` (``mel_scale`` "slaney" or "htk")."""
    freq = np.asarray(freq, np.float64)
    if not slaney:
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0  # only there, so log(0) is never taken
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray, slaney: bool) -> np.ndarray:
    """HF's ``mel_to_hertz``."""
    if not slaney:
        return 700.0 * (np.power(10, mels / 2595.0) - 1.0)
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    return freq


@functools.lru_cache(maxsize=16)
def _mel_filter_bank(num_bins: int, num_mels: int, fmin: float, fmax: float,
                     sampling_rate: int, slaney: bool) -> np.ndarray:
    """HF's ``mel_filter_bank`` (float64, ``[num_bins, num_mels]``), read-only as it is cached."""
    mel_freqs = np.linspace(_hertz_to_mel(np.array([fmin]), slaney)[0],
                            _hertz_to_mel(np.array([fmax]), slaney)[0], num_mels + 2)
    filter_freqs = _mel_to_hertz(mel_freqs, slaney)
    fft_freqs = np.linspace(0, sampling_rate // 2, num_bins)  # HF floors the Nyquist frequency
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    filter_diff = np.diff(filter_freqs)
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    bank = np.maximum(np.zeros(1), np.minimum(down, up))
    if slaney:  # area normalisation: roughly constant energy per mel channel
        bank *= (2.0 / (filter_freqs[2 : num_mels + 2] - filter_freqs[:num_mels]))[None, :]
    bank.setflags(write=False)
    return bank


def mel_filters(config: AudioFeatureConfig, truncation: str) -> np.ndarray:
    """The ``[num_frequency_bins, feature_size]`` bank HF uses for ``truncation``: HTK without
    normalisation (``mel_filters``) for fusion, Slaney-normalised Slaney (``mel_filters_slaney``)
    otherwise."""
    return _mel_filter_bank(config.num_frequency_bins, config.feature_size,
                            float(config.frequency_min), float(config.frequency_max),
                            config.sampling_rate, _check_mode("truncation", truncation,
                                                              TRUNCATIONS) != "fusion")


def log_mel(waveform: np.ndarray, config: AudioFeatureConfig, filters: np.ndarray) -> np.ndarray:
    """HF's ``_np_extract_fbank_features``: ``float64 [samples]`` -> ``float32 [frames, mel]``,
    all frames at once instead of HF's per-frame loop."""
    n, hop = config.fft_window_size, config.hop_length
    x = np.pad(waveform, (n // 2, n // 2), mode="reflect")
    num_frames = 1 + (x.size - n) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop][:num_frames]
    window = np.hanning(n + 1)[:-1]  # periodic Hann
    # HF stores the FFT in a complex64 array, so its rounding is part of the output.
    spec = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2.0
    mel = np.maximum(MEL_FLOOR, np.dot(filters.T, power.T))
    db = 10.0 * (np.log10(np.clip(mel, DB_MIN_VALUE, None)) - np.log10(DB_REFERENCE))
    return db.astype(np.float32).T


def _randint(rng: np.random.Generator | np.random.RandomState, high: int) -> int:
    """One uniform draw from ``[0, high)``; on a RandomState the same call as HF's ``randint`` and
    ``choice`` (which draws ``randint(0, len(a))``)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, high))
    return int(rng.randint(0, high))


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` with one rounding: the float64 product of two float32s is exact."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def bilinear_resize_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``torch.nn.functional.interpolate(x[None, None], size=[rows, x.shape[1]], mode="bilinear",
    align_corners=False)[0, 0]`` for float32 ``x``, with torch's CPU float32 arithmetic.

    The column count is unchanged, so columns are copied (torch's weights there are exactly 1 and
    0). torch's x86 kernels are compiled with FMA contraction, which rounds the source index
    ``scale * (i + 0.5) - 0.5`` and the blend ``x0 * w0 + x1 * w1`` once instead of twice; we
    emulate those fused multiply-adds, as the unfused results differ by up to 1e-5 relative.
    torch (2.x) picks its channels-last kernel when ``rows + columns <= 128``, whose blend
    fuses the other product; real CLAP shapes (1001 + 64) take the generic kernel.
    """
    x = np.asarray(x, np.float32)
    in_rows = x.shape[0]
    if in_rows == rows:
        return x.copy()
    f32 = np.float32
    scale = f32(in_rows) / f32(rows)
    src = _fma32(np.arange(rows, dtype=f32) + f32(0.5), scale, np.float64(-0.5))
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_rows - 1)
    lam1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    lam0 = f32(1) - lam1
    i1 = i0 + (i0 < in_rows - 1)
    if rows + x.shape[1] <= 128:
        return _fma32(x[i1], lam1[:, None], x[i0] * lam0[:, None])
    return _fma32(x[i0], lam0[:, None], x[i1] * lam1[:, None])


def _random_mel_fusion(mel: np.ndarray, chunk_frames: int, rng) -> np.ndarray:
    """HF's ``_random_mel_fusion``: ``[4, chunk_frames, mel]`` = shrunk mel + 3 random crops."""
    count = mel.shape[0] - chunk_frames + 1  # valid crop offsets, split in 3 as np.array_split
    base, extra = divmod(count, 3)
    sizes = [base + (i < extra) for i in range(3)]
    starts = [0, sizes[0], sizes[0] + sizes[1]]
    channels = [bilinear_resize_rows(mel, chunk_frames)]
    for start, size in zip(starts, sizes):
        if size == 0:  # HF falls back to offset 0 for an empty third
            start, size = 0, 1
        offset = start + _randint(rng, size)
        channels.append(mel[offset : offset + chunk_frames])
    return np.stack(channels)


def _clip_features(w: np.ndarray, config: AudioFeatureConfig, max_length: int, truncation: str,
                   padding: str, rng) -> tuple[np.ndarray, bool]:
    """HF's ``_get_input_mel`` for one float64 clip."""
    fusion = truncation == "fusion"
    filters = mel_filters(config, truncation)
    if w.size > max_length:
        if not fusion:
            offset = _randint(rng, w.size - max_length + 1)
            return log_mel(w[offset : offset + max_length], config, filters)[None], True
        mel = log_mel(w, config, filters)
        chunk_frames = max_length // config.hop_length + 1
        if mel.shape[0] == chunk_frames:
            return np.stack([mel] * 4), False
        return _random_mel_fusion(mel, chunk_frames, rng), True
    if w.size < max_length:
        # int(a / b), not a // b, so float rounding matches HF's for any length.
        if padding == "repeat":
            w = np.tile(w, int(max_length / w.size) + 1)[:max_length]
        elif padding == "repeatpad":
            w = np.tile(w, int(max_length / w.size))
        w = np.pad(w, (0, max_length - w.size))
    mel = log_mel(w, config, filters)
    return (np.stack([mel] * 4) if fusion else mel[None]), False


def _as_clips(waveforms) -> list[np.ndarray]:
    """One clip (1-D), a batch ``[batch, samples]``, or a sequence of 1-D clips -> float64 clips."""
    if isinstance(waveforms, (list, tuple)):
        if len(waveforms) == 0:
            raise ValueError("log_mel_features got no waveforms")
        clips = [waveforms] if np.ndim(waveforms[0]) == 0 else list(waveforms)
    else:
        arr = np.asarray(waveforms)
        if arr.ndim not in (1, 2):
            raise ValueError(f"waveforms must be one 1-D mono clip or a [batch, samples] array, "
                             f"got shape {arr.shape}")
        clips = [arr] if arr.ndim == 1 else list(arr)
    out = []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip)
        if clip.ndim != 1:
            raise ValueError(f"waveform {i} has shape {clip.shape}; expected 1-D mono float audio "
                             f"(mix or pick the channels of multi-channel audio first)")
        if clip.dtype.kind != "f":
            raise ValueError(f"waveform {i} has dtype {clip.dtype}; expected float audio in "
                             f"[-1, 1] (divide integer PCM by its full scale, e.g. 32768 for int16)")
        if clip.size == 0:
            raise ValueError(f"waveform {i} is empty")
        out.append(clip.astype(np.float64))
    return out


def log_mel_features(
    waveforms: np.ndarray | Sequence[np.ndarray],
    config: AudioFeatureConfig | None = None,
    *,
    sampling_rate: int,
    truncation: str | None = None,
    padding: str | None = None,
    max_length: int | None = None,
    rng: Rng = 0,
) -> AudioFeatures:
    """HF's ``ClapFeatureExtractor.__call__`` (see the module docstring for the steps).

    Args:
        waveforms: one 1-D float clip, a ``[batch, samples]`` array, or a sequence of 1-D clips of
            any lengths.
        config: the extractor settings (default: HF's class defaults).
        sampling_rate: the waveforms' rate in Hz; must equal ``config.sampling_rate``.
        truncation, padding: override the config's modes.
        max_length: override ``config.max_samples`` (in samples), as HF's ``max_length``.
        rng: an int seed (a fresh ``np.random.RandomState``: same draws as HF after
            ``np.random.seed(seed)``), a ``RandomState`` or a ``np.random.Generator``.
    """
    config = AudioFeatureConfig() if config is None else config
    if sampling_rate != config.sampling_rate:
        raise ValueError(f"waveforms are sampled at {sampling_rate} Hz but this CLAP feature "
                         f"extractor expects {config.sampling_rate} Hz; resample the audio to "
                         f"{config.sampling_rate} Hz first")
    truncation = config.truncation if truncation is None else truncation
    padding = config.padding if padding is None else padding
    _check_mode("truncation", truncation, TRUNCATIONS)
    _check_mode("padding", padding, PADDINGS)
    max_length = config.max_samples if max_length is None else int(max_length)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.RandomState(int(rng))
    elif not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        raise TypeError(f"rng must be an int seed, a np.random.Generator or a RandomState, "
                        f"got {type(rng).__name__}")
    results = [_clip_features(w, config, max_length, truncation, padding, rng)
               for w in _as_clips(waveforms)]
    is_longer = np.array([[longer] for _, longer in results], dtype=bool)
    if truncation == "fusion" and not is_longer.any():
        is_longer[_randint(rng, len(results)), 0] = True
    shapes = sorted({mel.shape for mel, _ in results})
    if len(shapes) > 1:  # HF fails here too (its return_tensors cannot stack them)
        raise ValueError(
            f"clips gave features of shapes {shapes}: with an odd fft_window_size "
            f"({config.fft_window_size}) and hop_length dividing max_length, HF's fusion crop is "
            f"one frame longer than a padded clip's mel; use an even fft_window_size")
    return AudioFeatures(np.stack([mel for mel, _ in results]), is_longer)
