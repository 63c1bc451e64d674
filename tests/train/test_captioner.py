"""The ToyWorld captioner trains, resumes exactly, generates in one program and is scored right."""

import jax
import ml_collections
import numpy as np
import pytest

from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.data.toyworld.concepts import FAMILIES
from mrepe_jax.models.trimodal import TriModalCLIP
from mrepe_jax.train import captioner, loop, toyclip
from tests.models.params import flat


def clip_cfg(width=16):
    return ml_collections.ConfigDict(dict(
        hidden_size=width, mlp_size=32, num_layers=1, num_heads=2, patch_size=8, audio_patch_size=16,
        projection_dim=8, seed=0, learning_rate=1e-3, warmup_steps=0, num_steps=1, weight_decay=0.0))


def tiny_cfg(**overrides):
    cfg = dict(qformer_hidden_size=16, qformer_layers=1, qformer_heads=2, qformer_mlp_size=32,
               num_query_tokens=2, cross_attention_frequency=1, lm_hidden_size=16, lm_layers=1,
               lm_heads=2, lm_ffn_dim=32, learning_rate=3e-3, warmup_steps=1, weight_decay=0.0,
               num_steps=6, batch_size=16, pool_size=48, seed=0, checkpoint_every=2)
    return ml_collections.ConfigDict({**cfg, **overrides})


# The trained fixture's run; the resume test repeats it (one compiled step serves both).
TRAINED = tiny_cfg(num_steps=40, checkpoint_every=40)


def make_clip(world, width=16):
    # An untrained CLIP: the captioner's mechanics do not depend on what its vision tower learnt.
    model = TriModalCLIP(toyclip.model_config(world, clip_cfg(width)))
    return model, jax.device_get(toyclip.init_state(model, world, clip_cfg(width)).params)


@pytest.fixture(scope="module")
def setup():
    world = ToyWorld(ToyWorldConfig())
    clip, clip_params = make_clip(world)
    pool = captioner.render_pool(world, clip, clip_params, 48)
    return world, clip, clip_params, pool


@pytest.fixture(scope="module")
def trained(setup):
    world, clip, clip_params, pool = setup
    return captioner.train(world, clip, clip_params, TRAINED, progress=False, pool=pool)



def test_pool_holds_the_clip_vision_last_hidden_state(setup):
    world, clip, clip_params, pool = setup
    # 32x32 images, 8x8 patches: 16 patches + CLS, CLIP width 16; captions are the world's tokens.
    assert pool["image_embeds"].shape == (48, 17, 16)
    b = world.batch(range(3), split="train")
    last = jax.jit(lambda p, x: clip.apply({"params": p}, "vision", x, method="encode",
                                           capture=("vision.layers.0.resid_post",))[1])
    np.testing.assert_allclose(pool["image_embeds"][:3],
                               last(clip_params, b["image"])["vision.layers.0.resid_post"], atol=1e-5)
    np.testing.assert_array_equal(pool["input_ids"][:3], b["input_ids"])
    # What fit compiles the step from while the pool renders: the batches' own shapes.
    assert captioner.batch_spec(world, clip, clip_params, 16) == loop.spec_of(
        captioner.batch_fn(lambda: pool, 16, 0)(2))


def test_training_lowers_the_loss(trained):
    _, _, info = trained
    losses = info["losses"]
    assert len(losses) == 40 and info["steps"] == 40
    assert losses[-5:].mean() < losses[:5].mean() - 0.5, losses


def test_loss_ignores_padding_and_image_tokens(setup, trained):
    world, _, _, pool = setup
    model, params, _ = trained
    batch = {k: v[:4] for k, v in pool.items()}
    loss_fn = jax.jit(captioner.loss_fn, static_argnums=0)  # eager, every op compiles alone
    loss, _ = loss_fn(model, params, batch)
    ids = batch["input_ids"].copy()
    ids[batch["attention_mask"] == 0] = 10  # a word where there was padding after EOS
    loss2, _ = loss_fn(model, params, dict(batch, input_ids=ids))
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)
    wrong = batch["input_ids"].copy()
    wrong[:, 2] = (wrong[:, 2] + 1 - 4) % (world.tokenizer.vocab_size - 4) + 4  # another word
    assert float(loss_fn(model, params, dict(batch, input_ids=wrong))[0]) != float(loss)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, setup, trained):
    world, clip, clip_params, pool = setup
    _, straight, _ = trained  # the uninterrupted run
    _, _, first = captioner.train(world, clip, clip_params, TRAINED, tmp_path, progress=False,
                                  stop_after=17, pool=pool)
    assert first["steps"] == 17
    _, resumed, info = captioner.train(world, clip, clip_params, TRAINED, tmp_path, progress=False,
                                       pool=pool)
    assert info["resumed_from_step"] == 17 and info["steps"] == 40 and info["steps_run"] == 23
    a, b = flat(straight), flat(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0.003, now 0.002"):
        captioner.train(world, clip, clip_params, tiny_cfg(num_steps=40, learning_rate=2e-3), tmp_path,
                        progress=False, pool=pool)


def test_generation_compiles_once(setup, trained):
    world, clip, clip_params, _ = setup
    model, params, _ = trained
    images = [world.batch(range(s, s + 4), split="test")["image"] for s in (0, 4, 8)]
    ids = captioner.generate_captions(model, params, clip, clip_params, images[0], 5)
    before = captioner._generate._cache_size()
    for im in images[1:]:
        again = captioner.generate_captions(model, params, clip, clip_params, im, 5)
    assert captioner._generate._cache_size() == before  # new images: no retrace
    assert ids.shape == again.shape == (4, 5)
    assert ids.min() >= 0 and ids.max() < model.config.text_config.vocab_size
    np.testing.assert_array_equal(
        ids, captioner.generate_captions(model, params, clip, clip_params, images[0], 5))


def test_greedy_decode_matches_teacher_forced_argmax(setup, trained):
    # The cached decode and a full forward agree: the first generated word is the argmax after BOS.
    world, clip, clip_params, _ = setup
    model, params, _ = trained
    pixels = world.batch(range(4), split="test")["image"]
    ids = captioner.generate_captions(model, params, clip, clip_params, pixels, 5)
    embeds = captioner.vision_states(clip, clip_params, pixels)
    prompt = np.asarray(captioner.default_prompt(model.config, 4))
    out, _ = jax.jit(model.apply)({"params": params}, embeds, prompt)
    np.testing.assert_array_equal(ids[:, 0], np.argmax(np.asarray(out["logits"][:, -1]), -1))


def test_caption_accuracy_covers_every_family(setup, trained):
    world, clip, clip_params, _ = setup
    model, params, _ = trained
    acc, examples = captioner.caption_accuracy(model, params, world, clip, clip_params, "test", n=5,
                                               batch_size=4, num_examples=2)
    assert set(acc) == set(FAMILIES)
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert len(examples) == 2 and all(isinstance(e["caption"], str) for e in examples)


def test_score_caption_by_hand():
    truth = {"colour": "red", "shape": 1, "size": "large", "position": "left", "emblem": "sun"}
    good = captioner.score_caption("a photo of a huge crimson box on the left with a sunburst mark",
                                   truth)
    assert good == {f: True for f in FAMILIES}
    bad = captioner.score_caption("a red blue square towards the right with a sun mark", truth)
    assert bad == {"colour": False, "shape": True, "size": False, "position": False, "emblem": True}
    assert not any(captioner.score_caption("", truth).values())
    # decode drops specials and the image token, and stops at EOS
    world = ToyWorld(ToyWorldConfig())
    tok = world.tokenizer
    row = [tok.vocab_size, tok.token_id("red"), tok.token_id("box"), tok.eos_token_id, tok.token_id("sun")]
    assert captioner.decode(world, row) == "red box"


def test_named_values_reads_ids_as_score_caption_reads_words():
    world = ToyWorld(ToyWorldConfig())
    tok = world.tokenizer
    captions = ["a huge crimson box on the left with a sunburst mark",
                "a red blue square towards the right with a sun mark", "", "a dagger"]
    ids = np.stack([np.pad(tok.encode([c], 14)[0][0][1:], (0, 1)) for c in captions])
    ids[0, -1] = tok.vocab_size  # the image token names nothing
    said = captioner.named_values(world, ids[None])  # any leading shape
    truth = {"colour": 0, "shape": 1, "size": 2, "position": 0, "emblem": 4}
    for row, caption in enumerate(captions):
        expect = captioner.score_caption(caption, truth)
        assert {f: said[f][0, row] == truth[f] for f in FAMILIES} == expect, caption
    assert said["colour"][0].tolist() == [0, -1, -1, -1]  # one value; two values; none; none
    assert said["emblem"][0].tolist() == [4, 4, -1, 2]
    with pytest.raises(ValueError, match=r"caption ids must lie in \[0, \d+\]"):
        captioner.named_values(world, [[-1]])


def test_bad_inputs_give_clear_errors(setup, trained):
    world, clip, clip_params, pool = setup
    model, params, _ = trained
    wide_clip = TriModalCLIP(toyclip.model_config(world, clip_cfg(32)))
    with pytest.raises(ValueError, match=r"encoder_hidden_size=16.*hidden_size=32"):
        captioner.caption_accuracy(model, params, world, wide_clip, clip_params, n=2)
    with pytest.raises(ValueError, match=r"needs n >= 1 samples of split 'test'"):
        captioner.caption_accuracy(model, params, world, clip, clip_params, "test", n=0)
    with pytest.raises(ValueError, match=r"unknown split 'tset'"):
        captioner.caption_accuracy(model, params, world, clip, clip_params, "tset", n=2)
    with pytest.raises(ValueError, match=r"pool_size >= 1"):
        captioner.render_pool(world, clip, clip_params, 0)
    with pytest.raises(ValueError, match=r"pool of 48 samples is smaller than one batch of 64"):
        captioner.train(world, clip, clip_params, tiny_cfg(batch_size=64), progress=False, pool=pool)
