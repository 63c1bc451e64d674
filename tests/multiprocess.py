"""Helpers that start local processes of the launcher, one CPU device each (a test helper, not
a test): the multi-host tests run BUILD.md's command on one machine with the coordinator on
loopback."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

from tests.xla_flags import with_compile_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
ENV["XLA_FLAGS"] = with_compile_flags()  # one device per process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a process hung") from None
        outs.append((p.returncode, out))
    return outs


LAUNCH = ["-m", "launch.run", "--config=configs/toyworld.py:tiny"]


def launch_two(workdir, *flags):
    port = free_port()
    return [start(LAUNCH + [f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
                            "--num_processes=2", f"--process_id={i}", *flags]) for i in range(2)]
