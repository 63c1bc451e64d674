"""Carrying directions through maps and steering with them."""

import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.align.train import MapTrainConfig, train_map
from mrepe_jax.align.transfer import carry_direction, random_direction, steered_predictions
from mrepe_jax.edits import Add
from mrepe_jax.models.clip import normalize
from tests.models.tiny import tiny_clip


def test_a_direction_carried_through_procrustes_is_its_rotation():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    src = rng.normal(size=(80, 6)).astype(np.float32)
    phi = train_map(MapTrainConfig(kind="procrustes"), src, src @ q + 1.0, source_site="a.pooled",
                    target_site="b.pooled")
    pos, neg = src[:30] + 2.0 * np.eye(6)[1], src[30:]
    native = pos.mean(0) - neg.mean(0)
    want = native @ q / np.linalg.norm(native)
    np.testing.assert_allclose(carry_direction(phi, pos, neg, site="a.pooled"), want, atol=1e-4)
    np.testing.assert_allclose(carry_direction(None, pos, neg), native / np.linalg.norm(native), atol=1e-5)
    with pytest.raises(ValueError, match="cannot be applied at 'b.pooled'"):
        carry_direction(phi, pos, neg, site="b.pooled")


def test_random_directions_are_unit_and_seeded():
    a, b = random_direction(16, (0, 1, 2)), random_direction(16, (0, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert abs(np.linalg.norm(a) - 1) < 1e-6 and not np.allclose(a, random_direction(16, (0, 1, 3)))


def test_steered_predictions_equal_the_edited_forward():
    model, v, pixels, _, _ = tiny_clip()
    _, acts = model.apply(v, "vision", pixels, capture=("vision.pooled",), method="encode")
    pooled = acts["vision.pooled"]
    rng = np.random.default_rng(1)
    deltas = rng.normal(size=(3, pooled.shape[-1])).astype(np.float32)
    prompts = np.asarray(normalize(jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)))
    preds = steered_predictions(model, v, "vision", pooled, deltas, 2.5, prompts)
    assert preds.shape == (3, 2)
    for d, p in zip(deltas, preds):
        emb, _ = model.apply(v, "vision", pixels, edits={"vision.pooled": Add(jnp.asarray(d), 2.5)},
                             method="encode")
        np.testing.assert_array_equal(p, np.argmax(np.asarray(normalize(emb)) @ prompts.T, -1))
    with pytest.raises(ValueError, match=r"steering directions must be \[K, 32\] for vision.pooled, got \(3, 5\)"):
        steered_predictions(model, v, "vision", pooled, deltas[:, :5], 1.0, prompts)
