"""The FT baseline: a fresh head is the unsteered model, training steers toward the target and keeps
the other family, stacked heads equal heads trained alone, and bad inputs are clear errors."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.control.finetune import FinetuneConfig, finetune_heads, head_predictions
from mrepe_jax.models.layers import normalize
from tests.models.tiny import tiny_clip

N, D = 40, 32


@pytest.fixture(scope="module")
def setup():
    model, v, pixels, _, _ = tiny_clip()
    rng = np.random.default_rng(0)
    prompts = {"a": np.asarray(normalize(jnp.asarray(rng.normal(size=(3, 16)), jnp.float32))),
               "b": np.asarray(normalize(jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)))}
    pooled = rng.normal(size=(N, D)).astype(np.float32)
    labels = {"a": rng.integers(0, 3, N), "b": rng.integers(0, 4, N)}
    return model, v, pixels, prompts, pooled, labels


def test_a_zero_head_predicts_what_the_model_does(setup):
    model, v, pixels, prompts, _, _ = setup
    emb, acts = model.apply(v, "vision", pixels, method="encode", capture=("vision.pooled",))
    zero = {"w": np.zeros((1, D, D), np.float32), "b": np.zeros((1, D), np.float32)}
    preds = head_predictions(model, v, "vision", zero, acts["vision.pooled"], prompts)
    for f, p in prompts.items():
        np.testing.assert_array_equal(preds[f][0], np.argmax(np.asarray(normalize(emb) @ p.T), -1))


def test_training_steers_toward_the_target_and_a_head_without_rows_stays_identity(setup):
    model, v, _, prompts, pooled, labels = setup
    weights = np.stack([np.ones(N), np.zeros(N)])
    targets = [("a", 2), ("b", 1)]
    heads, losses = finetune_heads(model, v, "vision", pooled, labels, targets, weights, prompts,
                                   scale=20.0, cfg=FinetuneConfig(steps=60, learning_rate=3e-2))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_array_equal(heads["w"][1], 0.0)  # no rows, no gradient, no update
    np.testing.assert_array_equal(heads["b"][1], 0.0)
    preds = head_predictions(model, v, "vision", heads, pooled, prompts)
    before = head_predictions(model, v, "vision", jax.tree.map(np.zeros_like, heads), pooled, prompts)
    assert np.mean(preds["a"][0] == 2) >= 0.85 and np.mean(before["a"][0] == 2) < 0.5
    # The keep term holds (here: fits) the other family's labels on the rows.
    assert np.mean(preds["b"][0] == labels["b"]) > np.mean(before["b"][0] == labels["b"])


def test_stacked_heads_equal_heads_trained_alone(setup):
    model, v, _, prompts, pooled, labels = setup
    rng = np.random.default_rng(1)
    weights = (rng.random((2, N)) < 0.8).astype(np.float32)
    targets = [("a", 0), ("b", 3)]
    cfg = FinetuneConfig(steps=15)
    stacked, _ = finetune_heads(model, v, "vision", pooled, labels, targets, weights, prompts, 10.0, cfg)
    for k in range(2):
        alone, _ = finetune_heads(model, v, "vision", pooled, labels, targets[k:k + 1], weights[k:k + 1],
                                  prompts, 10.0, cfg)
        for name in ("w", "b"):
            np.testing.assert_allclose(stacked[name][k], alone[name][0], atol=1e-5)


def test_one_compiled_step_serves_other_variables_scales_and_targets(setup, caplog):
    # A step that closed over the model's variables compiled again for every tower call and world.
    model, v, _, prompts, pooled, labels = setup
    other = jax.tree.map(lambda x: x + 0.1, v)  # not a scaling: normalize() would undo that
    weights = np.ones((2, N), np.float32)
    cfg = FinetuneConfig(steps=3, learning_rate=1e-2)
    finetune_heads(model, v, "vision", pooled, labels, [("a", 0), ("b", 1)], weights, prompts, 10.0, cfg)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
        heads, _ = finetune_heads(model, other, "vision", pooled, labels, [("a", 2), ("b", 3)], weights,
                                  prompts, 7.0, cfg)
    assert not [r for r in caplog.records if "XLA compilation of jit(guarded)" in r.getMessage()]
    # ... and it trained with those: variables and scale are arguments, not baked-in constants.
    again, _ = finetune_heads(model, v, "vision", pooled, labels, [("a", 2), ("b", 3)], weights,
                              prompts, 7.0, cfg)
    assert not np.allclose(heads["w"], again["w"])
    jax.tree.map(np.asarray, (v, other))  # the caller's variables were not donated to the step


def test_bad_inputs_are_clear_errors(setup):
    model, v, _, prompts, pooled, labels = setup
    ones = np.ones((1, N))
    with pytest.raises(ValueError, match=r"unknown targets \[\('a', 3\)\]"):
        finetune_heads(model, v, "vision", pooled, labels, [("a", 3)], ones, prompts, 1.0)
    with pytest.raises(ValueError, match=r"weights must be \[K=1, N=40\], got \(2, 40\)"):
        finetune_heads(model, v, "vision", pooled, labels, [("a", 0)], np.ones((2, N)), prompts, 1.0)
    with pytest.raises(ValueError, match=r"no labels for families \['b'\]"):
        finetune_heads(model, v, "vision", pooled, {"a": labels["a"]}, [("a", 0)], ones, prompts, 1.0)
