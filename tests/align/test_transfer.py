"""Carrying directions through maps and steering with them."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.align.train import MapTrainConfig, train_map
from mrepe_jax.align.transfer import (
    Space,
    carry_direction,
    random_direction,
    steered_predictions,
    transfer_scores,
)
from mrepe_jax.edits import Add
from mrepe_jax.models.layers import normalize
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


def test_families_and_direction_sets_of_other_sizes_share_one_program():
    from mrepe_jax.align import transfer

    model, v, pixels, _, _ = tiny_clip()
    _, acts = model.apply(v, "vision", pixels, capture=("vision.pooled",), method="encode")
    pooled = acts["vision.pooled"]
    rng = np.random.default_rng(2)
    emb, _ = model.apply(v, "vision", pixels, method="encode")
    steer = lambda k, prompts: steered_predictions(  # noqa: E731
        model, v, "vision", pooled, 0.1 * rng.normal(size=(k, 32)).astype(np.float32), 1.0, prompts)
    # One value whose prompt every image scores below zero: a zero-padded prompt row (score 0)
    # would win unless it is masked out.
    against = -np.asarray(normalize(emb)).mean(0, keepdims=True)
    assert np.all(np.asarray(normalize(emb)) @ against.T < 0)
    np.testing.assert_array_equal(steer(5, against), 0)
    before = transfer._steered._cache_size()
    for k, v_count in ((3, 3), (7, 6), (8, 4)):
        prompts = np.asarray(normalize(jnp.asarray(rng.normal(size=(v_count, 16)), jnp.float32)))
        preds = steer(k, prompts)
        assert preds.shape == (k, 2) and preds.max() < v_count
    assert transfer._steered._cache_size() == before


def _space(name, train, test, means, num_steer):
    """A space read by a nearest-class-mean probe (per family: one value per class mean)."""
    def steer(family, deltas, alpha):
        x = test[None, :num_steer] + alpha * deltas[:, None]  # [K, n, d]
        return np.argmin(((x[..., None, :] - means[family]) ** 2).sum(-1), -1)

    return Space(name, "x.pooled", train, test, steer)


def test_transfer_scores_between_spaces_of_other_widths():
    """Source [N, 6] with one cluster per value; the target is a rotation of it into 8 dims.
    Directions carried through Procrustes read and steer as well as the target's own; random
    ones do not; "no map" exists only where the widths agree."""
    rng = np.random.default_rng(0)
    n, m, d = 240, 120, 6
    labels = {s: {"colour": rng.integers(0, 3, k), "shape": rng.integers(0, 2, k)}
              for s, k in (("train", n), ("test", m))}
    centres = {"colour": rng.normal(size=(3, d)) * 3, "shape": rng.normal(size=(2, d)) * 3}

    def source(split, k):
        return (sum(centres[f][labels[split][f]] for f in centres) + rng.normal(size=(k, d))).astype(np.float32)

    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    rot = q[:d]  # [6, 8], orthonormal rows
    src = {s: source(s, k) for s, k in (("train", n), ("test", m))}
    tgt = {s: (x @ rot).astype(np.float32) for s, x in src.items()}
    means = {f: np.stack([tgt["train"][labels["train"][f] == v].mean(0) for v in range(len(c))])
             for f, c in centres.items()}
    families = {"colour": ("r", "g", "b"), "shape": ("o", "x")}
    phis = [train_map(MapTrainConfig(kind="procrustes", seed=s), src["train"], tgt["train"],
                      source_site="x.pooled", target_site="x.pooled") for s in (0, 1)]
    a, b = _space("a", src["train"], src["test"], {}, 60), _space("b", tgt["train"], tgt["test"], means, 60)
    out = transfer_scores(a, b, {"procrustes": phis}, families, labels, [0, 1], [0.5, 2.0], 60)
    assert set(out) == {"native", "random", "procrustes"}  # widths 6 and 8: no "no map"
    assert len(out["procrustes"]["auroc"]) == 2 and len(out["native"]["auroc"]) == 1
    # One vs rest: a value's cluster can sit between the others', so even native stays below 1.
    native = out["native"]["auroc"][0]
    assert native > 0.8 and max(abs(a - native) for a in out["procrustes"]["auroc"]) < 0.01
    assert max(out["random"]["auroc"]) < native - 0.1
    strong = out["procrustes"]["success"]["2.0"]
    assert min(strong) > 0.9 and min(strong) >= out["procrustes"]["success"]["0.5"][0] - 1e-9
    assert max(out["random"]["success"]["2.0"]) < min(strong)
    same = transfer_scores(b, b, {}, families, labels, [0], [2.0], 60)
    assert set(same) == {"native", "no map", "random"}
    assert same["no map"]["auroc"] == same["native"]["auroc"]  # b's own direction, unmapped

    with pytest.raises(ValueError, match=r"needs paired reads: train 240 vs 239, test 120 vs 120 rows"):
        transfer_scores(a, dataclasses.replace(b, train=b.train[:-1]), {}, families, labels, [0], [1.0], 60)
    broken = dataclasses.replace(b, steer=lambda f, deltas, alpha: np.zeros((1, 60)))
    with pytest.raises(ValueError, match=r"b's steering probe returned shape \(1, 60\)"):
        transfer_scores(a, broken, {}, families, labels, [0], [1.0], 60)
