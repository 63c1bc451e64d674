import os

from tests.xla_flags import with_compile_flags

# Before jax starts its backend; subprocesses of the tests inherit it.
os.environ["XLA_FLAGS"] = with_compile_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402

# Parity is checked in full fp32: no TF32/bf16 passes inside matmuls.
jax.config.update("jax_default_matmul_precision", "highest")
