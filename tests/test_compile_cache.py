"""``compile_cache.enable``: a second process reads back what the first compiled, and bad
directories fail with their path. Each case runs in its own process: JAX's cache is process-wide
state that must not leak into the other tests."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mrepe_jax import compile_cache

SCRIPT = textwrap.dedent("""
    import json, sys
    from jax import monitoring
    from mrepe_jax import compile_cache

    events = []
    monitoring.register_event_listener(lambda name, **kw: events.append(name))
    path = compile_cache.enable(sys.argv[1])
    import jax, jax.numpy as jnp

    out = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(12.0).reshape(3, 4))
    try:
        compile_cache.enable(sys.argv[1] + "_other")
        refused = ""
    except RuntimeError as e:
        refused = str(e)
    print(json.dumps({"path": str(path), "out": float(out), "refused": refused,
                      "hits": events.count("/jax/compilation_cache/cache_hits")}))
""")


def _run(cache):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "nested" / "cache"
    first = _run(cache)
    assert first["path"] == str(cache.resolve()) and first["hits"] == 0
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "nothing was written to the cache"
    second = _run(cache)
    assert second["hits"] >= 1 and second["out"] == first["out"]
    assert sorted(p.name for p in cache.iterdir()) == entries  # read back, not compiled again
    # One cache per process: another directory is refused, with both paths named.
    assert str(cache.resolve()) in first["refused"] and "_other" in first["refused"]


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    file = tmp_path / "cache"
    file.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="compile cache .*cache' exists and is not a directory"):
        compile_cache.enable(file)
    assert file.read_text() == "not a directory"  # nothing lost


def test_a_directory_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot write the compile cache directory .*file/cache"):
        compile_cache.enable(tmp_path / "file" / "cache")
