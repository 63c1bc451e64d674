"""Steered zero-shot predictions in one program, success rates and collateral damage."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.control import evaluate
from mrepe_jax.control.evaluate import collateral_accuracy, steered_predictions, success_rate
from mrepe_jax.control.interventions import direct
from mrepe_jax.models.layers import normalize
from tests.models.tiny import tiny_clip

SITE = "vision.layers.1.resid_post"


def edits_fn(p, scale):
    return direct(SITE, p["direction"], p["alpha"], scale)


def test_a_sweep_equals_single_forwards_and_alpha_zero_is_clean():
    """Seed 1's prompts and direction move both families' predictions along the sweep (asserted),
    so a sweep that ignored its interventions could not equal the per-alpha forwards."""
    model, v, pixels, _, _ = tiny_clip()
    rng = np.random.default_rng(1)
    prompts = {"a": normalize(jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)),
               "b": normalize(jnp.asarray(rng.normal(size=(4, 16)), jnp.float32))}
    d = jnp.asarray(rng.normal(size=32), jnp.float32)
    alphas = jnp.asarray([0.0, 0.5, 2.0, 8.0])
    fn = functools.partial(edits_fn, scale=3.0)
    before = evaluate._predict._cache_size()  # other tests in this process may have compiled some
    preds = steered_predictions(model, v, "vision", pixels, None, fn,
                                {"direction": jnp.stack([d] * 4), "alpha": alphas}, prompts)
    assert preds["a"].shape == (4, 2) and preds["b"].shape == (4, 2)
    for f in prompts:  # the sweep is not constant: some alpha moves some prediction off alpha 0's
        assert (preds[f][1:] != preds[f][0]).any(), (f, preds[f])
    for k, a in enumerate(alphas):
        emb, _ = model.apply(v, "vision", pixels, edits=direct(SITE, d, a, 3.0), method="encode")
        for f, p in prompts.items():
            np.testing.assert_array_equal(preds[f][k], np.argmax(np.asarray(normalize(emb) @ p.T), -1))
    clean, _ = model.apply(v, "vision", pixels, method="encode")
    np.testing.assert_array_equal(preds["a"][0], np.argmax(np.asarray(normalize(clean) @ prompts["a"].T), -1))
    assert evaluate._predict._cache_size() == before + 1
    steered_predictions(model, v, "vision", pixels, None, fn,
                        {"direction": jnp.stack([-d] * 4), "alpha": alphas + 1}, prompts)
    assert evaluate._predict._cache_size() == before + 1  # new arrays, same program


def test_success_and_collateral_equal_their_definitions():
    true = np.array([0, 1, 2, 2, 1, 0])
    pred = np.array([2, 2, 2, 1, 1, 2])
    assert success_rate(pred, true, 2) == pytest.approx(3 / 4)  # rows 0, 1, 4, 5; hits at 0, 1, 5
    preds = {"x": pred, "y": np.array([1, 1, 0, 0, 1, 1]), "z": np.array([0, 0, 0, 0, 0, 0])}
    labels = {"x": true, "y": np.array([1, 0, 0, 0, 1, 1]), "z": np.array([0, 1, 0, 1, 0, 1])}
    assert collateral_accuracy(preds, labels, "x") == pytest.approx((5 / 6 + 3 / 6) / 2)


def test_bad_evaluation_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="nothing to steer"):
        success_rate(np.array([1, 1]), np.array([1, 1]), 1)
    with pytest.raises(ValueError, match=r"no labels for \['y'\]"):
        collateral_accuracy({"x": [0], "y": [0]}, {"x": [0]}, "x")
    model, v, pixels, _, _ = tiny_clip()
    with pytest.raises(ValueError, match=r"share one leading axis \(P\), got sizes \[3, 4\]"):
        steered_predictions(model, v, "vision", pixels, None, functools.partial(edits_fn, scale=1.0),
                            {"direction": jnp.zeros((4, 32)), "alpha": jnp.zeros(3)}, {})


def test_the_text_tower_is_steered_with_its_padding_mask():
    model, v, _, ids, mask = tiny_clip()
    prompts = {"a": normalize(jnp.asarray(np.random.default_rng(1).normal(size=(3, 16)), jnp.float32))}
    d = jnp.asarray(np.random.default_rng(2).normal(size=32), jnp.float32)
    fn = functools.partial(text_edits_fn, scale=2.0)
    preds = steered_predictions(model, v, "text", ids, mask, fn,
                                {"direction": jnp.stack([d, d]), "alpha": jnp.asarray([0.0, 4.0])}, prompts)
    for k, a in enumerate((0.0, 4.0)):
        emb, _ = model.apply(v, "text", ids, mask, edits=direct("text.layers.1.resid_post", d, a, 2.0),
                             method="encode")
        np.testing.assert_array_equal(preds["a"][k], np.argmax(np.asarray(normalize(emb) @ prompts["a"].T), -1))


def text_edits_fn(p, scale):
    return direct("text.layers.1.resid_post", p["direction"], p["alpha"], scale)


def test_direct_edits_is_eq5_and_equal_instances_share_one_program():
    """Issue 30: ``DirectEdits`` builds ``direct``'s edit, and a new equal instance per call reuses
    the compiled program, where a ``functools.partial`` built per call compiles again."""
    import dataclasses

    import jax

    from mrepe_jax.models.clip import CLIPModel
    from tests.models.tiny import CONFIG

    p = {"delta": jnp.arange(32.0), "alpha": jnp.float32(0.5), "scale": jnp.float32(2.0)}
    got, want = evaluate.DirectEdits(SITE)(p)[SITE], direct(SITE, p["delta"], 0.5, 2.0)[SITE]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b)
    no_scale = evaluate.DirectEdits(SITE)({"delta": p["delta"], "alpha": p["alpha"]})[SITE]
    np.testing.assert_allclose(no_scale.delta, direct(SITE, p["delta"], 0.5)[SITE].delta)

    # A width no other test compiles for, so that the first call compiles.
    model = CLIPModel(dataclasses.replace(
        CONFIG, vision_config=dataclasses.replace(CONFIG.vision_config, intermediate_size=48)))
    _, _, pixels, ids, mask = tiny_clip()
    v = model.init(jax.random.key(1), pixels, ids, mask)
    arrays = {"delta": jnp.ones((2, 32)), "direction": jnp.ones((2, 32)), "alpha": jnp.asarray([0.0, 1.0])}
    prompts = {"a": np.eye(3, 16, dtype=np.float32)}

    def compiles(make):
        out = []
        for _ in range(3):
            before = evaluate._predict._cache_size()
            steered_predictions(model, v, "vision", pixels, None, make(), arrays, prompts)
            out.append(evaluate._predict._cache_size() - before)
        return out

    assert compiles(lambda: evaluate.DirectEdits(SITE)) == [1, 0, 0]
    assert compiles(lambda: functools.partial(edits_fn, scale=1.0)) == [1, 1, 1]
