"""Sampling rates: bring a clip to the model's rate, or refuse it when resampling is off."""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """float ``[N]`` at ``rate`` Hz -> float32 ``[ceil(N * target_rate / rate)]`` at ``target_rate``.

    ``scipy.signal.resample_poly`` with ``up / down = target_rate / rate`` reduced by their gcd
    (16 kHz -> 48 kHz is 3/1, 22.05 kHz -> 48 kHz is 320/147): an exact rational rate change whose
    Kaiser-windowed FIR low-pass removes what lies above the lower of the two Nyquist frequencies.
    """
    if rate < 1 or target_rate < 1:
        raise ValueError(f"sampling rates must be positive, got {rate} Hz -> {target_rate} Hz")
    waveform = np.asarray(waveform, np.float32)
    if rate == target_rate:
        return waveform
    g = math.gcd(int(rate), int(target_rate))
    return resample_poly(waveform, target_rate // g, rate // g).astype(np.float32)


def check_rate(rate: int, target_rate: int, resample_on: bool, where: str) -> None:
    """Refuse audio at ``rate`` Hz when the model reads ``target_rate`` Hz and resampling is off."""
    if rate != target_rate and not resample_on:
        raise ValueError(f"{where} is sampled at {rate} Hz, not the {target_rate} Hz the model reads: "
                         f"resample it (resample=True) or give audio at {target_rate} Hz")


def to_rate(waveform: np.ndarray, rate: int, target_rate: int, resample_on: bool, where: str) -> np.ndarray:
    """``waveform`` at ``target_rate``: resampled when ``resample_on``, else refused (``check_rate``)
    unless already there."""
    check_rate(rate, target_rate, resample_on, where)
    return resample(waveform, rate, target_rate)
