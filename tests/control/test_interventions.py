"""Interventions (eq 5, 7) as edit dicts on the tiny CLIP: identities at zero strength, the edit
they promise, vmapped dose-response equal to a loop, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.control.interventions import (
    attention,
    combine,
    concept_attention_mask,
    concept_bias,
    direct,
    site_scale,
)
from mrepe_jax.edits import Add
from tests.models.tiny import tiny_clip

SITE = "vision.layers.1.resid_post"
LOGITS = "vision.layers.1.attn.logits"


@pytest.fixture(scope="module")
def tiny():
    model, v, pixels, ids, mask = tiny_clip()
    clean, acts = model.apply(v, pixels, ids, mask, capture=(SITE, LOGITS, "vision.layers.1.resid_pre"))
    return model, v, pixels, ids, mask, clean, acts


def _direction(d=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=d), jnp.float32)


def _mask(acts, strength):
    keys = acts["vision.layers.1.resid_pre"]
    return concept_attention_mask(keys, keys[0, 2], tau=0.5, strength=strength)


def test_zero_strength_interventions_are_identities(tiny):
    model, v, pixels, ids, mask, clean, acts = tiny
    edits = combine(direct(SITE, _direction(), 0.0, scale=3.0), attention(LOGITS, _mask(acts, 0.0)))
    out, _ = model.apply(v, pixels, ids, mask, edits=edits)
    for key in ("image_embeds", "text_embeds"):
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(clean[key]))


def test_site_scale_is_the_mean_norm_over_the_last_axis_of_a_hand_built_array():
    # [N=2, T=2, D=4] rows with whole norms 5, 10, 3, 2 over D: mean 5. Over another axis the mean
    # differs (2.99 over N, 3.5 over T).
    reps = np.array([[[3, 4, 0, 0], [0, 0, 6, 8]],
                     [[1, 2, 2, 0], [0, 0, 0, 2]]], np.float32)
    assert site_scale(reps) == pytest.approx(5.0, rel=1e-12)
    assert site_scale(np.array([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])) == pytest.approx(16 / 3, rel=1e-12)


def test_direct_adds_alpha_times_scale_along_the_unit_direction(tiny):
    model, v, pixels, ids, mask, _, acts = tiny
    d = _direction()
    scale = site_scale(acts[SITE])
    # The expectation's scale is computed here, not by site_scale: the mean over rows and tokens of
    # sqrt(sum over D of r^2), in float64.
    reps = np.asarray(acts[SITE], np.float64)  # [B, T, D]
    want_scale = float(np.mean(np.sqrt(np.sum(reps * reps, axis=2))))
    assert reps.ndim == 3 and scale == pytest.approx(want_scale, rel=1e-9)
    _, edited = model.apply(v, pixels, ids, mask, edits=direct(SITE, 5 * d, 0.1, scale), capture=(SITE,))
    unit = np.asarray(d, np.float64) / np.sqrt(np.sum(np.asarray(d, np.float64) ** 2))
    want = reps + 0.1 * want_scale * unit
    np.testing.assert_allclose(np.asarray(edited[SITE]), np.asarray(want), atol=1e-5)
    default = direct(SITE, d, scale=scale)[SITE]  # the paper's alpha, 0.1
    assert float(default.alpha) == pytest.approx(0.1)


def test_concept_mask_boosts_exactly_the_member_keys(tiny):
    model, v, pixels, ids, mask, _, acts = tiny
    keys = acts["vision.layers.1.resid_pre"]
    proto = keys[0, 2]
    sims = np.asarray(keys @ proto / (jnp.linalg.norm(keys, axis=-1) * jnp.linalg.norm(proto)))
    member = sims > 0.5
    assert member.any() and not member.all()  # the fixture separates something
    _, edited = model.apply(v, pixels, ids, mask, edits=attention(LOGITS, _mask(acts, 4.0)),
                            capture=(LOGITS,))
    diff = np.asarray(edited[LOGITS] - acts[LOGITS])  # [B, H, Q, K]
    np.testing.assert_allclose(diff, np.broadcast_to(4.0 * member[:, None, None, :], diff.shape), atol=1e-5)


def test_an_alpha_sweep_through_vmap_equals_a_loop(tiny):
    model, v, pixels, ids, mask, _, acts = tiny
    d, scale = _direction(seed=1), site_scale(acts[SITE])
    m = _mask(acts, 1.0)

    def run(alpha):
        edits = combine(direct(SITE, d, alpha, scale), attention(LOGITS, m))
        return model.apply(v, pixels, ids, mask, edits=edits)[0]["logits_per_image"]

    alphas = jnp.linspace(-0.5, 0.5, 5)
    swept = jax.jit(jax.vmap(run))(alphas)
    for a, s in zip(alphas, swept):
        np.testing.assert_allclose(np.asarray(s), np.asarray(run(a)), atol=1e-5)
    assert float(jnp.abs(swept[0] - swept[-1]).max()) > 1e-3  # alpha matters


def test_combine_keeps_order_at_one_site():
    a, b = direct(SITE, jnp.ones(4), 1.0), direct(SITE, jnp.ones(4), 2.0)
    both = combine(a, b, {"text.pooled": Add(1.0)})
    assert isinstance(both[SITE], tuple) and [e.alpha for e in both[SITE]] == [1.0, 2.0]
    assert set(both) == {SITE, "text.pooled"}


def test_bad_interventions_are_clear_errors():
    with pytest.raises(ValueError, match="edits a representation, not attention logits"):
        direct(LOGITS, jnp.ones(4), 0.1)
    with pytest.raises(ValueError, match=r"direction must be one vector \[D\], got shape \(2, 4\)"):
        direct(SITE, jnp.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match=r"edits \*.attn.logits sites, got 'vision.layers.1.resid_post'"):
        attention(SITE, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\[B, K, D\] and a prototype \[D\], got \(2, 5, 8\) and \(7,\)"):
        concept_attention_mask(jnp.ones((2, 5, 8)), jnp.ones(7), 0.5, 1.0)
    with pytest.raises(ValueError, match=r"representations \[N, ..., D\] with N >= 1"):
        site_scale(np.zeros((0, 4)))


def test_concept_bias_marks_the_keys_near_the_positive_rows_prototype():
    """Eq 7's ``M_c`` from eq 1: keys like the positive train rows get ``unit``, the rest 0."""
    rng = np.random.default_rng(0)
    e1, e2 = np.eye(8, dtype=np.float32)[:2]
    positive = np.arange(40) < 20
    key_means = np.where(positive[:, None], e1, e2) + 0.05 * rng.normal(size=(40, 8)).astype(np.float32)
    keys = np.stack([np.stack([e1, e2, -e1, e1 + 0.1 * e2])] * 3)  # [3 inputs, 4 tokens, 8]
    bias = concept_bias(key_means, positive, keys, unit=2.5)
    assert bias.shape == (3, 4) and bias.dtype == np.float32
    np.testing.assert_array_equal(bias, np.tile([2.5, 0.0, 0.0, 2.5], (3, 1)))
    # Swapping which rows are positive moves the members to the other concept's keys.
    np.testing.assert_array_equal(concept_bias(key_means, ~positive, keys, 1.0)[0], [0, 1, 0, 0])
