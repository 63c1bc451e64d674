"""Reading and writing HF-format checkpoint directories: config.json + safetensors, never pickles.

Shared by every model family; the family-specific part is only its conversion table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

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


def read_state_dict(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint. Pickled weights are refused:
    unpickling runs arbitrary code."""
    single, index = directory / SAFETENSORS, directory / SAFETENSORS_INDEX
    if single.is_file():
        return dict(load_file(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise FileNotFoundError(f"shard {shard!r} named in {str(index)!r} is missing")
            out.update(load_file(directory / shard))
        return out
    pickled = [p for p in PICKLED if (directory / p).is_file()]
    if pickled:
        raise ValueError(
            f"{str(directory)!r} holds only pickled weights ({', '.join(pickled)}); mrepe_jax never "
            "unpickles (it can run arbitrary code). Convert once where you trust the file: "
            "`transformers` `model.save_pretrained(dir, safe_serialization=True)`."
        )
    raise FileNotFoundError(f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {str(directory)!r}")


def write_checkpoint(directory: str | os.PathLike, config: dict, state_dict: dict[str, np.ndarray]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: np.array(v, order="C") for k, v in state_dict.items()}, directory / SAFETENSORS,
              metadata={"format": "pt"})
    return directory
