"""A tower's sites read over a batch dict: per token, and token means over real tokens in chunks."""

import jax.numpy as jnp
import numpy as np

from mrepe_jax.stages.reads import mean_reps, token_reps
from tests.models.tiny import tiny_clip

SITE = "text.layers.1.resid_post"


def _text_batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 98, size=(n, 5)).astype(np.int32)
    lengths = rng.integers(2, 6, size=n)
    mask = (np.arange(5)[None] < lengths[:, None]).astype(np.int32)
    ids[np.arange(n), lengths - 1] = 99  # EOS at each row's last real token
    return {"input_ids": ids, "attention_mask": mask}


def test_token_reps_are_the_captured_site():
    model, v, pixels, _, _ = tiny_clip()
    _, acts = model.apply(v, "vision", pixels, capture=("vision.layers.0.resid_pre",), method="encode")
    got = token_reps(model, v["params"], "vision", ("image", None), {"image": np.asarray(pixels)},
                     "vision.layers.0.resid_pre")
    np.testing.assert_allclose(got, np.asarray(acts["vision.layers.0.resid_pre"]), atol=1e-6)


def test_mean_reps_average_real_tokens_whatever_the_chunk():
    model, v, _, _, _ = tiny_clip()
    batch = _text_batch()
    _, acts = model.apply(v, "text", jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                          capture=(SITE,), method="encode")
    m = batch["attention_mask"][..., None]
    expected = (np.asarray(acts[SITE]) * m).sum(1) / m.sum(1)
    keys = ("input_ids", "attention_mask")
    whole = mean_reps(model, v["params"], "text", keys, batch, (SITE,), chunk=7)[SITE]
    chunked = mean_reps(model, v["params"], "text", keys, batch, (SITE,), chunk=3, gather=True)[SITE]
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    np.testing.assert_allclose(chunked, expected, atol=1e-5)
    assert chunked.shape == (7, 32)
