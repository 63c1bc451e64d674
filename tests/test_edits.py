"""The edit contract (DESIGN.md §3): identities, ordering, where masks, vmap, no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.edits import Ablate, Add, AttnBias, Project, Replace, along, axis_mask, head_mask, token_mask
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
    with pytest.raises(ValueError, match=r"Add.delta of shape \(7,\) does not fit the activation at "
                                         r"site 'vision.layers.1.resid_pre' of shape \(2, 5, 32\)"):
        run(clip, {SITE: Add(jnp.ones(7))})
    with pytest.raises(ValueError, match="AttnBias is an attention-logit edit"):
        run(clip, {SITE: AttnBias(jnp.zeros(5))})
    with pytest.raises(TypeError, match="expected one of"):
        run(clip, {SITE: jnp.ones(32)})
    with pytest.raises(ValueError, match="does not fit the activation"):
        run(clip, {SITE: Project(jnp.ones(3))})


# ---- item 5 of issue 7: masks and directions name the axes they mean ----

HEAD_SITE = "vision.layers.0.attn.z"  # [batch, token, head, feature]


def test_token_mask_on_a_head_site_selects_tokens_even_when_tokens_equal_heads():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)  # T == H == 4
    got = np.asarray(Ablate(0.0, token_mask(4, 1))(x, HEAD_SITE))
    want = np.array(x)
    want[:, 1] = 0.0  # token 1, every head; a [T, 1] mask used to zero head 1 instead
    np.testing.assert_array_equal(got, want)
    both = np.asarray(Ablate(0.0, token_mask(4, 1) & head_mask(4, 2))(x, HEAD_SITE))
    want = np.array(x)
    want[:, 1, 2] = 0.0
    np.testing.assert_array_equal(both, want)


def test_token_mask_on_a_head_site_with_other_sizes_is_not_a_raw_broadcast_error():
    x = jnp.ones((2, 5, 4, 8))
    got = np.asarray(Ablate(0.0, token_mask(5, [0, 3]))(x, HEAD_SITE))
    assert np.all(got[:, [0, 3]] == 0) and np.all(got[:, [1, 2, 4]] == 1)


def test_rank_deficient_raw_masks_are_refused_as_ambiguous():
    x = jnp.ones((2, 4, 4, 8))
    with pytest.raises(ValueError, match=r"where of shape \(4, 1\) is ambiguous at site "
                                         r"'vision.layers.0.attn.z' of shape \(2, 4, 4, 8\).*along"):
        Ablate(0.0, np.ones((4, 1), bool))(x, HEAD_SITE)


def test_masks_naming_an_axis_the_site_lacks_are_refused():
    with pytest.raises(ValueError, match=r"names axes \('head',\).*site 'vision.layers.1.resid_pre' "
                                         r"has axes \('batch', 'token', 'feature'\); no axis 'head'"):
        Ablate(0.0, head_mask(4, 1))(jnp.ones((2, 5, 32)), SITE)
    with pytest.raises(ValueError, match=r"where of shape \(6,\) does not fit"):
        Ablate(0.0, token_mask(6, 1))(jnp.ones((2, 5, 32)), SITE)
    with pytest.raises(ValueError, match="token index \\[7\\] out of range for 5"):
        token_mask(5, 7)


def test_non_boolean_where_is_refused():
    with pytest.raises(ValueError, match="must be a boolean mask, got dtype float32"):
        Add(jnp.ones(32), 1.0, jnp.ones((1, 5, 1), jnp.float32))(jnp.ones((2, 5, 32)), SITE)


def test_per_example_project_pairs_directions_with_examples_not_tokens():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 3, 6)), jnp.float32)  # B == T
    d = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
    with pytest.raises(ValueError, match=r"Project.direction of shape \(3, 6\) is ambiguous"):
        Project(d)(x, SITE)
    got = np.asarray(Project(along(d, "batch", "feature"))(x, SITE))
    u = np.asarray(d) / np.linalg.norm(d, axis=-1, keepdims=True)
    for b in range(3):
        np.testing.assert_allclose(got[b] @ u[b], 0.0, atol=1e-5)  # every token of example b
        want = np.asarray(x[b]) - np.outer(np.asarray(x[b]) @ u[b], u[b])
        np.testing.assert_allclose(got[b], want, atol=1e-5)
    with pytest.raises(ValueError, match="does not span the feature axis"):
        Project(along(d[:, 0], "batch"))(x, SITE)


# ---- item 6: an edit never changes the activation's shape ----


@pytest.mark.parametrize("edit", [
    Add(jnp.ones((3, 1, 1, 32))),
    Replace(jnp.ones((3, 2, 5, 32))),
    Ablate(jnp.ones((1, 1, 1, 32))),
    Add(jnp.ones(32), 1.0, jnp.ones((3, 1, 5, 1), bool)),
    Add(jnp.ones(32), jnp.ones((4, 1, 1))),
])
def test_operands_that_would_grow_the_activation_are_refused(edit):
    with pytest.raises(ValueError, match=r"site 'vision.layers.1.resid_pre'"):
        edit(jnp.ones((2, 5, 32)), SITE)


def test_grown_edit_through_the_model_fails_at_the_site(clip):
    with pytest.raises(ValueError, match=r"Add.delta of shape \(3, 1, 1, 32\) has more axes than "
                                         r"the activation at site 'vision.layers.1.resid_pre'"):
        run(clip, {SITE: Add(jnp.ones((3, 1, 1, 32)))})


def test_edits_keep_the_activation_dtype():
    x = jnp.ones((2, 5, 32), jnp.bfloat16)
    for edit in (Add(jnp.ones(32, jnp.float32), jnp.float32(0.5)), Replace(jnp.zeros((2, 5, 32))),
                 Project(jnp.ones(32)), Ablate(along(jnp.ones(5), "token"))):
        y = edit(x, SITE)
        assert y.shape == x.shape and y.dtype == jnp.bfloat16, type(edit).__name__


def test_named_operands_vmap_and_broadcast_per_token():
    x = jnp.zeros((2, 5, 32))
    per_token = along(jnp.arange(5.0), "token")
    np.testing.assert_array_equal(Add(jnp.ones(32), per_token)(x, SITE)[1, :, 0], np.arange(5.0))
    masks = jnp.stack([token_mask(5, i).value for i in range(5)])
    out = jax.vmap(lambda m: Add(jnp.ones(32), 1.0, along(m, "token"))(x, SITE))(masks)
    np.testing.assert_array_equal(np.asarray(out).sum(-1)[:, 0], 32 * np.eye(5))
    assert axis_mask("key", 5, 4).axes == ("key",)


# ---- item 7: a NaN edit is an error, not NaN outputs ----


def test_non_finite_edits_are_refused_but_minus_inf_attention_bias_is_allowed(clip):
    bad = jnp.ones(32).at[3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"Add.delta at site 'vision.layers.1.resid_pre' holds a "
                                         r"non-finite value \(nan\) at index \(3,\)"):
        run(clip, {SITE: Add(bad)})
    with pytest.raises(ValueError, match=r"Add.alpha .* non-finite value \(inf\)"):
        run(clip, {SITE: Add(jnp.ones(32), jnp.inf)})
    with pytest.raises(ValueError, match=r"AttnBias.mask .* \(inf\).*only -inf"):
        run(clip, {"vision.layers.0.attn.logits": AttnBias(jnp.zeros(5).at[0].set(jnp.inf))})
    out, _ = run(clip, {"vision.layers.0.attn.logits": AttnBias(jnp.zeros(5).at[0].set(-jnp.inf))})
    assert np.all(np.isfinite(out["image_embeds"]))


def test_attn_bias_is_added_before_the_scaling():
    """Eq 7 as the paper writes it: softmax((Q K^T + M_c) / sqrt(d_k)), recomputed from the
    captured q and k (a bias added after the scaling gives another pattern)."""
    model, v, pixels, ids, mask = tiny_clip()
    pre = "vision.layers.0.attn"
    bias = jnp.asarray([0.0, 3.0, -2.0, 1.0, 0.5])
    _, acts = model.apply(v, pixels, ids, mask, edits={f"{pre}.logits": AttnBias(bias)},
                          capture=(f"{pre}.q", f"{pre}.k", f"{pre}.pattern"))
    q, k = (np.asarray(acts[f"{pre}.{p}"], np.float64) for p in "qk")
    scores = (np.einsum("bqhd,bkhd->bhqk", q, k) + np.asarray(bias)) / np.sqrt(q.shape[-1])
    want = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(acts[f"{pre}.pattern"], want / want.sum(-1, keepdims=True), atol=1e-5)
