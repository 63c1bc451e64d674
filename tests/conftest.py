import jax

# Parity is checked in full fp32: no TF32/bf16 passes inside matmuls.
jax.config.update("jax_default_matmul_precision", "highest")
