"""The workdir contract (DESIGN.md §6): everything a run produced lives under one directory."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import jax
import numpy as np

from mrepe_jax import parallel

#: The file that says which run a workdir belongs to (``claim``).
RUN_FILE = "run.json"


def prepare(workdir: str | os.PathLike) -> Path:
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create workdir {str(path)!r}: {e}") from e
    return path


class WorkdirError(ValueError):
    """A workdir that belongs to another run; nothing was written to it."""


def claim(workdir: str | os.PathLike, manifest: dict) -> Path:
    """The workdir of the run ``manifest`` describes (JSON data: config, model, data), checked
    before the run writes anything, so that a workdir never mixes two runs' files.

    New, empty, or holding only a ``run.json`` (a run that stopped before writing): claimed, with
    the manifest in ``run.json``. Holding a ``run.json`` of the same run: reused (a rerun resumes).
    Another run's outputs, or files and no ``run.json``: a ``WorkdirError`` naming what differs,
    and the workdir is left as it was."""
    path = Path(workdir)
    manifest = _plain(manifest)
    record = path / RUN_FILE
    if record.is_file() and any(p.name != RUN_FILE for p in path.iterdir()):
        changed = _differences(read_json(record), manifest)
        if changed:
            shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changed[:6])
            more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
            raise WorkdirError(
                f"workdir {str(path)!r} holds a run with other settings ({shown}{more}); nothing "
                "was written to it. Pass another --workdir, or delete this one to start afresh")
        return path
    if path.is_dir() and any(p.name != RUN_FILE for p in path.iterdir()):
        held = sorted(p.name for p in path.iterdir())
        raise WorkdirError(
            f"workdir {str(path)!r} already holds files ({', '.join(held[:5])}"
            f"{', ...' if len(held) > 5 else ''}) but no {RUN_FILE} saying which run made them; "
            "nothing was written to it. Pass another --workdir")
    prepare(path)
    write_json(record, manifest)
    return path


def _differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, old, new)`` of every leaf that differs, in key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return x


def write_json(path: Path, data: dict) -> None:
    # Write-then-rename so an interrupted run never leaves a truncated results.json behind.
    if not parallel.is_primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path`` (parents created), write-then-rename, on process 0 only."""
    if not parallel.is_primary():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def machine() -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
    }


def read_json(path: Path) -> dict:
    """The JSON at ``path``, or ``{}`` when there is none yet."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); move it away to start afresh") from e
