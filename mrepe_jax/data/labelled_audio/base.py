"""``LabelledAudio``: what the TFDS and folder readers share, a labelled split read lazily."""

from __future__ import annotations

import abc
from collections.abc import Iterator

import numpy as np


class LabelledAudio(abc.ABC):
    """A labelled audio split, decoded one example at a time.

    Subclasses (dataclasses) have ``where`` (the data in words, for errors and reports),
    ``classes`` (label ``k`` names ``classes[k]``) and ``sample_rate`` (Hz of every waveform
    they yield).
    """

    where: str
    classes: tuple[str, ...]
    sample_rate: int

    @abc.abstractmethod
    def examples(self) -> Iterator[tuple[np.ndarray, int]]:
        """``(waveform float32 [n], label)`` pairs in a fixed order, decoded as they are read."""

    def batches(self, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        """``(waveforms, labels)``: up to ``batch_size`` mono float32 clips ``[n_i]`` (lengths may
        differ; the feature extractor pads or crops them) and their labels, int32 ``[B]``. Each call
        reads the split again from the start; only one batch is held at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return _batched(self.examples(), batch_size, self.where)


def _batched(examples: Iterator[tuple[np.ndarray, int]], batch_size: int,
             where: str) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    waves, labels, seen = [], [], 0
    for wave, label in examples:
        waves.append(wave)
        labels.append(label)
        seen += 1
        if len(waves) == batch_size:
            yield waves, np.asarray(labels, np.int32)
            waves, labels = [], []
    if waves:
        yield waves, np.asarray(labels, np.int32)
    if seen == 0:
        raise ValueError(f"{where} has no examples of the listed classes")
