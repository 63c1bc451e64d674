"""Reading and writing HF-format checkpoint directories: config.json + safetensors, never pickles.

Shared by every model family; the family-specific part is only its conversion table.
"""

from __future__ import annotations

import json
import os
from collections.abc import ItemsView, Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "model.bin", "pytorch_model.bin.index.json")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "*.json", "*.txt"]


def resolve(name_or_dir: str | os.PathLike, local_files_only: bool | None = None) -> Path:
    """A local checkpoint directory, or the snapshot directory of a hub id.

    A hub id needs the network (or the HF cache); offline it fails with a message naming both the
    local path and the hub id it tried.
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    looks_like_id = str(name_or_dir).count("/") <= 1 and not str(name_or_dir).startswith((".", "/", "~"))
    if not looks_like_id:
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                str(name_or_dir), allow_patterns=HUB_PATTERNS, local_files_only=local_files_only
            )
        )
    except Exception as e:  # the hub raises many types (offline, 404, auth); all mean "not here"
        raise FileNotFoundError(
            f"could not load {str(name_or_dir)!r}: no local directory {str(path.resolve())!r}, and "
            f"the hub id could not be fetched{' (offline: local_files_only)' if local_files_only else ''}"
            f" ({type(e).__name__}: {e}). Download it where you have network, e.g. "
            f"`huggingface-cli download {name_or_dir}`, and pass the directory."
        ) from e


def read_config(directory: Path) -> dict:
    f = directory / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {str(directory)!r}")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(f)!r} is not valid JSON: {e}") from e


class SafetensorsCheckpoint(Mapping):
    """A checkpoint directory's tensors as a lazy, read-only mapping ``key -> numpy array``, over
    ``model.safetensors`` or the shards named by ``model.safetensors.index.json``.

    Only the headers are read up front (keys, and that every shard exists). ``items()`` then reads
    shard after shard, one open at a time, each tensor when it is reached, so a consumer that
    converts tensors as they come (``convert.to_flax``) never holds the raw checkpoint whole.
    ``bfloat16`` tensors (which numpy lacks) come back as ``ml_dtypes.bfloat16`` arrays. Pickled
    weights are refused: unpickling runs arbitrary code.
    """

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        single, index = directory / SAFETENSORS, directory / SAFETENSORS_INDEX
        if single.is_file():
            shards = [single]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{str(index)!r} is not a safetensors index with a 'weight_map': {e}") from e
            shards = []
            for shard in dict.fromkeys(weight_map.values()):  # first-seen order, no repeats
                if not (directory / shard).is_file():
                    raise FileNotFoundError(f"shard {shard!r} named in {str(index)!r} is missing")
                shards.append(directory / shard)
        else:
            pickled = [p for p in PICKLED if (directory / p).is_file()]
            if pickled:
                raise ValueError(
                    f"{str(directory)!r} holds only pickled weights ({', '.join(pickled)}); mrepe_jax "
                    "never unpickles (it can run arbitrary code). Convert once where you trust the "
                    "file: `transformers` `model.save_pretrained(dir, safe_serialization=True)`."
                )
            raise FileNotFoundError(f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {str(directory)!r}")
        self.directory = directory
        self._shard_of: dict[str, Path] = {}
        for shard in shards:
            with safe_open(shard, framework="np") as f:
                for key in f.keys():
                    self._shard_of[key] = shard

    @property
    def shards(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(self._shard_of.values()))

    def __getitem__(self, key: str) -> np.ndarray:
        with safe_open(self._shard_of[key], framework="np") as f:
            return read_tensor(f, self._shard_of[key], key)

    def __iter__(self):
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, key) -> bool:
        return key in self._shard_of

    def items(self):
        return _ShardedItems(self)


class _ShardedItems(ItemsView):
    """``items()`` of a ``SafetensorsCheckpoint``: grouped by shard, one shard open at a time."""

    def __iter__(self):
        checkpoint = self._mapping
        for shard in checkpoint.shards:
            with safe_open(shard, framework="np") as f:
                for key in f.keys():
                    if checkpoint._shard_of.get(key) == shard:
                        yield key, read_tensor(f, shard, key)


def read_tensor(handle, shard: Path, key: str) -> np.ndarray:
    """Tensor ``key`` of an open safetensors ``handle`` (file ``shard``) as numpy, bfloat16 (which
    numpy lacks) as ml_dtypes' bfloat16."""
    try:
        return handle.get_tensor(key)
    except TypeError:  # numpy has no bfloat16: read the raw bytes as ml_dtypes' bfloat16
        if handle.get_slice(key).get_dtype() != "BF16":
            raise
        import ml_dtypes

        return _raw_tensor(shard, key).view(ml_dtypes.bfloat16)


def _raw_tensor(shard: Path, key: str) -> np.ndarray:
    """A tensor's bytes, from the safetensors layout: 8-byte header length, JSON header, data."""
    with open(shard, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(n))[key]
        start, stop = info["data_offsets"]
        f.seek(8 + n + start)
        raw = np.frombuffer(f.read(stop - start), np.uint16)
    return raw.reshape(info["shape"])


def read_state_dict(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, in memory (see
    ``SafetensorsCheckpoint`` to convert them as they are read instead)."""
    return dict(SafetensorsCheckpoint(directory).items())


def write_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, np.ndarray]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: np.array(v, order="C") for k, v in state_dict.items()}, directory / SAFETENSORS,
              metadata={"format": "pt"})
    return directory
