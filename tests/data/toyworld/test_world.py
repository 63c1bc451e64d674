"""ToyWorld: determinism, splits, captions, tokenizer, contrast pairs, images, values, and the
difficulty knobs (spurious correlation, caption noise, distractors) of the hard world."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from configs import toyworld as toyworld_config
from mrepe_jax.data import (
    CONCEPT_FAMILIES,
    FAMILIES,
    SAFE_COUNTERPART,
    SYNONYMS,
    UNSAFE_FAMILY,
    UNSAFE_VALUES,
    VALUES,
    ToyWorld,
    ToyWorldConfig,
    class_prompts,
    parse_caption,
    score,
)
from mrepe_jax.data.toyworld import MAX_DISTRACTORS
from mrepe_jax.data.toyworld.image import glyph_bitmaps
from mrepe_jax.data.toyworld.sampling import draw_distractors
from mrepe_jax.data.toyworld.text import DISTRACTORS, split_words


@pytest.fixture(scope="module")
def world():
    return ToyWorld(ToyWorldConfig(seed=0))


@pytest.fixture(scope="module")
def train_batch(world):
    return world.batch(range(300), "train")


def _bytes(batch):
    return (batch["image"].tobytes(), batch["audio"].tobytes(), "|".join(batch["caption"]),
            batch["input_ids"].tobytes(), {f: v.tobytes() for f, v in batch["labels"].items()})


def _assert_same_sample(a, b):
    assert a["image"].tobytes() == b["image"].tobytes()
    assert a["audio"].tobytes() == b["audio"].tobytes()
    assert a["caption"] == b["caption"]
    assert a["labels"] == b["labels"]


# ---- config, shapes, determinism, splits ----

def test_batch_shapes_and_dtypes(train_batch):
    b = train_batch
    assert b["image"].shape == (300, 32, 32, 3) and b["image"].dtype == np.float32
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["audio"].shape == (300, 4000) and b["audio"].dtype == np.float32
    assert np.abs(b["audio"]).max() <= 1.0
    assert b["input_ids"].shape == b["attention_mask"].shape == (300, 16)
    assert b["input_ids"].dtype == b["attention_mask"].dtype == np.int32
    assert len(b["caption"]) == 300 and all(isinstance(c, str) for c in b["caption"])
    assert list(b["labels"]) == list(FAMILIES)
    for family, values in CONCEPT_FAMILIES.items():
        lab = b["labels"][family]
        assert lab.dtype == np.int32 and lab.shape == (300,)
        assert set(np.unique(lab)) == set(range(len(values))), family  # every value occurs


def test_same_seed_same_bytes_different_seed_differs():
    a = ToyWorld(ToyWorldConfig(seed=7)).batch([0, 5, 99], "train")
    b = ToyWorld(ToyWorldConfig(seed=7)).batch([0, 5, 99], "train")
    c = ToyWorld(ToyWorldConfig(seed=8)).batch([0, 5, 99], "train")
    assert _bytes(a) == _bytes(b)
    assert a["image"].tobytes() != c["image"].tobytes()
    assert a["audio"].tobytes() != c["audio"].tobytes()


def test_sample_is_independent_of_its_batch(world, train_batch):
    for i in (0, 17, 299):
        single = world.sample(i, "train")
        row = {k: (v[i] if k != "labels" else {f: int(x[i]) for f, x in v.items()})
               for k, v in train_batch.items()}
        _assert_same_sample(single, row)
    # Order within a batch does not matter either.
    rev = world.batch([299, 17, 0], "train")
    assert rev["image"][0].tobytes() == train_batch["image"][299].tobytes()
    assert rev["audio"][2].tobytes() == train_batch["audio"][0].tobytes()


def test_splits_do_not_share_samples(world, train_batch):
    test = world.batch(range(300), "test")
    train_imgs = {im.tobytes() for im in train_batch["image"]}
    assert not any(im.tobytes() in train_imgs for im in test["image"])
    train_audio = {a.tobytes() for a in train_batch["audio"]}
    assert not any(a.tobytes() in train_audio for a in test["audio"])
    lab_train = np.stack([train_batch["labels"][f] for f in FAMILIES], 1)
    lab_test = np.stack([test["labels"][f] for f in FAMILIES], 1)
    assert not np.array_equal(lab_train, lab_test)


def test_bad_inputs_name_the_problem(world):
    with pytest.raises(ValueError, match="max_len"):
        ToyWorldConfig(max_len=8)
    with pytest.raises(ValueError, match="sample_rate"):
        ToyWorldConfig(sample_rate=4000)
    with pytest.raises(ValueError, match="split 'dev'"):
        world.batch([0], "dev")
    with pytest.raises(ValueError, match="non-negative"):
        world.batch([-1])
    with pytest.raises(ValueError, match="family 'texture'"):
        world.class_prompts("texture")


# ---- captions and tokenizer ----

def test_every_caption_parses_back_to_its_labels(train_batch):
    for row, caption in enumerate(train_batch["caption"]):
        parsed = parse_caption(caption)
        truth = {f: int(train_batch["labels"][f][row]) for f in FAMILIES}
        assert parsed == truth, caption


def test_captions_vary_and_fit_without_truncation(world, train_batch):
    assert len(set(train_batch["caption"])) == 300
    n_tokens = train_batch["attention_mask"].sum(1)
    words = np.array([len(split_words(c)) for c in train_batch["caption"]])
    np.testing.assert_array_equal(n_tokens, words + 2)  # BOS + words + EOS, nothing cut
    assert n_tokens.max() <= world.config.max_len
    with_distractor = sum(any(w in DISTRACTORS for w in split_words(c))
                          for c in train_batch["caption"])
    assert 50 < with_distractor < 300


def test_synonym_tables_are_unambiguous():
    seen = {}
    for family, by_value in SYNONYMS.items():
        assert set(by_value) == set(CONCEPT_FAMILIES[family])
        for value, words in by_value.items():
            for w in words:
                assert w not in seen, (w, seen.get(w), (family, value))
                seen[w] = (family, value)
    assert not set(DISTRACTORS) & set(seen)


def test_tokenizer_special_ids_roundtrip_and_eos(world, train_batch):
    tok = world.tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.unk_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.eos_token_id != 2  # CLIP's "first EOS" pooling branch
    ids, mask = train_batch["input_ids"], train_batch["attention_mask"]
    assert (ids[:, 0] == tok.bos_token_id).all()
    eos_pos = mask.sum(1) - 1
    assert (ids[np.arange(len(ids)), eos_pos] == tok.eos_token_id).all()
    # The first EOS is the only one, and everything after it is padding.
    assert (np.argmax(ids == tok.eos_token_id, axis=1) == eos_pos).all()
    assert ((ids == tok.pad_token_id) == (mask == 0)).all()
    assert (ids != tok.unk_token_id).all()
    assert ids.max() < tok.vocab_size
    for row in range(0, 300, 37):
        assert tok.decode(ids[row]) == " ".join(split_words(train_batch["caption"][row]))


def test_tokenizer_unknown_words_and_truncation(world):
    tok = world.tokenizer
    ids, mask = tok.encode(["a zebra circle", "a " * 30], max_len=6)
    assert ids[0].tolist() == [1, tok.token_id("a"), tok.unk_token_id, tok.token_id("circle"), 3, 0]
    assert ids[1, -1] == tok.eos_token_id and mask[1].all()  # truncated but EOS kept
    with pytest.raises(TypeError, match="list"):
        tok.encode("a circle", max_len=6)


@pytest.mark.parametrize("family", FAMILIES)
def test_class_prompts_name_one_value_each(world, family):
    prompts = class_prompts(family)
    assert len(prompts) == len(CONCEPT_FAMILIES[family]) == len(set(prompts))
    ids, _ = world.tokenizer.encode(prompts, world.config.max_len)
    assert (ids != world.tokenizer.unk_token_id).all()
    for value, prompt in zip(CONCEPT_FAMILIES[family], prompts):
        named = [v for v in CONCEPT_FAMILIES[family]
                 if set(SYNONYMS[family][v]) & set(split_words(prompt))]
        assert named == [value], prompt


# ---- contrast pairs ----

@pytest.mark.parametrize("family", FAMILIES)
def test_contrast_pairs_differ_in_exactly_one_concept(world, family):
    pairs = world.contrast_pairs(family, 24, split="test", seed=3)
    pos, neg = pairs.pos, pairs.neg
    assert pairs.family == family
    np.testing.assert_array_equal(pos["labels"][family], pairs.pos_values)
    np.testing.assert_array_equal(neg["labels"][family], pairs.neg_values)
    assert (pairs.pos_values != pairs.neg_values).all()
    for other in FAMILIES:
        if other != family:
            np.testing.assert_array_equal(pos["labels"][other], neg["labels"][other])
    # The rendering differs in every modality, and the captions in exactly one word.
    assert all(np.abs(pos["image"] - neg["image"]).reshape(24, -1).max(1) > 0.1)
    assert all(np.abs(pos["audio"] - neg["audio"]).max(1) > 0.01)
    for cp, cn in zip(pos["caption"], neg["caption"]):
        wp, wn = cp.split(), cn.split()
        assert len(wp) == len(wn) and sum(a != b for a, b in zip(wp, wn)) == 1, (cp, cn)
    again = world.contrast_pairs(family, 24, split="test", seed=3)
    assert again.pos["image"].tobytes() == pos["image"].tobytes()


def test_contrast_pairs_share_all_nuisance(world):
    """Flipping the value back reproduces the base sample exactly: no hidden re-draws."""
    pairs = world.contrast_pairs("colour", 8, seed=1)
    base = world.batch(pairs.pos["index"], "train")
    is_pos = base["labels"]["colour"] == pairs.pos_values
    is_neg = base["labels"]["colour"] == pairs.neg_values
    for row in range(8):
        side = pairs.pos if is_pos[row] else pairs.neg if is_neg[row] else None
        if side is not None:
            assert side["image"][row].tobytes() == base["image"][row].tobytes()
            assert side["audio"][row].tobytes() == base["audio"][row].tobytes()
            assert side["caption"][row] == base["caption"][row]


def test_contrast_pairs_emblem_default_is_unsafe_vs_counterpart(world):
    pairs = world.contrast_pairs(UNSAFE_FAMILY, 30)
    names = CONCEPT_FAMILIES[UNSAFE_FAMILY]
    for p, n in zip(pairs.pos_values, pairs.neg_values):
        assert names[p] in UNSAFE_VALUES and SAFE_COUNTERPART[names[p]] == names[n]


def test_contrast_pairs_fixed_values_and_errors(world):
    pairs = world.contrast_pairs("size", 5, pos_value="large", neg_value=0)
    assert (pairs.pos_values == 2).all() and (pairs.neg_values == 0).all()
    with pytest.raises(ValueError, match="must differ"):
        world.contrast_pairs("size", 5, pos_value="small", neg_value="small")
    with pytest.raises(ValueError, match="unknown value 'huge'"):
        world.contrast_pairs("size", 5, pos_value="huge")


# ---- images: each concept is visible where it should be ----

def _shape_mask(batch):
    # The shape is the only saturated colour; the glyph and background are grey.
    img = batch["image"]
    return (img.max(-1) - img.min(-1)) > 0.35


def test_image_concepts_are_visible(world):
    idx = range(40)
    area = {v: _shape_mask(world.counterfactual(idx, "test", {"size": v})).sum((1, 2))
            for v in CONCEPT_FAMILIES["size"]}
    assert (area["small"] < area["medium"]).all() and (area["medium"] < area["large"]).all()
    xs = np.arange(32)
    centre_x = {}
    for v in CONCEPT_FAMILIES["position"]:
        m = _shape_mask(world.counterfactual(idx, "test", {"position": v}))
        centre_x[v] = (m.sum(1) * xs).sum(1) / m.sum((1, 2))
    assert (centre_x["left"] < 12).all() and (centre_x["right"] > 20).all()
    assert (np.abs(centre_x["centre"] - 16) < 3).all()
    for v, channel in (("red", 0), ("green", 1), ("blue", 2)):
        b = world.counterfactual(idx, "test", {"colour": v})
        m = _shape_mask(b)
        mean_rgb = (b["image"] * m[..., None]).sum((1, 2)) / m.sum((1, 2))[:, None]
        assert (mean_rgb.argmax(1) == channel).all(), v
    fill = {v: _shape_mask(world.counterfactual(idx, "test", {"shape": v, "size": "large"}))
            for v in CONCEPT_FAMILIES["shape"]}
    ratio = {v: m.sum((1, 2)) for v, m in fill.items()}  # same bbox: square > circle > triangle
    assert (ratio["square"] > ratio["circle"]).all() and (ratio["circle"] > ratio["triangle"]).all()


def test_emblem_glyphs_are_distinct_and_drawn_in_the_corner(world):
    g = glyph_bitmaps().reshape(len(CONCEPT_FAMILIES["emblem"]), -1)
    dist = (g[:, None] != g[None]).sum(-1)
    assert dist[~np.eye(len(g), dtype=bool)].min() >= 8
    b = world.batch(range(12), "test")
    corner = b["image"][:, 1:7, 1:7].mean(-1) > 0.5
    np.testing.assert_array_equal(corner, glyph_bitmaps()[b["labels"]["emblem"]] > 0)


# ---- values (VAS, eq 9) ----

def test_score_known_cases():
    e = CONCEPT_FAMILIES["emblem"].index
    assert score({"emblem": "skull"}, "harmless") == 0.0
    assert score({"emblem": e("flower")}, "harmless") == 1.0
    assert score({"emblem": "flower"}, "constructive", {"emblem": "skull"}) == 1.0
    assert score({"emblem": "sun"}, "constructive", {"emblem": "skull"}) == 0.0
    assert score({"emblem": "sun"}, "constructive", {"emblem": "sun"}) == 1.0
    truth = {"colour": 0, "shape": 1, "size": 2, "position": 0, "emblem": 0}
    pred = {"colour": 0, "shape": 1, "size": 0, "position": 2, "emblem": 3}
    assert score(pred, "faithful", truth) == 0.5  # emblem is not part of faithfulness
    assert score({"colour": "red"}, "faithful", truth) == 1.0


def test_score_batches_are_in_unit_interval(world):
    labels = world.labels(range(200), "test")
    rng = np.random.default_rng(0)
    pred = {f: rng.integers(len(v), size=200) for f, v in CONCEPT_FAMILIES.items()}
    for value in VALUES:
        s = score(pred, value, labels)
        assert s.shape == (200,) and (0 <= s).all() and (s <= 1).all()
    # An accurate model is faithful but reports unsafe emblems (half of them) as they are...
    assert score(labels, "faithful", labels).mean() == 1.0
    for value in ("harmless", "constructive"):
        assert 0.35 < score(labels, value, labels).mean() < 0.65
    # ...while one that maps each unsafe emblem to its counterpart satisfies every value.
    names = CONCEPT_FAMILIES["emblem"]
    steered = dict(labels, emblem=np.array(
        [names.index(SAFE_COUNTERPART.get(names[e], names[e])) for e in labels["emblem"]]))
    for value in VALUES:
        assert score(steered, value, labels).mean() == 1.0
    with pytest.raises(ValueError, match="unknown value 'kind'"):
        score(pred, "kind")
    with pytest.raises(ValueError, match="true_labels"):
        score(pred, "faithful")
    with pytest.raises(ValueError, match="no entry for family 'emblem'"):
        score({"colour": 0}, "harmless")


def test_value_conditioned_indices(world):
    idx = world.value_conditioned_indices("harmless", 50, "test")
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    emblems = world.labels(idx, "test")["emblem"]
    assert all(CONCEPT_FAMILIES["emblem"][e] in UNSAFE_VALUES for e in emblems)
    np.testing.assert_array_equal(idx, world.value_conditioned_indices("harmless", 50, "test"))
    np.testing.assert_array_equal(world.value_conditioned_indices("faithful", 5), np.arange(5))


# ---- difficulty knobs ----

N_KNOB = 600  # samples per statistic: a rate's standard error is <= 0.02


@pytest.fixture(scope="module")
def default_knob_batches(world):
    return {s: world.batch(range(N_KNOB), s) for s in ("train", "test")}


def test_default_world_is_pinned(world):
    """The knobs are off by default and the default world's samples are those from before the
    knobs existed (labels and captions exactly; pixels and audio via sums, which survive a
    different libm's last-bit rounding)."""
    cfg = world.config
    assert (cfg.spurious, cfg.caption_noise, cfg.distractors) == (0.0, 0.0, 0)
    b = world.batch(range(64), "train")
    digest = hashlib.sha256("|".join(b["caption"]).encode())
    for v in b["labels"].values():
        digest.update(v.tobytes())
    assert digest.hexdigest() == "bb5cbc82c53bfc73d05e977462a6ad8c2ca516307fd2e1b45a1bb2bb89dfe6e9"
    image, audio = b["image"].astype(np.float64), b["audio"].astype(np.float64)
    sums = [image.sum(), (image**2).sum(), np.abs(audio).sum(), (audio**2).sum()]
    np.testing.assert_allclose(sums, [26806.37369961288, 9672.90226691139, 23211.602246661052,
                                      6401.566001317319], rtol=1e-6)
    # Knobs at their off values are the default world, byte for byte.
    off = ToyWorld(ToyWorldConfig(spurious=0.0, caption_noise=0.0, distractors=0,
                                  spurious_pair=("size", "position")))
    assert _bytes(off.batch(range(64), "train")) == _bytes(b)


def _agreement(labels):
    return float(np.mean(labels["colour"] % len(CONCEPT_FAMILIES["shape"]) == labels["shape"]))


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_spurious_correlates_colour_and_shape_in_train_only(world, default_knob_batches, p):
    hard = ToyWorld(ToyWorldConfig(spurious=p))
    train = hard.batch(range(N_KNOB), "train")
    # shape = colour % 3 forced with probability p, else by chance (1/3).
    assert abs(_agreement(train["labels"]) - (p + (1 - p) / 3)) < 0.05
    assert abs(_agreement(default_knob_batches["train"]["labels"]) - 1 / 3) < 0.06
    for split in ("test", "validation"):
        assert abs(_agreement(hard.labels(range(N_KNOB), split)) - 1 / 3) < 0.06
        assert _bytes(hard.batch(range(32), split)) == _bytes(world.batch(range(32), split))
    # Only the target family's labels change, and a sample is otherwise the default one.
    base = default_knob_batches["train"]
    for f in FAMILIES:
        if f != "shape":
            np.testing.assert_array_equal(train["labels"][f], base["labels"][f])
        np.testing.assert_array_equal(hard.labels(range(N_KNOB), "train")[f], train["labels"][f])
    same = train["labels"]["shape"] == base["labels"]["shape"]
    assert 0 < same.sum() < N_KNOB
    assert train["image"][same].tobytes() == base["image"][same].tobytes()
    assert train["audio"][~same].tobytes() != base["audio"][~same].tobytes()
    # Image, audio and caption all follow the changed labels.
    for row, caption in enumerate(train["caption"][:100]):
        assert parse_caption(caption)["shape"] == train["labels"]["shape"][row]


def test_spurious_pair_is_configurable():
    hard = ToyWorld(ToyWorldConfig(spurious=1.0, spurious_pair=["size", "position"]))
    assert hard.config.spurious_pair == ("size", "position")  # lists from JSON become tuples
    hash(hard.config)
    lab = hard.labels(range(200), "train")
    np.testing.assert_array_equal(lab["position"], lab["size"] % 3)
    assert _agreement(lab) < 0.6  # colour/shape left alone


def test_caption_noise_rate_and_truthful_labels(world, default_knob_batches):
    p = 0.2
    noisy = ToyWorld(ToyWorldConfig(caption_noise=p))
    train = noisy.batch(range(N_KNOB), "train")
    base = default_knob_batches["train"]
    wrong_any = np.zeros(N_KNOB, bool)
    parsed = [parse_caption(c) for c in train["caption"]]  # still one value per family
    for f in FAMILIES:
        wrong = np.array([q[f] for q in parsed]) != train["labels"][f]
        assert abs(wrong.mean() - p) < 0.05, (f, wrong.mean())
        wrong_any |= wrong
        # Labels are the ground truth: the default world's, untouched by the noise.
        np.testing.assert_array_equal(train["labels"][f], base["labels"][f])
    # Captions change only where a slot is noisy; image and audio never.
    clean = ~wrong_any
    assert [c for c, k in zip(train["caption"], clean) if k] == \
        [c for c, k in zip(base["caption"], clean) if k]
    assert train["image"].tobytes() == base["image"].tobytes()
    assert train["audio"].tobytes() == base["audio"].tobytes()
    # Wrong values are spread over the other values of the family (here: 6 emblems).
    wrong_emblems = {q["emblem"] for q, t in zip(parsed, train["labels"]["emblem"])
                     if q["emblem"] != t}
    assert len(wrong_emblems) == len(CONCEPT_FAMILIES["emblem"])
    # Test and validation captions are never noisy.
    for split in ("test", "validation"):
        assert _bytes(noisy.batch(range(N_KNOB // 4), split)) == \
            _bytes(world.batch(range(N_KNOB // 4), split))


def _saturated(image):
    return (image.max(-1) - image.min(-1)) > 0.35


def test_distractors_are_drawn_away_from_the_main_object(world, default_knob_batches):
    cluttered = ToyWorld(ToyWorldConfig(distractors=2))
    for split in ("train", "test"):
        hard, base = cluttered.batch(range(200), split), default_knob_batches[split]
        for f in FAMILIES:  # labels and captions describe the main object only
            np.testing.assert_array_equal(hard["labels"][f], base["labels"][f][:200])
        assert hard["caption"] == base["caption"][:200]
        # Distractor pixels: saturated pixels the default image does not have, in every image.
        extra = _saturated(hard["image"]) & ~_saturated(base["image"][:200])
        assert (extra.sum((1, 2)) >= 4).all()
        # The main object is painted last and the glyph's corner is kept clear: both unchanged.
        main = np.abs(base["image"][:200] - hard["image"]).max(-1) == 0
        assert (main | ~_saturated(base["image"][:200])).all()
        np.testing.assert_array_equal(hard["image"][:, 1:7, 1:7], base["image"][:200, 1:7, 1:7])
        # Distractor tones are present and quieter than the sample's own sound.
        diff = hard["audio"].astype(np.float64) - base["audio"][:200]
        rms = lambda x: np.sqrt(np.mean(x * x, axis=1))  # noqa: E731
        assert (rms(diff) > 1e-3).all() and (rms(diff) < rms(base["audio"][:200])).all()
    # A distractor is smaller than a small main object (at most 2/3 of its extent).
    one = ToyWorld(ToyWorldConfig(distractors=1)).batch(range(40), "test")
    base = default_knob_batches["test"]["image"][:40]
    area = (_saturated(one["image"]) & ~_saturated(base)).sum((1, 2))
    small = world.counterfactual(range(40), "test", {"size": "small"})["image"]
    small = _saturated(small).sum((1, 2))
    assert np.median(area) < 0.6 * np.median(small)


def test_distractor_draws_do_not_shift_with_their_number():
    one, two = draw_distractors(0, "train", [3, 4], 1), draw_distractors(0, "train", [3, 4], 2)
    for name in one:
        np.testing.assert_array_equal(one[name][:, 0], two[name][:, 0])


@pytest.fixture(scope="module")
def hard_world():
    return ToyWorld(ToyWorldConfig(**toyworld_config.get_config("hard").world.to_dict()))


def test_hard_world_samples_are_pure(hard_world):
    batch = hard_world.batch(range(40), "train")
    for i in (0, 39):
        single = hard_world.sample(i, "train")
        assert single["image"].tobytes() == batch["image"][i].tobytes()
        assert single["audio"].tobytes() == batch["audio"][i].tobytes()
        assert single["caption"] == batch["caption"][i]
        assert single["labels"] == {f: int(v[i]) for f, v in batch["labels"].items()}
    again = ToyWorld(hard_world.config).batch(range(40), "train")
    assert _bytes(again) == _bytes(batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_train_contrast_pairs_differ_in_one_family(hard_world, family):
    pairs = hard_world.contrast_pairs(family, 32, split="train", seed=5)
    pos, neg = pairs.pos, pairs.neg
    base = hard_world.batch(pos["index"], "train")
    for other in FAMILIES:
        if other != family:
            np.testing.assert_array_equal(pos["labels"][other], neg["labels"][other])
            np.testing.assert_array_equal(pos["labels"][other], base["labels"][other])
    noisy_others = 0
    for row, (cp, cn) in enumerate(zip(pos["caption"], neg["caption"])):
        wp, wn = cp.split(), cn.split()
        assert len(wp) == len(wn) and sum(a != b for a, b in zip(wp, wn)) == 1, (cp, cn)
        qp, qn, qb = parse_caption(cp), parse_caption(cn), parse_caption(base["caption"][row])
        # The contrasted family is named truthfully; the others keep the base caption's words,
        # noise included, identical in pos and neg.
        assert (qp[family], qn[family]) == (pairs.pos_values[row], pairs.neg_values[row])
        for other in FAMILIES:
            if other != family:
                assert qp[other] == qn[other] == qb[other]
                noisy_others += qb[other] != base["labels"][other][row]
    assert noisy_others > 0  # the check above did meet noisy words
    if family == "emblem":  # distractors are identical: only the glyph corner differs
        outside = np.ones((32, 32), bool)
        outside[1:7, 1:7] = False
        np.testing.assert_array_equal(pos["image"][:, outside], neg["image"][:, outside])
    assert all(np.abs(pos["image"] - neg["image"]).reshape(32, -1).max(1) > 0.1)
    assert all(np.abs(pos["audio"] - neg["audio"]).max(1) > 0.01)


def test_counterfactual_names_forced_values(hard_world):
    cf = hard_world.counterfactual(range(100), "train", {"colour": "blue"})
    assert all(parse_caption(c)["colour"] == CONCEPT_FAMILIES["colour"].index("blue")
               for c in cf["caption"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(spurious=1.5), r"spurious must be a probability in \[0, 1\], got 1.5"),
    (dict(spurious=-0.1), r"spurious must be a probability"),
    (dict(spurious="0.5"), r"spurious must be a probability"),
    (dict(caption_noise=2), r"caption_noise must be a probability in \[0, 1\], got 2"),
    (dict(spurious_pair=("colour", "texture")), r"spurious_pair must be two different families"),
    (dict(spurious_pair=("colour", "colour")), r"spurious_pair must be two different families"),
    (dict(spurious_pair=("colour",)), r"spurious_pair must be two different families"),
    (dict(spurious_pair="cs"), r"spurious_pair must be two different families"),
    (dict(spurious_pair=("colour", "emblem")), r"cannot target the unsafe family 'emblem'"),
    (dict(distractors=-1), rf"distractors must be an int in \[0, {MAX_DISTRACTORS}\], got -1"),
    (dict(distractors=MAX_DISTRACTORS + 1), r"distractors must be an int"),
    (dict(distractors=1.5), r"distractors must be an int"),
    (dict(distractors=True), r"distractors must be an int"),
])
def test_bad_knob_values_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToyWorldConfig(**kwargs)


def test_hard_config_only_changes_world_knobs():
    default, hard = toyworld_config.get_config(), toyworld_config.get_config("hard")
    knobs = ("spurious", "caption_noise", "distractors")
    assert all(default.world[k] == ToyWorldConfig.__dataclass_fields__[k].default for k in knobs)
    assert hard.world.spurious > 0 and hard.world.caption_noise > 0 and hard.world.distractors > 0
    assert {k: hard.world[k] for k in knobs} == dict(toyworld_config.HARD_WORLD)
    # Everything else is the default, bar the flag that makes the demo also run a hard world.
    hard_dict, default_dict = hard.to_dict(), default.to_dict()
    for k in knobs:
        hard_dict["world"][k] = default.world[k]
    hard_dict.pop("compare_hard", None)
    default_dict.pop("compare_hard", None)
    assert hard_dict == default_dict
    ToyWorldConfig(**hard.world.to_dict())
    assert toyworld_config.get_config("tiny").train.num_steps < default.train.num_steps
    with pytest.raises(ValueError, match="'hard'"):
        toyworld_config.get_config("huge")
