"""``FolderSource``: image-caption(-audio) examples from a local folder.

Layout::

    root/
      captions.jsonl      one JSON object per line:
                          {"image": "imgs/0.png", "caption": "...",
                           "audio": "wav/0.wav",              (optional)
                           "labels": {"colour": "red", ...},  (optional; names or indices)
                           "split": "train"}                  (optional)
      imgs/0.png ...      any format PIL reads
      wav/0.wav ...       PCM or float WAV at the configured sample rate (channels averaged)

Paths are relative to ``root``. Records without ``"split"`` belong to every split. ``audio`` and
``labels`` must be on every record or on none, so that batches have fixed keys. The index file
and the existence of every referenced file are checked when the source is built; images and
audio are decoded when a batch is read. Every error names the offending path (and line).
"""

from __future__ import annotations

import json
import pathlib
import wave
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image

from mrepe_jax.data import labelled_audio
from mrepe_jax.data.source_base import (
    Batch,
    DataSource,
    TokenizeFn,
    check_nonempty,
    chunk_order,
    epoch_orders,
    read_rgb,
    resize_square,
)
from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES

CAPTIONS_FILE = "captions.jsonl"


def read_wav(path: str | pathlib.Path, sample_rate: int) -> np.ndarray:
    """A WAV file (PCM or float, any channel count: ``labelled_audio.read_wav``) as mono float32
    [N] in [-1, 1); a file at another rate than ``sample_rate`` is refused (resample it first)."""
    waveform, header = labelled_audio.read_wav(path)
    labelled_audio.check_rate(header.sample_rate, sample_rate, False, f"WAV file {path}")
    return waveform


def write_wav(path: str | pathlib.Path, waveform: np.ndarray, sample_rate: int) -> None:
    """Write a float waveform [N] in [-1, 1] as 16-bit PCM mono (the inverse of ``read_wav``)."""
    pcm = np.clip(np.round(np.asarray(waveform, np.float64) * 32768.0), -32768, 32767)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.astype("<i2").tobytes())


class FolderSource(DataSource):
    """Examples listed in ``root/captions.jsonl`` (see the module docstring for the layout)."""

    def __init__(self, root: str | pathlib.Path, *, image_size: int = 32,
                 sample_rate: int = 8000, audio_samples: int | None = None,
                 tokenize: TokenizeFn | None = None,
                 families: Mapping[str, tuple[str, ...]] = CONCEPT_FAMILIES):
        self.root = pathlib.Path(root)
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.audio_samples = audio_samples
        self.tokenize = tokenize
        self.families = families
        if not self.root.exists():
            raise FileNotFoundError(f"FolderSource root {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"FolderSource root {self.root} is not a directory")
        self.index_path = self.root / CAPTIONS_FILE
        if not self.index_path.is_file():
            raise FileNotFoundError(
                f"FolderSource: no {CAPTIONS_FILE} in {self.root} (looked for {self.index_path}); "
                f"it must hold one JSON object per line with 'image' and 'caption' keys")
        self.records = self._read_index()
        self.has_audio = self._all_or_none("audio")
        self.has_labels = self._all_or_none("labels")

    # ---- index ----

    def _where(self, lineno: int) -> str:
        return f"{self.index_path}:{lineno}"

    def _read_index(self) -> list[dict[str, Any]]:
        records = []
        with open(self.index_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self._where(lineno)}: malformed JSON ({e.msg} at column "
                                     f"{e.colno})") from e
                records.append(self._check_record(rec, lineno))
        check_nonempty(len(records), f"{self.index_path}")
        return records

    def _check_record(self, rec: Any, lineno: int) -> dict[str, Any]:
        where = self._where(lineno)
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for key in ("image", "caption"):
            if not isinstance(rec.get(key), str):
                raise ValueError(f"{where}: missing or non-string {key!r} (keys: {sorted(rec)})")
        out = {"line": lineno, "caption": rec["caption"], "split": rec.get("split")}
        for key in ("image", "audio"):
            if key in rec:
                path = self.root / rec[key]
                if not path.is_file():
                    raise FileNotFoundError(f"{where}: {key} file {path} does not exist")
                out[key] = path
        if "labels" in rec:
            out["labels"] = self._check_labels(rec["labels"], where)
        return out

    def _check_labels(self, labels: Any, where: str) -> dict[str, int]:
        if not isinstance(labels, dict):
            raise ValueError(f"{where}: 'labels' must be an object, got {type(labels).__name__}")
        out = {}
        for family, value in labels.items():
            if family not in self.families:
                raise ValueError(f"{where}: unknown label family {family!r}; known: "
                                 f"{tuple(self.families)}")
            values = self.families[family]
            if isinstance(value, str) and value in values:
                out[family] = values.index(value)
            elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(values):
                out[family] = value
            else:
                raise ValueError(f"{where}: label {family}={value!r} is not one of {values} "
                                 f"or an index into them")
        return out

    def _all_or_none(self, key: str) -> bool:
        have = [key in r for r in self.records]
        if any(have) and not all(have):
            line = self.records[have.index(False)]["line"]
            raise ValueError(f"{self._where(line)}: has no {key!r} but other records do; give "
                             f"{key!r} on every record or on none")
        if key == "labels" and all(have):
            keys = {tuple(sorted(r["labels"])) for r in self.records}
            if len(keys) > 1:
                raise ValueError(f"{self.index_path}: records label different families {keys}")
        return all(have)

    # ---- reading ----

    def split_records(self, split: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["split"] in (None, split)]

    def _audio(self, records: list[dict[str, Any]]) -> np.ndarray:
        clips = [read_wav(r["audio"], self.sample_rate) for r in records]
        if self.audio_samples is None:
            lengths = [len(c) for c in clips]
            if len(set(lengths)) > 1:
                j = next(i for i, n in enumerate(lengths) if n != lengths[0])
                raise ValueError(f"WAV files differ in length ({records[0]['audio']}: "
                                 f"{lengths[0]}, {records[j]['audio']}: {lengths[j]} samples); "
                                 f"pass audio_samples=N to pad/trim them")
            return np.stack(clips)
        out = np.zeros((len(clips), self.audio_samples), np.float32)
        for row, clip in enumerate(clips):
            n = min(len(clip), self.audio_samples)
            out[row, :n] = clip[:n]
        return out

    def _batch(self, records: list[dict[str, Any]], index: np.ndarray) -> Batch:
        captions = [r["caption"] for r in records]
        out: Batch = {
            "image": np.stack([resize_square(read_rgb(r["image"]), self.image_size) for r in records]),
            "caption": captions,
            "index": np.asarray(index, np.int64),
        }
        if self.tokenize is not None:
            out["input_ids"], out["attention_mask"] = self.tokenize(captions)
        if self.has_audio:
            out["audio"] = self._audio(records)
        if self.has_labels:
            out["labels"] = {f: np.asarray([r["labels"][f] for r in records], np.int32)
                             for f in records[0]["labels"]}
        return out

    def batches(self, batch_size: int, *, split: str = "train", epochs: int | None = 1,
                seed: int = 0, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        records = self.split_records(split)
        check_nonempty(len(records), f"{self.index_path} split {split!r}")
        if drop_remainder and len(records) < batch_size:
            raise ValueError(f"{self.index_path} split {split!r} has {len(records)} examples < "
                             f"batch_size {batch_size} with drop_remainder=True")
        for order in epoch_orders(len(records), epochs=epochs, seed=seed, shuffle=shuffle):
            for idx in chunk_order(order, batch_size, drop_remainder):
                yield self._batch([records[i] for i in idx], idx)


def export_toyworld(world, root: str | pathlib.Path, indices, split: str = "train") -> pathlib.Path:
    """Write ToyWorld samples as a FolderSource folder (PNG, 16-bit WAV, captions.jsonl).

    Overwrites ``root/captions.jsonl``; images and audio are quantised to 8 and 16 bits.
    """
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    batch = world.batch(indices, split)
    with open(root / CAPTIONS_FILE, "w", encoding="utf-8") as f:
        for row, index in enumerate(batch["index"]):
            name = f"{split}_{int(index):07d}"
            pixels = np.round(batch["image"][row] * 255.0).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{name}.png")
            write_wav(root / "audio" / f"{name}.wav", batch["audio"][row], world.config.sample_rate)
            labels = {fam: world.families[fam][int(v[row])] for fam, v in batch["labels"].items()}
            f.write(json.dumps({"image": f"images/{name}.png", "caption": batch["caption"][row],
                                "audio": f"audio/{name}.wav", "labels": labels,
                                "split": split}) + "\n")
    return root
