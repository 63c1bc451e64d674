"""The concept gallery stage (experiments/toyworld/gallery.py) on a tiny untrained CLIP and
captioner: extremes ranked by their projection, patch heat that adds up to the token-mean
projection, steering examples that did move, captions before and after, PNGs written."""

import jax
import numpy as np
import pytest
from PIL import Image

from configs import toyworld as toyworld_config
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.experiments.toyworld import captioning, gallery, identify
from mrepe_jax.experiments.toyworld.pipeline import train_config
from mrepe_jax.train import captioner, toyclip, zero_shot
from tests.train.test_captioner import tiny_cfg

SIZES = {"train": 96, "validation": 64, "test": 64}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    config = toyworld_config.get_config("tiny")
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    cfg = train_config(config)
    model = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    params = jax.device_get(toyclip.init_state(model, world, cfg).params)
    splits = {s: world.batch(range(n), split=s) for s, n in SIZES.items()}
    labels = {s: world.labels(range(n), s) for s, n in SIZES.items()}
    reps = identify.split_reps(model, params, splits)
    ident = identify.identify(model, world, reps, labels)
    prompts = zero_shot.prompt_embeddings(model, params, world)
    cap_cfg = tiny_cfg()
    cap = captioner.ToyCaptioner(captioner.model_config(world, model, cap_cfg))
    cap_params = jax.device_get(captioner.init_state(cap, world, cap_cfg).params)
    reads = captioning.query_reads(cap, cap_params, captioner.vision_states(model, params, splits["train"]["image"]))
    workdir = tmp_path_factory.mktemp("gallery")
    out = gallery.run(model, params, world, reps, labels, splits["test"], ident, prompts, config.control,
                      workdir, (cap, cap_params, reads))
    return out, reps, ident, splits, labels, model, workdir, world


def test_pure_pieces():
    top, bottom = gallery.extremes(np.array([0.3, -1.0, 2.0, 0.3, 0.0]), 2)
    assert top.tolist() == [2, 0] and bottom.tolist() == [1, 4]
    cls, grid = gallery.patch_grid(np.arange(5.0), (2, 2))
    assert cls == 0.0 and grid.tolist() == [[1.0, 2.0], [3.0, 4.0]]  # CLS first, then row-major
    with pytest.raises(ValueError, match="1 \\+ 2 x 2 token projections"):
        gallery.patch_grid(np.arange(4.0), (2, 2))
    moved = gallery.moved_rows(before=[0, 1, 2, 2, 2], after=[2, 2, 2, 2, 0], truth=[0, 1, 2, 0, 1],
                               target=2, n=5)
    assert moved.tolist() == [0, 1]  # row 2 is the target, row 3 was already predicted as it


def test_extremes_are_ranked_by_the_projection_and_their_heat_adds_up(stage):
    out, reps, ident, splits, labels, model, workdir, world = stage
    assert set(out["towers"]) == {"vision", "text", "audio"}
    v = out["towers"]["vision"]["colour"]
    assert v["site"] == ident["direction_site"]["vision"]["colour"] and v["grid"] == [4, 4]  # 32 px / 8
    assert v["heat_site"] == "vision.layers.0.resid_post"  # the tiny CLIP's only layer
    heat_dir = gallery.value_directions(reps["train"]["vision"][v["heat_site"]], labels["train"]["colour"], 4)
    rank_dir = gallery.value_directions(reps["train"]["vision"][v["site"]], labels["train"]["colour"], 4)
    assert set(v["values"]) == set(world.families["colour"])
    for c, sides in enumerate(v["values"].values()):
        top, bottom = sides["top"], sides["bottom"]
        assert len(top) == len(bottom) == gallery.PER_SIDE
        scores = [ex["score"] for ex in top + bottom]
        assert scores[:4] == sorted(scores[:4], reverse=True) and top[-1]["score"] >= bottom[0]["score"]
        # The score is the best site's projection; nothing in the test split scores higher.
        all_scores = reps["test"]["vision"][v["site"]] @ rank_dir[c]
        assert top[0]["score"] == pytest.approx(all_scores.max(), abs=1e-3)
        assert bottom[0]["score"] == pytest.approx(all_scores.min(), abs=1e-3)
        for ex in top + bottom:
            grid = np.asarray(ex["heat"])
            assert grid.shape == (4, 4)
            # CLS + patches average to the token-mean's projection, which identification read.
            assert (ex["cls"] + grid.sum()) / 17 == pytest.approx(ex["token_mean"], abs=1e-3)
            read = reps["test"]["vision"][v["heat_site"]][ex["index"]] @ heat_dir[c]
            assert ex["token_mean"] == pytest.approx(read, abs=1e-3)
            assert ex["truth"] == world.families["colour"][labels["test"]["colour"][ex["index"]]]
            png = workdir / ex["image"]
            assert ex["image"] == f"gallery/concepts/vision_{ex['index']:05d}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 4000
    # Audio: the spectrogram the tower reads, [frames, mels] = [64, 32] in patches of 16.
    a = out["towers"]["audio"]["size"]
    assert a["grid"] == [4, 2] and a["heat_site"] == "audio.layers.0.resid_post"
    for ex in a["values"]["large"]["top"]:
        assert np.asarray(ex["heat"]).shape == (4, 2)
        assert (ex["cls"] + np.sum(ex["heat"])) / 9 == pytest.approx(ex["token_mean"], abs=1e-3)
        read = reps["test"]["audio"][a["heat_site"]][ex["index"]] @ gallery.value_directions(
            reps["train"]["audio"][a["heat_site"]], labels["train"]["size"], 3)[2]
        assert ex["token_mean"] == pytest.approx(read, abs=1e-3)
        assert Image.open(workdir / ex["image"]).size == (32, 64)  # mel bands across, frames down
    t = out["towers"]["text"]["shape"]["values"]["circle"]["top"][0]
    ids, mask = splits["test"]["input_ids"][t["index"]], splits["test"]["attention_mask"][t["index"]]
    assert t["tokens"][0] == "<bos>" and len(t["tokens"]) == len(t["heat"]) == mask.sum()
    assert " ".join(t["tokens"][1:-1]) == world.tokenizer.decode(ids)
    assert np.mean(t["heat"]) == pytest.approx(t["token_mean"], abs=1e-3)


def test_steering_examples_moved_to_the_target(stage):
    out, *_ , world = stage
    steering = out["steering"]
    assert steering["alpha"] == 1.0 and steering["num_inputs"] == 16
    for tower in ("vision", "text", "audio"):
        fams = steering["towers"][tower]["families"]
        assert set(fams) == set(world.families)
        for per_value in fams.values():
            for value, r in per_value.items():
                assert 0 <= r["success"] <= 1 and 0 <= r["unedited"] <= 1
                for ex in r["examples"]:
                    assert ex["after"] == value != ex["before"] and ex["truth"] != value
                    assert ("image" in ex) == (tower != "text") and ("tokens" in ex) == (tower == "text")
    caps = steering["captions"]
    assert caps["site"] == "qformer.layers.0.resid_post"
    ex = caps["families"]["colour"]["red"]["examples"][0]
    assert isinstance(ex["before"], str) and isinstance(ex["after"], str) and ex["truth"] != "red"
    assert out["seconds"] > 0
