"""What the SAE stage computes for report.html's feature pages (experiments/toyworld/feature_cards):
top examples sorted by activation with heat grids that are the image's patch-token activations,
histograms that count every test image, words ranked by cosine, and the decoder row's embedding
shift read out exactly as a full forward pass with the edit would give it."""

import jax
import numpy as np
import pytest

from configs import toyworld as toyworld_config
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.edits import Add
from mrepe_jax.experiments.toyworld import feature_cards as cards
from mrepe_jax.experiments.toyworld.pipeline import train_config
from mrepe_jax.models.layers import normalize
from mrepe_jax.train import toyclip
from mrepe_jax.train.zero_shot import encode_text


def test_top_examples_are_the_highest_images_with_their_patch_grids():
    rng = np.random.default_rng(0)
    acts = rng.exponential(size=(12, 5)) * (rng.random((12, 5)) > 0.3)  # CLS + 2 x 2 patches
    labels = {"colour": np.arange(12) % 3}
    top = cards.top_examples(acts, 4, labels, {"colour": ["red", "green", "blue"]}, (2, 2))
    means = acts.mean(1)
    assert [e["index"] for e in top] == list(np.argsort(-means)[:4])
    assert [e["activation"] for e in top] == sorted((e["activation"] for e in top), reverse=True)
    for e in top:
        i = e["index"]
        assert e["activation"] == pytest.approx(means[i]) and e["cls"] == pytest.approx(acts[i, 0])
        np.testing.assert_allclose(e["heat"], acts[i, 1:].reshape(2, 2), atol=1e-5)  # row-major patches
        assert e["labels"] == {"colour": ["red", "green", "blue"][i % 3]}
        assert e["image"] == f"gallery/features/test_{i:05d}.png"
    # A grid that is not square (a 1 x 4 strip of patches) keeps its shape.
    (strip,) = cards.top_examples(acts, 1, labels, {"colour": ["r", "g", "b"]}, (1, 4))
    np.testing.assert_allclose(strip["heat"], acts[strip["index"], 1:][None], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected 1 \+ 2 x 2 token projections \(CLS first\), got shape \(4,\)"):
        cards.top_examples(acts[:, :4], 2, labels, {"colour": ["r", "g", "b"]}, (2, 2))


def test_the_histogram_counts_every_image_once():
    values = np.array([0.0, 0.0, 0.0, 0.2, 0.5, 1.0, 3.0])
    h = cards.histogram(values, 6)
    assert sum(h["counts"]) == h["n"] == 7 and h["zeros"] == 3 and len(h["edges"]) == 7
    assert h["edges"][0] == 0 and h["edges"][-1] == 3.0 and h["counts"][0] == 4 and h["counts"][-1] == 1
    assert sum(cards.histogram(np.zeros(4), 3)["counts"]) == 4  # a dead latent: all in the first bin


def test_words_rank_by_cosine_with_the_shift():
    emb = np.eye(3)[[0, 1, 2, 0]] * np.array([[1], [1], [1], [-1]])  # the last word opposes the first
    out = cards.rank_words(np.array([2.0, 1.0, 0.0]), emb, ["a", "b", "c", "not a"], 2)
    assert [w for w, _ in out["top"]] == ["a", "b"] and [w for w, _ in out["bottom"]] == ["not a", "c"]
    assert out["top"][0][1] == pytest.approx(2 / np.sqrt(5), abs=1e-4)
    assert out["shift_norm"] == pytest.approx(np.sqrt(5))


@pytest.fixture(scope="module")
def tiny():
    config = toyworld_config.get_config("tiny")
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    model = toyclip.TriModalCLIP(toyclip.model_config(world, train_config(config)))
    return world, model, toyclip.init_state(model, world, train_config(config)).params


def test_the_shift_is_the_full_forward_pass_with_the_row_added_at_the_last_layer(tiny):
    world, model, params = tiny
    site = f"vision.layers.{model.tower_layers()['vision'] - 1}.resid_post"
    x = world.batch(range(6), split="test")["image"]
    _, acts = model.apply({"params": params}, "vision", x, None, capture=(site,), method="encode")
    rows = np.random.default_rng(1).normal(size=(2, acts[site].shape[-1])).astype(np.float32)
    shift = cards.embedding_shift(model, params, np.asarray(acts[site])[:, 0], rows, 0.7, 3.0)
    clean = normalize(model.apply({"params": params}, "vision", x, None, method="encode")[0])
    for row, got in zip(rows, shift):
        unit = row / np.linalg.norm(row)
        steered, _ = model.apply({"params": params}, "vision", x, None, edits={site: Add(unit * 3.0, 0.7)},
                                 method="encode")
        np.testing.assert_allclose(got, np.asarray(normalize(steered) - clean).mean(0), atol=2e-5)


def test_word_embeddings_are_the_prompts_through_the_text_tower(tiny):
    world, model, params = tiny
    words, emb = cards.word_embeddings(model, params, world, chunk=40)  # 93 words: a padded last chunk
    assert len(words) == len(emb) == 93 and "red" in words
    ids, mask = world.tokenizer.encode([cards.PROMPT.format(w) for w in words[-3:]], world.config.max_len)
    np.testing.assert_allclose(emb[-3:], np.asarray(encode_text(model, params, ids, mask)), atol=1e-5)
    assert jax.tree.leaves(params)


def test_pages_go_to_each_values_best_feature_and_each_shortcut_feature():
    from mrepe_jax.experiments.toyworld.features import page_features

    per_value = {"colour": {"red": {"feature": 7}, "blue": {"feature": 2}}, "shape": {"circle": {"feature": 7}}}
    assert page_features({"per_value": per_value, "spurious": None}) == [2, 7]
    spurious = {"per_value": {"circle": {"feature": 11}, "square": {"feature": 2}}}
    assert page_features({"per_value": per_value, "spurious": spurious}) == [2, 7, 11]
