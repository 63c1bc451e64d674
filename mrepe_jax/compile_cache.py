"""JAX's persistent compilation cache, turned on for a run (a side effect at the edge: launchers and
benches call it, library functions never do).

A compiled program is written to the cache directory, keyed by its HLO, the compile options, the
XLA flags and the jax/jaxlib/backend versions, and the next process that compiles the same program
reads it back instead. On a GPU, JAX also keeps XLA's per-fusion autotuning results there, so a new
program whose fusions were tuned before skips their autotuning. Measured on the tiny ToyWorld
pipeline (2-core CPU, 2026-11-28): 47.0 s in a fresh process with a cold cache, 12.8 s in another
fresh process (and workdir) with the cache warm; 205 entries, 4.2 MB.

Entries never go stale (a changed program or version is a new key); the directory can be deleted
at any time. ``python -m launch.run --compile_cache=DIR`` and the benches' ``--compile_cache``
call ``enable``.
"""

from __future__ import annotations

import os
from pathlib import Path


def enable(directory: str | os.PathLike, min_compile_seconds: float = 0.0) -> Path:
    """Caches every program compiled from now on in ``directory`` (created if missing) and reads
    programs back from it: ``jax_compilation_cache_dir`` with a compile-time floor of
    ``min_compile_seconds`` (JAX's own default, 1 s, would skip the many sub-second programs of a
    run, which together are most of its compile time). Returns the resolved directory.

    Programs compiled before the call are not cached. JAX opens its cache once per process, so
    switching an enabled cache to another directory is refused rather than ignored quietly.
    """
    import jax

    path = Path(directory).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"compile cache {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write the compile cache directory {str(path)!r}: {e}") from e
    current = jax.config.jax_compilation_cache_dir
    if current and Path(current).expanduser().resolve() != path:
        raise RuntimeError(f"this process already caches compiled programs in {current!r}; JAX "
                           f"opens one cache per process, so {str(path)!r} cannot replace it")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    # Small programs too: a tiny model's programs are a few kB each.
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
