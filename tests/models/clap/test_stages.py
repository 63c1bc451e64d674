"""The shared stages on CLAP's towers: eq 2's exact and attribution patching through the audio
tower's blocks (one stage at a time: the stages differ in tokens and width) and the text tower
(stacked for one sweep program), identification's candidate sites, and the readout of a tower
that pools the mean of its tokens (what AP writes and what its class means average)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.edits import Add, Replace, along
from mrepe_jax.models.clap import from_torch_model
from mrepe_jax.reading import causal
from mrepe_jax.stages import identification, reads, steering
from tests.models.clap.hf_tiny import random_inputs, tiny_hf_clap

NAME = "unfused"  # depths (1, 2): stage 0 is block 0 (144 tokens), stage 1 blocks 1-2 (36 tokens)
W = np.linspace(-1.0, 1.0, 8).astype(np.float32)


@functools.cache
def setup():
    model, params = from_torch_model(tiny_hf_clap(NAME))
    feats, _, ids, mask = random_inputs(NAME)
    return model, params, feats, ids, mask


def metric():
    return jax.tree_util.Partial(lambda w, e: e @ w, jnp.asarray(W))


@functools.cache
def encode_program(site):
    model = setup()[0]

    def run(params, x, mask, value, where, delta):
        edits = {site: (Replace(value, where), Add(delta))}
        emb, acts = model.apply({"params": params}, "audio" if mask is None else "text", x, mask, edits=edits,
                                capture=(site,), method="encode")
        return emb @ W, acts[site]

    return jax.jit(run)


def brute_force(site, clean, corrupt, mask, position):
    """The metric with ``site`` at ``position`` patched from ``corrupt`` into ``clean``, minus the
    clean metric (eq 2), and the gradient of the clean metric there dotted with the difference
    (attribution's estimate), by one edited forward each."""
    params = setup()[1]
    run = encode_program(site)
    _, src = run(params, corrupt, mask, 0.0, False, 0.0)
    base, act = run(params, clean, mask, 0.0, False, 0.0)
    tokens = np.arange(src.shape[1])[None] == position
    where = along(np.broadcast_to(tokens, src.shape[:2]), "batch", "token")
    patched, _ = run(params, clean, mask, src, where, 0.0)

    def summed(delta):
        return run(params, clean, mask, 0.0, False, delta)[0].sum()

    grad = jax.grad(summed)(jnp.zeros_like(act))
    estimate = np.einsum("btd,btd->bt", np.asarray(grad), np.asarray(src - act))[:, position]
    return np.asarray(patched - base), estimate


def test_audio_blocks_of_one_stage_patch_as_edited_forwards_do():
    model, params, feats, _, _ = setup()
    clean, corrupt = feats, feats[::-1].copy()
    exact = causal.causal_effect(model, {"params": params}, "audio", clean, corrupt, metric(), layers=(1, 2))
    attrib = causal.attribution_effect(model, {"params": params}, "audio", clean, corrupt, metric(), layers=(1, 2))
    assert exact.per_example.shape == attrib.per_example.shape == (3, 2, 36)
    for layer, site in enumerate(("audio.stages.1.blocks.0.resid_pre", "audio.stages.1.blocks.1.resid_pre")):
        for position in (0, 17, 35):
            want, estimate = brute_force(site, clean, corrupt, None, position)
            np.testing.assert_allclose(exact.per_example[:, layer, position], want, atol=1e-5)
            np.testing.assert_allclose(attrib.per_example[:, layer, position], estimate, rtol=1e-4, atol=1e-5)
    assert np.abs(exact.per_example).max() > 1e-3  # not vacuous


def test_a_sweep_across_stages_is_refused_naming_each_sites_shape():
    model, params, feats, _, _ = setup()
    for fn in (causal.causal_effect, causal.attribution_effect):
        with pytest.raises(ValueError, match=r"differ in shape.*audio.stages.0.blocks.0.resid_pre \(3, 144, 8\)"
                                             r".*audio.stages.1.blocks.0.resid_pre \(3, 36, 16\).*one stage"):
            fn(model, {"params": params}, "audio", feats, feats[::-1], metric())


def test_the_text_tower_sweeps_stacked_as_edited_forwards_do():
    model, params, _, ids, mask = setup()
    corrupt = ids.copy()
    corrupt[:, 1] = ids[::-1, 1]  # one token swapped: the same lengths and masks
    exact = causal.causal_effect(model, {"params": params}, "text", ids, corrupt, metric(), text_mask=mask)
    for layer in (0, 1):
        want, _ = brute_force(f"text.layers.{layer}.resid_pre", ids, corrupt, mask, 1)
        np.testing.assert_allclose(exact.per_example[:, layer, 1], want, atol=1e-5)
    assert np.abs(exact.per_example[:, :, 1]).max() > 1e-3


def test_identification_reads_every_block_and_the_audio_readout_is_every_token():
    model, params, feats, _, _ = setup()
    assert identification.candidate_sites(model, "audio") == (
        "audio.stages.0.blocks.0.resid_post", "audio.stages.1.blocks.0.resid_post",
        "audio.stages.1.blocks.1.resid_post", "audio.pooled", "audio.proj")
    site = steering.last_resid(model, "audio")
    assert site == "audio.stages.1.blocks.1.resid_post"
    mask = reads.readout_mask(model, params, "audio", feats, site)
    assert mask.value.shape == (3, 36) and mask.value.all()  # the final stage's tokens, every one
    text = reads.readout_mask(model, params, "text", np.asarray([[0, 5, 2]]), "text.layers.1.resid_post")
    assert text.value.tolist() == [[True, False, False]]  # RoBERTa's pooler reads <s>
    rows = reads.readout_reps(model, params, "audio", ("x", None), {"x": feats}, site)
    _, acts = model.apply({"params": params}, "audio", feats, capture=(site,), method="encode")
    np.testing.assert_allclose(rows, np.asarray(acts[site]).mean(1), atol=1e-6)
