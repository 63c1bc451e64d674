"""Runs a bench script's ``--tiny`` smoke run (a test helper, not a test)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_tiny(name: str, timeout: int = 600) -> tuple[dict, str]:
    """``bench/<name>.py --tiny`` on the CPU in a fresh process, one device unless the script makes
    more: (its last stdout line parsed as the JSON record, its whole stdout)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--tiny"],
                         capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout
