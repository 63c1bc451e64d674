"""Test signals written as WAV files: sines of a given frequency, rate and PCM width."""

import wave

import numpy as np


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(round(rate * seconds))) / rate)


def write_pcm(path, x, rate: int, bits: int = 16) -> np.ndarray:
    """Write float ``x`` ``[N]`` or ``[N, C]`` as ``bits``-bit PCM with ``wave``; returns the integer
    samples ``[N, C]`` (signed, before the 8-bit offset)."""
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    full = 2 ** (bits - 1)
    q = np.clip(np.round(x * full), -full, full - 1).astype(np.int64)
    if bits == 8:
        raw = (q + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        raw = q.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = q.astype(f"<i{bits // 8}").tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(x.shape[1])
        f.setsampwidth(bits // 8)
        f.setframerate(rate)
        f.writeframes(raw)
    return q
