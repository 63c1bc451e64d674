"""``from_pooled``: the tower's tail from ``pooled`` equals the full forward with the same edit."""

import jax.numpy as jnp
import numpy as np

from mrepe_jax.edits import Add
from tests.models.tiny import tiny_clip


def test_an_edit_at_pooled_through_the_tail_equals_the_full_forward():
    model, v, pixels, ids, mask = tiny_clip()
    for tower, inputs, m in (("vision", pixels, None), ("text", ids, mask)):
        _, acts = model.apply(v, tower, inputs, m, capture=(f"{tower}.pooled",), method="encode")
        pooled = acts[f"{tower}.pooled"]
        delta = jnp.asarray(np.random.default_rng(0).normal(size=pooled.shape[-1]), jnp.float32)
        edits = {f"{tower}.pooled": Add(delta, 0.7)}
        full, _ = model.apply(v, tower, inputs, m, edits=edits, method="encode")
        tail, _ = model.apply(v, tower, pooled, edits=edits, method="from_pooled")
        np.testing.assert_allclose(np.asarray(tail), np.asarray(full), atol=1e-6)
        plain, _ = model.apply(v, tower, pooled, method="from_pooled")
        assert np.abs(np.asarray(plain) - np.asarray(full)).max() > 1e-3  # the edit did something
