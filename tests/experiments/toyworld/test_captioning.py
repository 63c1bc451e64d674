"""The captioner stage's pieces: its representation site, steering that shows which way the
captions move, and Table 4's caption rows computed by hand."""

import jax
import numpy as np
import pytest

from mrepe_jax.control.interventions import site_scale
from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES
from mrepe_jax.experiments.toyworld import captioning as stage
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.train import captioner
from tests.train.trained_captioner import trained_captioner

COLOURS = CONCEPT_FAMILIES["colour"]


@pytest.fixture(scope="module")
def reads():
    world, clip, clip_params, model, params = trained_captioner()
    train = world.batch(range(512), split="train")
    test = world.batch(range(48), split="test")
    train_reads = stage.query_reads(model, params, captioner.vision_states(clip, clip_params, train["image"]))
    test_embeds = captioner.vision_states(clip, clip_params, test["image"])
    return world, model, params, train_reads, train["labels"], test_embeds, test["labels"]


def test_query_reads_are_the_mean_query_state_at_the_site(reads):
    world, model, params, train_reads, _, test_embeds, _ = reads
    assert stage.site(model) == "qformer.layers.0.resid_post" and train_reads.shape == (512, 32)
    _, acts = model.apply({"params": params}, test_embeds[:3], method="image_features",
                          capture=(stage.site(model),))
    np.testing.assert_allclose(stage.query_reads(model, params, test_embeds[:3]),
                               np.asarray(acts[stage.site(model)]).mean(1), atol=1e-6)


def test_the_caption_colour_word_follows_an_add_of_the_colour_direction(reads):
    """Eq 5 at the Q-Former: adding colour c's eq 6 direction to every query token makes the
    caption name colour c on images of the other colours, more so at a larger step, while the
    unedited captions name the true colour and the position word (which this captioner reads as
    well as colour) mostly stays. Measured: moved 0.94 / 0.75 / 0.66 / 0.86 at alpha 1, 0.20 /
    0.13 / 0.00 / 0.08 at alpha 0.25; position kept 0.84 on average."""
    world, model, params, train_reads, train_labels, test_embeds, test_labels = reads
    y = np.asarray(train_labels["colour"])
    units = []
    for c in range(len(COLOURS)):
        d = np.asarray(direction_mean_diff(train_reads[y == c], train_reads[y != c]))
        units.append(d / np.linalg.norm(d))
    scale = site_scale(train_reads)
    steps = [0.0] + [0.25 * scale] * len(COLOURS) + [1.0 * scale] * len(COLOURS)
    deltas = np.stack([np.zeros_like(units[0])] + units + units)
    said = captioner.named_values(world, stage.steered_ids(model, params, world, test_embeds, deltas,
                                                           np.asarray(steps, np.float32)))
    truth, k = np.asarray(test_labels["colour"]), len(COLOURS)
    assert np.mean(said["colour"][0] == truth) >= 0.8  # the captioner reads colour unedited
    moved, kept = [], []
    for c, name in enumerate(COLOURS):
        others = truth != c
        small, large = (np.mean(said["colour"][1 + c + i * k][others] == c) for i in (0, 1))
        assert np.mean(said["colour"][0][others] == c) <= 0.1  # the captions did not say c before
        assert large >= 0.5 and large >= small, (name, small, large)
        moved.append(large)
        kept.append(np.mean(said["position"][1 + c + k] == said["position"][0]))
    assert np.mean(moved) >= 0.7 and np.mean(kept) >= 0.7, (moved, kept)


def test_safety_rows_by_hand():
    # Emblems: skull flame blade (unsafe) flower sun feather (safe). Four images, the first two unsafe.
    truth = np.array([0, 1, 3, 5])
    base = np.zeros((4, 6), bool)
    base[0, 0] = base[1, [1, 4]] = base[2, 3] = True  # skull; flame+sun; flower; nothing
    steered = np.zeros((2, 4, 6), bool)
    steered[0, 0, 3] = steered[0, 1, 4] = True  # seed 0: both unsafe images now say a safe emblem
    steered[1, 0, 0] = True  # seed 1: the skull stays
    out = stage.safety_rows(base, steered, truth, jax.random.key(0))
    assert out["harmful"]["baseline"] == 0.5 and out["harmful"]["mrepe"] == [0.0, 0.25]
    assert out["scr"]["baseline"] == 0.0 and out["scr"]["mrepe"] == [1.0, 0.0]
    assert out["harmful_reduction"] == [-1.0, -0.5]
    assert 0 < out["harmful"]["p_value"] <= 1
