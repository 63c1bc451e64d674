"""The labelled side of a dual-encoder experiment: what a CLIP-like model's non-text tower reads
(images for CLIP, audio for CLAP), where the labelled examples come from, and the words a report
uses for them. The stages (``pipeline``) and the data checks (``data``) are written against this
and ``checkpoint.Checkpoint`` only, so CLIP and CLAP run one pipeline."""

from __future__ import annotations

import abc
import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Modality(abc.ABC):
    """One labelled modality's reading and naming.

    ``tower``: the model's tower (``"vision"``, ``"audio"``); ``input_key``: its input in a batch
    dict; ``section``: the config section holding its data settings (``images``, ``audio``);
    ``noun`` / ``plural``: one example in words; ``pair``: Table 2's row (``Text-Image``);
    ``readout``: what the tower's readout pools, for the report (``CLS``)."""

    tower: str
    input_key: str
    section: str
    noun: str
    plural: str
    pair: str
    readout: str

    @abc.abstractmethod
    def batches(self, cfg, split: str, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        """``(raw examples, labels [B])`` of ``split``'s first ``cfg.num[split]`` examples.
        A TFDS source opens its split when called (so a missing dataset fails there)."""

    @abc.abstractmethod
    def folder_classes(self, cfg) -> list[str]:
        """The class subfolders of a folder source's train split."""

    @abc.abstractmethod
    def folder_files(self, cfg, split: str) -> list[tuple[pathlib.Path, int]]:
        """``(path, label)`` of the files a folder run reads from ``split``, in reading order."""

    @abc.abstractmethod
    def check_file(self, cfg, path: pathlib.Path) -> None:
        """Raises ``ValueError`` naming ``path`` when the run could not read it."""

    def prompt_names(self, classes: Sequence[str]) -> list[str]:
        """The class names as prompts write them (a dataset's ``_silence_`` reads ``silence``)."""
        return list(classes)
