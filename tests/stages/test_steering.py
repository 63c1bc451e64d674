"""The steering stage (eq 5 and patching, Table 3) on a tiny CLIP with planted classes."""

import numpy as np
import pytest

from mrepe_jax.models.layers import normalize
from mrepe_jax.stages import identification, steering
from mrepe_jax.stages.reads import readout_mask, readout_reps
from tests.models.tiny import tiny_clip


@pytest.fixture(scope="module")
def setup():
    model, variables, _, _, _ = tiny_clip()
    params = variables["params"]
    rng = np.random.default_rng(0)
    tints = rng.normal(size=(3, 1, 1, 3)) * 2.0  # three classes: images of one tint each
    labels = np.arange(48) % 3
    images = (rng.normal(size=(48, 16, 16, 3)) * 0.3 + tints[labels]).astype(np.float32)
    site = steering.last_resid(model, "vision")
    reps = identification.read_batch(model, params, "vision", {"image": images}, "image",
                                     sites=(site, "vision.proj"))
    sums = identification.accumulate(None, {site: reps[site]}, labels, 3)[site]
    proj = np.asarray(normalize(reps["vision.proj"]))
    prompts = np.stack([proj[labels == c].mean(0) for c in range(3)])  # each class's own mean
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    cls = readout_reps(model, params, "vision", ("image", None), {"image": images}, site)
    ap_means = np.stack([cls[labels == c].mean(0) for c in range(3)])
    return model, params, images, labels, site, sums, prompts, ap_means


def test_direct_steering_moves_predictions_toward_the_target_and_alpha_zero_is_none(setup):
    model, params, images, labels, site, sums, prompts, ap_means = setup
    out = steering.steer(model, params, "vision", images, None, labels, site, sums.directions(),
                         ap_means, sums.mean_norm(), (0.0, 1.0, 4.0), prompts)
    assert out["direct"]["0.0"] == out["none"] < 0.2  # the classes are told apart unsteered
    assert out["direct"]["4.0"] > 0.9 and out["direct"]["4.0"] >= out["direct"]["1.0"] >= out["none"]
    assert out["ap"] > 0.9  # the target's mean activation carries the class
    assert set(out["per_target"]) == {0, 1, 2} and out["num_inputs"] == 48


def test_unlabelled_inputs_are_not_counted(setup):
    model, params, images, labels, site, sums, prompts, ap_means = setup
    masked = np.where(np.arange(48) < 24, labels, -1)
    a = steering.steer(model, params, "vision", images, None, masked, site, sums.directions(),
                       ap_means, sums.mean_norm(), (1.0,), prompts)
    b = steering.steer(model, params, "vision", images[:24], None, labels[:24], site,
                       sums.directions(), ap_means, sums.mean_norm(), (1.0,), prompts)
    assert a["num_inputs"] == 24 and a["direct"] == b["direct"] and a["ap"] == b["ap"]


def test_steering_sites_and_the_eq7_unit_follow_the_tower(setup):
    model = setup[0]
    assert steering.steering_sites(model, "text") == (
        "text.layers.1.resid_post", "text.layers.1.attn.logits", "text.layers.1.resid_pre")
    # Width 32 over 4 heads: d_head 8, so a softmax shift of 0.5 is a logit bias of 0.5 * sqrt(8).
    assert steering.attention_unit(model, "vision", 32, 0.5) == pytest.approx(0.5 * np.sqrt(8))


def test_edit_eq5_eq7_is_the_combined_intervention_and_one_static_argument(setup):
    from mrepe_jax.control.interventions import attention, combine, direct
    from mrepe_jax.edits import along

    model, params, images, _, site, _, _, _ = setup
    x = images[:3]
    _, logits, _ = steering.steering_sites(model, "vision")
    rng = np.random.default_rng(1)
    p = {"delta": rng.normal(size=32).astype(np.float32), "alpha": np.float32(0.7),
         "scale": np.float32(2.0), "bias": rng.normal(size=(3, 5)).astype(np.float32)}
    edit = steering.EditEq5Eq7(site, logits)
    assert edit == steering.EditEq5Eq7(site, logits) and hash(edit) == hash(steering.EditEq5Eq7(site, logits))

    def encode(edits):
        return np.asarray(model.apply({"params": params}, "vision", x, edits=edits, method="encode")[0])

    by_hand = combine(direct(site, p["delta"], p["alpha"], p["scale"]),
                      attention(logits, along(p["bias"], "batch", "key")))
    np.testing.assert_allclose(encode(edit(p)), encode(by_hand), atol=1e-6)
    assert np.abs(encode(edit(p)) - encode(None)).max() > 1e-3
    off = {**p, "alpha": np.float32(0.0), "bias": np.zeros((3, 5), np.float32)}
    np.testing.assert_allclose(encode(edit(off)), encode(None), atol=1e-6)


def test_ap_writes_the_targets_readout_token_mean_at_the_readout_token_only(setup):
    model, params, images, _, site, _, _, ap_means = setup
    x = images[:4]
    where = readout_mask(model, params, "vision", x).value
    assert where.shape == (4, 5) and where[:, 0].all() and not where[:, 1:].any()  # CLS only
    p = {"mean": ap_means[2], "where": where}
    _, clean = model.apply({"params": params}, "vision", x, capture=(site,), method="encode")
    _, patched = model.apply({"params": params}, "vision", x, capture=(site,), method="encode",
                             edits=steering.EditAP(site)(p))
    got, before = np.asarray(patched[site]), np.asarray(clean[site])
    np.testing.assert_allclose(got[:, 0], np.broadcast_to(ap_means[2], (4, 32)), atol=1e-6)
    np.testing.assert_array_equal(got[:, 1:], before[:, 1:])


def test_ap_on_a_target_already_predicted_keeps_at_least_its_unsteered_share(setup):
    """Target 0's prompt is the embeddings' common direction and the others random: the model
    predicts 0 for most inputs unsteered, and AP toward 0 keeps at least that share. (Writing
    each class's all-token mean over every token, as AP once did, scored 0.0 here.)"""
    model, params, images, labels, site, sums, _, ap_means = setup
    _, acts = model.apply({"params": params}, "vision", images, method="encode", capture=("vision.proj",))
    common = np.asarray(normalize(acts["vision.proj"])).mean(0)
    common /= np.linalg.norm(common)
    rng = np.random.default_rng(5)
    for _ in range(4):
        others = rng.normal(size=(2, common.size))
        others -= (others @ common)[:, None] * common
        prompts = np.concatenate([common[None], others / np.linalg.norm(others, axis=1, keepdims=True)])
        out = steering.steer(model, params, "vision", images, None, labels, site, sums.directions(),
                             ap_means, sums.mean_norm(), (1.0,), prompts.astype(np.float32))
        first = out["per_target"][0]
        assert first["none"] >= 0.5 and first["ap"] >= first["none"], first
