"""Bad inputs fail at the model's edge with errors that name them (issue 7, item 7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models.tiny import tiny_clip


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_token_ids_outside_the_vocabulary_are_refused(clip):
    model, v, pixels, ids, mask = clip
    with pytest.raises(ValueError, match=r"input_ids given to the text tower hold 1 ids outside the "
                                         r"vocabulary \[0, 100\), the first 100 at index \(0, 2\)"):
        model.apply(v, pixels, ids.at[0, 2].set(100), mask)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 100\), the first -1 at index "
                                         r"\(1, 1\)"):
        model.apply(v, pixels, ids.at[1, 1].set(-1), mask)
    with pytest.raises(ValueError, match="must be integers, got dtype float32"):
        model.apply(v, pixels, ids.astype(jnp.float32), mask)


def test_under_jit_out_of_range_ids_give_nan_never_another_token(clip):
    model, v, pixels, ids, mask = clip
    f = jax.jit(lambda i: model.apply(v, pixels, i, mask)[0]["text_embeds"])
    clean = np.asarray(f(ids))
    for bad in (-1, -100, 100, 10**6):
        out = np.asarray(f(ids.at[0, 2].set(bad)))
        assert np.all(np.isnan(out[0])), f"id {bad} must not wrap to a real token"
        np.testing.assert_array_equal(out[1], clean[1])  # the other example is untouched


def test_mask_of_another_shape_is_refused(clip):
    model, v, pixels, ids, mask = clip
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 4\) does not match input_ids "
                                         r"of shape \(2, 5\) in the text tower"):
        model.apply(v, pixels, ids, mask[:, :4])
    with pytest.raises(ValueError, match=r"attention_mask of shape \(5,\)"):
        jax.jit(lambda m: model.apply(v, pixels, ids, m))(mask[0])  # shapes are checked under jit


def test_empty_batches_are_refused(clip):
    model, v, pixels, ids, mask = clip
    with pytest.raises(ValueError, match=r"the vision tower got an empty batch: pixel_values of shape "
                                         r"\(0, 16, 16, 3\)"):
        model.apply(v, pixels[:0], ids, mask)
    with pytest.raises(ValueError, match=r"the text tower got an empty batch: input_ids of shape \(0, 5\)"):
        model.apply(v, pixels, ids[:0], mask[:0])
    with pytest.raises(ValueError, match="empty batch"):
        jax.jit(lambda p: model.apply(v, p, ids, mask))(pixels[:0])


def test_non_finite_pixels_are_refused(clip):
    model, v, pixels, ids, mask = clip
    with pytest.raises(ValueError, match=r"pixel_values given to the vision tower hold 2 non-finite "
                                         r"values \(NaN or inf\), the first at index \(0, 1, 2, 0\)"):
        model.apply(v, pixels.at[0, 1, 2, 0].set(jnp.nan).at[1, 0, 0, 1].set(jnp.inf), ids, mask)


def test_non_finite_audio_is_refused():
    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.models.trimodal import TriModalCLIP
    from mrepe_jax.train import toyclip
    from tests.train.test_toyclip import tiny_cfg

    world = ToyWorld(ToyWorldConfig())
    model = TriModalCLIP(toyclip.model_config(world, tiny_cfg()))
    b = world.batch(range(2), split="train")
    v = jax.jit(model.init)(jax.random.key(0), b["image"], b["input_ids"], b["attention_mask"], b["audio"])
    audio = np.array(b["audio"])
    audio[1, 10] = np.nan
    with pytest.raises(ValueError, match=r"audio waveforms given to the audio tower hold 1 non-finite "
                                         r"values .* at index \(1, 10\)"):
        model.apply(v, "audio", audio, method="encode")
    with pytest.raises(ValueError, match="the audio tower got an empty batch"):
        model.apply(v, "audio", audio[:0], method="encode")


def test_nchw_pixels_are_named_nchw_with_the_transpose_that_fixes_them(clip):
    model, v, pixels, ids, mask = clip
    nchw = pixels.transpose(0, 3, 1, 2)  # [2, 3, 16, 16], HF's layout
    with pytest.raises(ValueError, match=r"expected NHWC \[batch, height, width, channels\] = "
                                         r"\[batch, 16, 16, 3\] for the model, got pixel_values of shape "
                                         r"\(2, 3, 16, 16\): this batch looks NCHW .* pass "
                                         r"pixel_values\.transpose\(0, 2, 3, 1\)"):
        model.apply(v, nchw, ids, mask)
    np.testing.assert_array_equal(model.apply(v, nchw.transpose(0, 2, 3, 1), ids, mask)[0]["image_embeds"],
                                  model.apply(v, pixels, ids, mask)[0]["image_embeds"])


def test_pixels_of_another_size_name_the_expected_layout_and_not_nchw(clip):
    model, v, pixels, ids, mask = clip
    for bad in (pixels[:, :8], pixels[..., :1], pixels[0]):
        with pytest.raises(ValueError, match=r"expected NHWC \[batch, height, width, channels\]") as e:
            model.apply(v, bad, ids[:len(bad)], mask[:len(bad)])
        assert str(tuple(bad.shape)) in str(e.value) and "NCHW" not in str(e.value)


def test_blip2_vision_tower_names_an_nchw_batch():
    from mrepe_jax.models.blip2.vision import Blip2VisionConfig, Blip2VisionModel

    model = Blip2VisionModel(Blip2VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=8, patch_size=4))
    with pytest.raises(ValueError, match=r"expected NHWC .* for the BLIP-2 vision tower, got pixel_values "
                                         r"of shape \(1, 3, 8, 8\): this batch looks NCHW .* "
                                         r"pixel_values\.transpose\(0, 2, 3, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 8, 8)))


def test_one_missing_tower_input_is_refused_with_the_one_tower_call(clip):
    model, v, pixels, ids, mask = clip
    with pytest.raises(ValueError, match=r"input_ids is None.*method='encode'"):
        model.apply(v, pixels, None, None)
    with pytest.raises(ValueError, match=r"pixel_values is None"):
        model.apply(v, None, ids, mask)
    emb, captures = model.apply(v, "vision", pixels, method="encode")
    assert emb.shape == (2, 16) and captures == {}
