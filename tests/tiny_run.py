"""The tiny ToyWorld pipeline as the tests run it: ``run_tiny_toyworld`` (one run into a workdir)
and ``shared_run`` (one run for the whole test session, shared by pytest-xdist's workers)."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tiny_toyworld(workdir, *flags, timeout: int = 900) -> subprocess.CompletedProcess:
    """``launch.run`` on the tiny ToyWorld config into ``workdir``, as `make demo` runs the default."""
    return subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:tiny", *flags, f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def shared_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """One finished tiny run (its workdir as ``.workdir``) for every test that reads one: under
    pytest-xdist the workers share it through a file lock in the session's common temp folder, so
    `make test` runs it once, not once per test file that reads it (a run is about a minute of CPU).
    A failed run is recorded too: each reader then asserts on its return code and stderr."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny_toyworld"
    record = root / "process.json"
    with open(shared / "tiny_toyworld.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():
            root.mkdir(exist_ok=True)
            # --progress: the stage bar is asked for (stderr is a pipe here, where it is off by default).
            proc = run_tiny_toyworld(root / "w", f"--compile_cache={root / 'compile_cache'}", "--progress")
            record.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode,
                                          "stdout": proc.stdout, "stderr": proc.stderr}))
    proc = subprocess.CompletedProcess(**json.loads(record.read_text()))
    proc.workdir = root / "w"
    return proc
