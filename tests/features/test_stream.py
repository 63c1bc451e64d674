"""Activations streamed into SAE training (``features.stream``): each step's rows are real tokens
of that step's forward at each site, the same rows for every site, a function of the step alone;
padding is never sampled; a stack trains on two layers of a model."""

import numpy as np
import pytest

from mrepe_jax.features.sae import SAEConfig
from mrepe_jax.features.stream import site_batches
from mrepe_jax.features.train import train_saes
from tests.models.tiny import tiny_clip

SITES = ("vision.layers.0.resid_post", "vision.layers.1.resid_post")


def _images(step):
    return {"image": np.random.default_rng(step).normal(size=(6, 16, 16, 3)).astype(np.float32)}


def test_rows_are_real_tokens_of_the_steps_forward_and_a_function_of_the_step():
    model, variables, *_ = tiny_clip()
    params = variables["params"]
    batches = site_batches(model, params, "vision", _images, SITES, 16, input_key="image", seed=3)
    b = batches(2)
    assert b.shape == (16, 2, 32)
    np.testing.assert_array_equal(b, batches(2))
    assert np.abs(b - batches(3)).max() > 1e-3
    _, acts = model.apply(variables, "vision", _images(2)["image"], method="encode", capture=SITES)
    for i, site in enumerate(SITES):
        tokens = np.asarray(acts[site]).reshape(-1, 32)  # 6 images x 5 tokens
        # Every row is one of the step's tokens at that site, and the sites share the rows.
        match = [np.flatnonzero(np.abs(tokens - row).max(1) < 1e-4) for row in b[:, i]]
        assert all(len(m) == 1 for m in match)
        if i == 0:
            first = [int(m[0]) for m in match]
        else:
            assert [int(m[0]) for m in match] == first
    assert len(set(first)) == 16  # drawn without replacement


def test_text_padding_is_never_sampled_and_too_few_tokens_are_named():
    model, variables, _, ids, mask = tiny_clip()
    params = variables["params"]

    def captions(step):
        return {"input_ids": np.asarray(ids), "attention_mask": np.asarray(mask)}

    batches = site_batches(model, params, "text", captions, ("text.layers.1.resid_post",), 8,
                           input_key="input_ids", mask_key="attention_mask")
    b = batches(0)
    _, acts = model.apply(variables, "text", ids, mask, method="encode", capture=("text.layers.1.resid_post",))
    real = np.asarray(acts["text.layers.1.resid_post"])[np.asarray(mask, bool)]
    assert all(np.abs(real - row).max(1).min() < 1e-4 for row in b[:, 0])
    with pytest.raises(ValueError, match=r"step 0's inputs hold 8 real tokens at text.layers.1.resid_post, "
                                         r"fewer than one SAE batch of 9"):
        site_batches(model, params, "text", captions, ("text.layers.1.resid_post",), 9,
                     input_key="input_ids", mask_key="attention_mask")(0)


def test_a_stack_trains_on_two_layers_streamed_from_the_model():
    model, variables, *_ = tiny_clip()
    batches = site_batches(model, variables["params"], "vision", _images, SITES, 24, input_key="image")
    cfg = SAEConfig(d_in=32, d_sae=64, architecture="topk", num_steps=80, batch_size=24, aux_k=8,
                    dead_steps=10, learning_rate=3e-3)
    saes = train_saes(cfg, batches, members=[(64, 4), (64, 4)], seeds=[0, 0], sites=SITES, progress=False)
    assert [s.info["site"] for s in saes] == list(SITES)
    for s in saes:
        assert np.mean(s.info["losses"][-10:]) < 0.8 * s.info["losses"][0]  # it learned
    # Same seed, other layer's activations: other SAEs.
    assert np.abs(saes[0].params["W_dec"] - saes[1].params["W_dec"]).max() > 1e-2


def test_blip2_qformer_and_opt_sites_stream_without_padding():
    pytest.importorskip("torch")
    from mrepe_jax.features.stream import CallApply, stream_batches
    from tests.models.blip2.test_parity import converted, nhwc, prompt

    model, params = converted("xattn2_opt2")
    pixels, ids, mask = prompt(seed=3, lengths=(6, 3, 1, 4))  # left-padded prompts

    def inputs(step):
        return {"pixel_values": nhwc(pixels), "input_ids": ids.astype(np.int32),
                "attention_mask": mask.astype(np.int32)}

    apply_fn = CallApply(model, ("pixel_values", "input_ids", "attention_mask"))
    q = stream_batches(apply_fn, params, inputs, ("qformer.layers.1.resid_post",), 8, mask_key="attention_mask")(0)
    lm_site = "lm.layers.1.resid_post"
    lm = stream_batches(apply_fn, params, inputs, (lm_site,), 12, mask_key="attention_mask")(0)
    _, acts = model.apply({"params": params}, *inputs(0).values(), capture=("qformer.layers.1.resid_post", lm_site))
    queries = np.asarray(acts["qformer.layers.1.resid_post"]).reshape(-1, q.shape[-1])
    assert all(np.abs(queries - row).max(1).min() < 1e-4 for row in q[:, 0])  # every query is real
    real = np.asarray(acts[lm_site])[mask.astype(bool)]
    assert all(np.abs(real - row).max(1).min() < 1e-4 for row in lm[:, 0])  # never a padding token
    with pytest.raises(ValueError, match=r"hold \d+ real tokens at lm.layers.1.resid_post, fewer than one SAE batch"):
        stream_batches(apply_fn, params, inputs, (lm_site,), 10_000, mask_key="attention_mask")(0)
