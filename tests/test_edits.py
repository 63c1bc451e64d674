"""The edit contract (DESIGN.md §3): identities, ordering, where masks, vmap, no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.edits import Ablate, Add, AttnBias, Project, Replace, head_mask, token_mask
from tests.models.tiny import tiny_clip

SITE = "vision.layers.1.resid_pre"


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def run(clip, edits=None, capture=()):
    model, v, pixels, ids, mask = clip
    return model.apply(v, pixels, ids, mask, edits=edits, capture=capture)


def test_add_alpha_zero_and_replace_clean_are_identities(clip):
    clean, acts = run(clip, capture=(SITE,))
    delta = jax.random.normal(jax.random.key(1), (32,))
    for edit in (Add(delta, alpha=0.0), Replace(acts[SITE])):
        out, _ = run(clip, {SITE: edit})
        chex.assert_trees_all_close(out, clean, atol=0, rtol=0)


def test_add_changes_outputs_and_only_downstream(clip):
    clean, acts = run(clip, capture=("vision.layers.*.resid_pre",))
    # not a constant vector: LayerNorm would remove a uniform shift
    delta = jax.random.normal(jax.random.key(4), (32,))
    out, acts2 = run(clip, {SITE: Add(delta, alpha=0.5)}, capture=("vision.layers.*.resid_pre",))
    np.testing.assert_array_equal(acts2["vision.layers.0.resid_pre"], acts["vision.layers.0.resid_pre"])
    np.testing.assert_allclose(acts2[SITE], acts[SITE] + 0.5 * delta, atol=1e-6)
    assert not np.allclose(out["image_embeds"], clean["image_embeds"])
    np.testing.assert_array_equal(out["text_embeds"], clean["text_embeds"])


def test_where_selects_tokens_and_edits_apply_in_order(clip):
    _, acts = run(clip, capture=(SITE,))
    x = acts[SITE]
    where = token_mask(x.shape[1], [0, 2])
    _, got = run(clip, {SITE: (Add(jnp.ones(32), 2.0, where), Ablate(0.0, token_mask(x.shape[1], 2)))},
                 capture=(SITE,))
    want = np.array(x)
    want[:, 0] += 2.0
    want[:, 2] = 0.0
    np.testing.assert_allclose(got[SITE], want, atol=1e-6)


def test_project_erases_direction(clip):
    d = jax.random.normal(jax.random.key(2), (32,))
    _, acts = run(clip, {SITE: Project(d)}, capture=(SITE,))
    np.testing.assert_allclose(acts[SITE] @ (d / jnp.linalg.norm(d)), 0.0, atol=1e-5)


def test_head_where_on_attn_z(clip):
    site = "vision.layers.0.attn.z"
    _, acts = run(clip, capture=(site,))
    _, got = run(clip, {site: Ablate(0.0, head_mask(4, 1))}, capture=(site,))
    assert np.all(np.asarray(got[site])[:, :, 1] == 0)
    np.testing.assert_array_equal(np.asarray(got[site])[:, :, [0, 2, 3]],
                                  np.asarray(acts[site])[:, :, [0, 2, 3]])


def test_vmap_over_ten_edits_equals_ten_applies(clip):
    model, v, pixels, ids, mask = clip
    deltas = jax.random.normal(jax.random.key(3), (10, 32))
    alphas = jnp.linspace(-1.0, 1.0, 10)

    def one(d, a):
        return model.apply(v, pixels, ids, mask, edits={SITE: Add(d, a)})[0]["logits_per_image"]

    batched = jax.jit(jax.vmap(one))(deltas, alphas)
    for i in range(10):
        np.testing.assert_allclose(batched[i], one(deltas[i], alphas[i]), atol=1e-5)


def test_attn_bias_zero_is_identity_and_neg_inf_removes_key(clip):
    site = "vision.layers.0.attn.logits"
    pattern = "vision.layers.0.attn.pattern"
    clean, acts = run(clip, capture=(pattern,))
    out, _ = run(clip, {site: AttnBias(jnp.zeros((1, 1, 1, 5)))})
    chex.assert_trees_all_close(out, clean, atol=0, rtol=0)
    key = 3
    bias = jnp.zeros((5,)).at[key].set(-jnp.inf)
    _, got = run(clip, {site: AttnBias(bias)}, capture=(pattern,))
    p = np.asarray(got[pattern])
    assert np.all(p[..., key] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    # the remaining keys keep their relative weights
    clean_p = np.delete(np.asarray(acts[pattern]), key, -1)
    np.testing.assert_allclose(np.delete(p, key, -1), clean_p / clean_p.sum(-1, keepdims=True), atol=1e-6)


def test_changing_edit_values_does_not_retrace(clip):
    model, v, pixels, ids, mask = clip

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(delta, alpha):
        return model.apply(v, pixels, ids, mask, edits={SITE: Add(delta, alpha)})[0]["image_embeds"]

    for i in range(3):
        f(jnp.full((32,), float(i)), jnp.float32(0.1 * i))
    chex.clear_trace_counter()


def test_bad_edits_give_clear_errors(clip):
    with pytest.raises(ValueError, match=r"Add.delta of shape \(7,\) does not broadcast .* "
                                         r"'vision.layers.1.resid_pre' of shape \(2, 5, 32\)"):
        run(clip, {SITE: Add(jnp.ones(7))})
    with pytest.raises(ValueError, match="AttnBias is an attention-logit edit"):
        run(clip, {SITE: AttnBias(jnp.zeros(5))})
    with pytest.raises(TypeError, match="expected one of"):
        run(clip, {SITE: jnp.ones(32)})
    with pytest.raises(ValueError, match="does not match the feature axis"):
        run(clip, {SITE: Project(jnp.ones(3))})
