"""Direction bundles: directions on disk with the provenance needed to trust them (DESIGN.md §6).

A bundle at ``<path>`` is two files:

- ``<path>.safetensors``: the direction arrays, bit-exact (never pickle);
- ``<path>.json``: provenance — which model (id and ``params_hash`` of its weights), site, method,
  concept, sign convention, data seed — plus the creation date, the library version and the
  sha256 of the ``.safetensors`` file, so a bundle whose arrays were swapped or truncated is
  refused at load time instead of silently steering with the wrong vector.

Both files are written to a temporary name and renamed, so an interrupted run never leaves a
half-written bundle for a resumed run (same workdir) to pick up.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import safetensors.numpy

REQUIRED_KEYS = ("model", "weights_sha256", "site", "method", "concept", "sign", "data_seed")
AUTO_KEYS = ("created", "library_version", "tensors_sha256")


def params_hash(params: Any) -> str:
    """sha256 of a parameter pytree, independent of dict insertion order and of the device.

    Leaves are visited sorted by their key path; each contributes its path, dtype, shape and its
    C-order little-endian bytes, so two pytrees hash equal exactly when every named array is equal.
    """
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the raw bytes, without a copy
    return h.hexdigest()


def _paths(path) -> tuple[pathlib.Path, pathlib.Path]:
    p = pathlib.Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def library_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("mrepe_jax")
    except Exception:  # noqa: BLE001 - a source checkout that is not pip-installed
        pyproject = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            import tomllib

            return tomllib.loads(pyproject.read_text())["project"]["version"] + "+src"
        except Exception:  # noqa: BLE001
            return "unknown"


def _file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_bundle(path, directions: Mapping[str, Any], provenance: Mapping[str, Any],
                required: Sequence[str] = REQUIRED_KEYS) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes ``<path>.safetensors`` and ``<path>.json``; returns both paths.

    ``provenance`` must hold the ``required`` keys (``REQUIRED_KEYS`` for directions, where
    ``weights_sha256`` is ``params_hash(params)``; other artefacts such as alignment maps name
    their own) and be JSON-serialisable; ``created``, ``library_version`` and ``tensors_sha256``
    are added here.
    """
    st_path, js_path = _paths(path)
    missing = [k for k in required if k not in provenance]
    if missing:
        raise ValueError(f"provenance for bundle {st_path.with_suffix('')} lacks required keys {missing}")
    if not directions:
        raise ValueError(f"bundle {st_path.with_suffix('')} has no arrays to save (no directions)")
    arrays = {str(k): np.ascontiguousarray(np.asarray(v)) for k, v in directions.items()}
    meta = dict(provenance)
    meta.setdefault("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    meta.setdefault("library_version", library_version())
    try:
        json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"provenance for bundle {st_path.with_suffix('')} is not JSON-serialisable: {e}") from None

    st_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(st_path, lambda p: safetensors.numpy.save_file(arrays, str(p)))
    meta["tensors_sha256"] = _file_sha256(st_path)
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(js_path, lambda p: p.write_text(text))
    return st_path, js_path


def load_bundle(path, required: Sequence[str] = REQUIRED_KEYS,
                kind: str = "direction bundle") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a bundle written by ``save_bundle``: ``(arrays, provenance)``, verified against the
    ``required`` provenance keys; errors call it a ``kind``."""
    st_path, js_path = _paths(path)
    for p in (st_path, js_path):
        if not p.is_file():
            raise FileNotFoundError(f"{kind} file {p} is missing")
    try:
        meta = json.loads(js_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{kind} provenance {js_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{kind} provenance {js_path} is not a JSON object")
    missing = [k for k in tuple(required) + AUTO_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{kind} provenance {js_path} lacks required keys {missing}")
    digest = _file_sha256(st_path)
    if digest != meta["tensors_sha256"]:
        raise ValueError(
            f"{kind} {st_path} does not match its provenance {js_path}: sha256 {digest} "
            f"!= recorded {meta['tensors_sha256']} (corrupt or replaced)"
        )
    try:
        directions = safetensors.numpy.load_file(str(st_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{kind} {st_path} is not a readable safetensors file: {e}") from None
    return directions, meta
