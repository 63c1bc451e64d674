import jax

# Parity is checked in full fp32: no TF32/bf16 passes inside matmuls.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(items):
    """Files marked ``heavy`` (a minute or more: a subprocess pipeline, an 8-device run) run first.
    ``make test`` hands whole files to 2 xdist workers in collection order; a heavy file collected
    last would run alone at the end while the other worker idles (longest jobs first)."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: order kept
