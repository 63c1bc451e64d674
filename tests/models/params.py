"""Params pytrees compared leaf by leaf, by path (a test helper, not a test)."""

import jax
import numpy as np
from flax import traverse_util


def flat(params) -> dict:
    """``{path tuple: host array}`` of a params pytree (device or sharded arrays fetched)."""
    return traverse_util.flatten_dict(jax.device_get(params))


def assert_same_params(a, b) -> None:
    """The same paths and bit-identical leaves; a difference names its path."""
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))
