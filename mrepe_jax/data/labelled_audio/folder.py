"""Labelled audio from a folder ``<root>/<split>/<class>/*.wav``: classes are the subfolders.

``folder_audio`` lists the files (directory listings only), ``FolderAudio.scan`` opens every
file's header (cheap: a few small reads per file) so that a corrupt, truncated, empty or
wrongly sampled file stops a run before any stage, and ``examples`` / ``batches`` decode the
files one by one, in an order that interleaves the classes (any prefix, ``limit``, holds every
class).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from mrepe_jax.data.concepts import class_index
from mrepe_jax.data.labelled_audio.base import LabelledAudio
from mrepe_jax.data.labelled_audio.rates import check_rate, to_rate
from mrepe_jax.data.labelled_audio.wav import WavHeader, read_header, read_wav

LAYOUT = "<root>/<split>/<class>/*.wav"


def _listing(folder: pathlib.Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:20]) + (f", ... ({len(names)} entries)" if len(names) > 20 else "") or "nothing"


def folder_classes(root: str | pathlib.Path, split: str) -> list[str]:
    """The class subfolders of ``root/<split>``, sorted. Errors name the folder looked for and
    list what its parent holds."""
    root = pathlib.Path(root).expanduser()
    split_dir = root / split
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist (laid out as {LAYOUT})")
    if not split_dir.is_dir():
        raise FileNotFoundError(f"audio folder {str(root)!r} has no split folder {split!r} (looked for "
                                f"{str(split_dir)!r}; it holds {_listing(root)})")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise ValueError(f"audio folder {str(split_dir)!r} has no class subfolders (laid out as {LAYOUT}; "
                         f"it holds {_listing(split_dir)})")
    return found


def _interleave(per_class: list[list[pathlib.Path]]) -> list[tuple[pathlib.Path, int]]:
    out = []
    for i in range(max(len(files) for files in per_class)):
        out += [(files[i], label) for label, files in enumerate(per_class) if i < len(files)]
    return out


@dataclasses.dataclass(frozen=True)
class FolderAudio(LabelledAudio):
    """The ``.wav`` files of ``root/<split>`` (``files``: ``(path, label)`` in reading order),
    read as mono float32 at ``sample_rate``. Build it with ``folder_audio``."""

    where: str
    classes: tuple[str, ...]
    sample_rate: int
    resample: bool
    files: tuple[tuple[pathlib.Path, int], ...]

    def scan(self) -> list[WavHeader]:
        """Every file's header, in reading order, without decoding audio. Raises ``ValueError``
        naming the first file that ``examples`` would fail on: unreadable or corrupt, cut short,
        no samples, or (``resample=False``) at a rate other than ``sample_rate``."""
        headers = []
        for path, _ in self.files:
            header = read_header(path)
            check_rate(header.sample_rate, self.sample_rate, self.resample, f"WAV file {str(path)!r}")
            headers.append(header)
        return headers

    def examples(self) -> Iterator[tuple[np.ndarray, int]]:
        """``(waveform float32 [n], label)`` per file: PCM scaled to [-1, 1), channels averaged,
        resampled to ``sample_rate`` (length scales by the rate ratio)."""
        for path, label in self.files:
            wave, header = read_wav(path)
            yield to_rate(wave, header.sample_rate, self.sample_rate, self.resample,
                          f"WAV file {str(path)!r}"), label


def folder_audio(root: str | pathlib.Path, split: str, classes: Sequence[str] | None = None, *,
                 sample_rate: int, resample: bool = True, limit: int | None = None) -> FolderAudio:
    """The labelled ``.wav`` files of ``root/<split>/<class>/`` (any case of ``.wav``; other
    files are ignored), read at ``sample_rate`` Hz.

    ``classes``: which subfolders, in label order (default: all, sorted); a listed class with no
    folder is an error naming it, a folder not listed is skipped. ``limit``: read only the first
    ``limit`` files of the interleaved order. ``resample=False`` refuses a file at another rate
    (``scan`` finds it up front). Only directories are listed here; see ``FolderAudio.scan``.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive rate in Hz, got {sample_rate}")
    found = folder_classes(root, split)
    split_dir = pathlib.Path(root).expanduser() / split
    where = f"audio folder {str(split_dir)!r}"
    classes = tuple(found if classes is None else classes)
    class_index(classes, found, f"{where} (its class subfolders)")
    per_class = [sorted(p for p in (split_dir / c).iterdir() if p.is_file() and p.suffix.lower() == ".wav")
                 for c in classes]
    empty = [c for c, files in zip(classes, per_class) if not files]
    if empty:
        raise ValueError(f"{where}: class folder(s) {empty} hold no .wav files")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    files = tuple(_interleave(per_class)[:limit])
    return FolderAudio(where, classes, int(sample_rate), bool(resample), files)
