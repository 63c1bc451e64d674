"""Multi-process runs on one machine (DESIGN.md §7): streaming where each process reads only its
own rows; a killed process stops the others with an error instead of a hang; bad mesh and launch
settings are clear errors. That two processes reproduce one process's pipeline figures is tested
with the pipeline (tests/experiments)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from mrepe_jax import parallel
from tests.multiprocess import ENV, REPO, finish, free_port, launch_two, start


@pytest.mark.slow
def test_streaming_reads_only_each_processes_rows(tmp_path):
    """Slow (~25 s): ``make test-slow``. The two-process pipeline test covers even shards; this one
    gives the processes different numbers and sizes of batches."""
    def run(n):
        port, out = free_port(), tmp_path / f"stream{n}.json"
        outs = finish([start(["-m", "tests.multiprocess_stream", str(i), str(n), str(port), str(out)])
                       for i in range(n)])
        for rc, text in outs:
            assert rc == 0, text[-3000:]
        return json.loads(out.read_text()), [json.loads(t.strip().splitlines()[-1]) for _, t in outs]

    one, _ = run(1)
    two, procs = run(2)
    assert two["processes"] == 2 and [p["rows"] for p in procs] == [30, 15]
    assert all(p["collected"] == p["rows"] and p["labels_aligned"] for p in procs)
    np.testing.assert_allclose(two["proj"], one["proj"], atol=1e-6)  # every row, in order
    for site, s in one["stats"].items():
        assert two["stats"][site]["count"] == s["count"]
        for field in ("mean", "m2"):
            a, b = np.asarray(s[field]), np.asarray(two["stats"][site][field])
            assert np.abs(a - b).max() <= 1e-6 * max(1.0, np.abs(a).max()), (site, field)


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path):
    """Slow (about a minute on 2 cores): ``make test-slow``."""
    flags = ("--config.train.num_steps=400", "--config.train.checkpoint_every=2",
             "--heartbeat_timeout_seconds=5")
    procs = launch_two(tmp_path / "w", *flags)
    first = tmp_path / "w" / "checkpoints" / "toyclip" / "2"
    deadline = time.monotonic() + 240
    while not first.exists() and procs[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists(), "training never reached its first checkpoint"
    procs[1].kill()  # SIGKILL mid-training: no cleanup, no goodbye
    survivor, killed = finish(procs, timeout=180)
    assert killed[0] != 0 and survivor[0] != 0
    assert ("another process has most likely died" in survivor[1]
            or "another task died" in survivor[1]), survivor[1][-3000:]
    # Relaunched, both processes restore the collectively written checkpoint and go on from it.
    saved = sorted(int(p.name) for p in first.parent.iterdir() if p.name.isdigit())
    procs = launch_two(tmp_path / "w", *flags[:2])
    for rc, out in finish(procs, timeout=600):
        assert rc == 0, out[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["training"]["resumed_from_step"] == saved[-1] > 0
    assert results["training"]["steps"] == 400


def test_bad_mesh_and_launch_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown axis 'dta'; axes are named from \('data', 'model'\)"):
        parallel.mesh_from_config(ml_collections.ConfigDict({"shape": None, "axes": ("dta",)}))
    with pytest.raises(ValueError, match="no 'data' axis"):
        parallel.mesh_from_config(ml_collections.ConfigDict({"shape": (1,), "axes": ("model",)}))
    with pytest.raises(ValueError, match=r"missing \['coordinator_address', 'process_id'\]"):
        parallel.initialize_distributed(num_processes=2)
    with pytest.raises(ValueError, match=r"process_id 2 is not in \[0, num_processes=2\)"):
        parallel.initialize_distributed("127.0.0.1:1", 2, 2)
    proc = subprocess.run([sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:tiny",
                           "--workdir=/tmp/unused", "--num_processes=2"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "missing ['coordinator_address', 'process_id']" in proc.stderr
