import os
import subprocess

import pytest

from tests.tiny_run import shared_run
from tests.xla_flags import with_compile_flags

# Before jax starts its backend; subprocesses of the tests inherit it.
os.environ["XLA_FLAGS"] = with_compile_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402

# Parity is checked in full fp32: no TF32/bf16 passes inside matmuls.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_toyworld(tmp_path_factory) -> subprocess.CompletedProcess:
    """One finished run of the tiny pipeline (its workdir as ``.workdir``), shared by every test
    that reads one, across pytest-xdist's workers too (``tests.tiny_run.shared_run``)."""
    return shared_run(tmp_path_factory)
