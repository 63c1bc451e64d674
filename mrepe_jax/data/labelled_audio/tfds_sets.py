"""Labelled audio from a TFDS dataset, streamed: ``tfds_audio`` reads the builder's info (rate,
sample dtype, class names) and opens the split; ``TFDSAudio.examples`` / ``batches`` decode one
example at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mrepe_jax.data.concepts import class_index, tfds_builder
from mrepe_jax.data.labelled_audio import rates
from mrepe_jax.data.labelled_audio.base import LabelledAudio
from mrepe_jax.data.labelled_audio.wav import PCM_BITS, pcm_to_float, to_mono
from mrepe_jax.data.source_base import import_tfds


def _feature_paths(features, prefix: str = "") -> list[str]:
    out = []
    for key in features.keys():
        sub = features[key]
        out += _feature_paths(sub, f"{prefix}{key}/") if hasattr(sub, "keys") else [prefix + key]
    return out


def _feature(features, key: str, name: str):
    """The feature at ``key``; nested features are written with ``/`` (``"instrument/family"``)."""
    node = features
    for part in key.split("/"):
        if not hasattr(node, "keys") or part not in node.keys():
            raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}; its features are "
                             f"{_feature_paths(features)}")
        node = node[part]
    return node


def _value(example: Mapping[str, Any], key: str):
    for part in key.split("/"):
        example = example[part]
    return example


def _load(tfds, builder, name: str, split: str, data_dir: str | None, download: bool):
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=False)
    except Exception as e:  # tfds raises AssertionError, DatasetNotFoundError, ValueError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if download:
            hint = ("downloading or preparing it failed; offline, copy a prepared TFDS data_dir here "
                    "and pass it with download=False")
        else:
            hint = (f"it is not prepared there (looked in {builder.data_dir!r}): pass download=True "
                    "to download and prepare it (needs the network once), or point data_dir at a "
                    "folder holding it prepared")
        raise FileNotFoundError(f"could not read TFDS dataset {name!r} split {split!r} (data_dir="
                                f"{data_dir!r}, download={download}): {first}; {hint}") from e


@dataclasses.dataclass(frozen=True, eq=False)
class TFDSAudio(LabelledAudio):
    """A TFDS split's labelled audio at ``sample_rate`` (the data's own is ``source_rate``).
    Build it with ``tfds_audio``."""

    where: str
    classes: tuple[str, ...]
    sample_rate: int
    source_rate: int
    label_key: str
    audio_key: str
    pcm_bits: int | None
    limit: int | None
    index: np.ndarray = dataclasses.field(repr=False)  # dataset label -> position in classes, -1: skip
    stream: Callable[[], Iterable[Mapping[str, Any]]] = dataclasses.field(repr=False)

    def examples(self) -> Iterator[tuple[np.ndarray, int]]:
        """``(waveform float32 [n], label)`` of the first ``limit`` examples of the listed classes:
        integer PCM scaled by its full scale, channels averaged, resampled to ``sample_rate``."""
        kept = 0
        for i, ex in enumerate(self.stream()):
            raw = int(_value(ex, self.label_key))
            # -1 marks an unlabelled example in TFDS; negative indexing would give it a class.
            label = int(self.index[raw]) if 0 <= raw < len(self.index) else -1
            if label < 0:
                continue
            audio = np.asarray(_value(ex, self.audio_key))
            if audio.size == 0:
                raise ValueError(f"{self.where}: example {i} holds an empty clip")
            wave = to_mono(pcm_to_float(audio, self.pcm_bits))
            yield rates.resample(wave, self.source_rate, self.sample_rate), label
            kept += 1
            if self.limit is not None and kept >= self.limit:
                return


def tfds_audio(name: str, split: str, classes: Sequence[str] | None = None, *,
               sample_rate: int | None = None, resample: bool = True, limit: int | None = None,
               label_key: str = "label", audio_key: str = "audio", pcm_bits: int | None = None,
               data_dir: str | None = None, download: bool = True) -> TFDSAudio:
    """A TFDS audio classification split (``split`` in TFDS syntax, e.g. ``"test[:2000]"``).

    Reads the builder's info: the audio feature's ``sample_rate`` and dtype, the label feature's
    ``names`` (``label_key`` / ``audio_key`` may be nested, ``"instrument/family"``). ``classes``:
    which labels, in label order (default: all the dataset's); a name the dataset lacks is an
    error that lists its names, an unlisted label is skipped. ``sample_rate``: the rate to yield
    (default: the dataset's); another rate than the dataset's is resampled, or refused with
    ``resample=False``. ``pcm_bits``: the sample width of integer audio, needed only for int64
    (which does not say it). Opens the split (download and prepare it when ``download``); offline
    without the data, the error names the dataset, ``data_dir`` and what to pass.
    """
    tfds = import_tfds("TFDS labelled audio")
    builder = tfds_builder(tfds, name, data_dir)
    where = f"TFDS dataset {name!r} split {split!r}"
    audio_feature = _feature(builder.info.features, audio_key, name)
    label_feature = _feature(builder.info.features, label_key, name)
    if not hasattr(label_feature, "names"):
        raise ValueError(f"TFDS dataset {name!r} feature {label_key!r} is not a class label; its features "
                         f"are {_feature_paths(builder.info.features)}")
    source_rate = getattr(audio_feature, "sample_rate", None)
    if not source_rate:
        raise ValueError(f"TFDS dataset {name!r} does not give the sampling rate of its feature "
                         f"{audio_key!r} (no tfds.features.Audio sample_rate in its info)")
    dtype = np.dtype(audio_feature.np_dtype)
    if dtype.kind == "f" and pcm_bits is not None:
        raise ValueError(f"TFDS dataset {name!r} stores {dtype} audio; pcm_bits applies to integer PCM only")
    if dtype == np.int64 and pcm_bits is None:
        raise ValueError(f"TFDS dataset {name!r} stores its audio as int64, which does not say the sample "
                         f"width: pass pcm_bits (16 for 16-bit PCM)")
    if pcm_bits is not None and pcm_bits not in PCM_BITS:
        raise ValueError(f"pcm_bits must be one of {PCM_BITS}, got {pcm_bits}")
    target = int(source_rate if sample_rate is None else sample_rate)
    rates.check_rate(int(source_rate), target, resample, where)
    names = list(label_feature.names)
    classes = tuple(names if classes is None else classes)
    index = class_index(classes, names, f"TFDS dataset {name!r} ({label_key!r})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    ds = _load(tfds, builder, name, split, data_dir, download)
    return TFDSAudio(where, classes, target, int(source_rate), label_key, audio_key, pcm_bits, limit,
                     index, lambda: tfds.as_numpy(ds))
