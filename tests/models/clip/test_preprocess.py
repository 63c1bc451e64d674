"""``models.clip.preprocess`` against transformers' CLIP image processor and tokenizer, built locally."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mrepe_jax.models.clip.preprocess import (
    ImagePreprocessConfig,
    load_tokenizer,
    preprocess_images,
    tokenize,
)

try:  # transformers 5 names the numpy/PIL backend explicitly; older versions have one class.
    from transformers import CLIPImageProcessorPil as HFImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor as HFImageProcessor

HF_CONFIG = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "do_resize": True,
    "do_center_crop": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "do_convert_rgb": True,
}


def _images(seed=0):
    """Random images of several sizes, aspect ratios and modes (RGB, L, RGBA, P, LA, arrays)."""
    rng = np.random.default_rng(seed)

    def arr(h, w, c):
        shape = (h, w) if c is None else (h, w, c)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    return [
        Image.fromarray(arr(300, 400, 3)),  # landscape, RGB
        Image.fromarray(arr(517, 233, 3)),  # portrait, odd sizes
        Image.fromarray(arr(224, 224, 3)),  # already the target size
        Image.fromarray(arr(100, 150, 3)),  # upscaled
        Image.fromarray(arr(250, 260, None), mode="L"),  # greyscale
        Image.fromarray(arr(331, 297, 4), mode="RGBA"),  # alpha composited onto white
        Image.fromarray(arr(240, 320, 2), mode="LA"),
        Image.fromarray(arr(256, 256, 3)).convert("P"),  # palette
        arr(230, 410, 3),  # uint8 HWC arrays
        arr(305, 229, 4),
        arr(260, 240, None),
    ]


def _hf_input(image):
    # HF takes no 2-D arrays; a trailing channel axis of 1 is the same greyscale image to it.
    return image[..., None] if isinstance(image, np.ndarray) and image.ndim == 2 else image


@pytest.mark.parametrize("hf_config", [
    HF_CONFIG,
    # A non-square crop, an int size and a different mean/std: every config field is honoured.
    dict(HF_CONFIG, size=192, crop_size={"height": 160, "width": 192},
         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    # Crop larger than the resized image: HF zero-pads.
    dict(HF_CONFIG, size={"shortest_edge": 64}, crop_size={"height": 96, "width": 80}),
    dict(HF_CONFIG, resample=2, do_normalize=False),
])
def test_matches_hf_image_processor(hf_config):
    hf = HFImageProcessor(**hf_config)
    cfg = ImagePreprocessConfig.from_hf_dict(hf_config)
    for i, image in enumerate(_images()):
        ours = preprocess_images([image], cfg)
        theirs = hf(images=[_hf_input(image)], return_tensors="np")["pixel_values"]
        theirs = theirs.transpose(0, 2, 3, 1)  # HF is NCHW
        assert ours.dtype == np.float32 and ours.shape == theirs.shape, (i, ours.shape, theirs.shape)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=f"image {i}")


def test_batch_matches_hf_and_is_nhwc():
    images = _images(1)
    cfg = ImagePreprocessConfig.from_hf_dict(HF_CONFIG)
    ours = preprocess_images(images, cfg)
    hf = HFImageProcessor(**HF_CONFIG)
    theirs = hf(images=[_hf_input(i) for i in images], return_tensors="np")["pixel_values"]
    assert ours.shape == (len(images), 224, 224, 3)
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
    # A single image (not in a list) is a batch of one.
    np.testing.assert_array_equal(preprocess_images(images[0], cfg), ours[:1])


def test_config_from_dir_reads_hf_saved_config(tmp_path):
    hf = HFImageProcessor(**dict(HF_CONFIG, crop_size={"height": 200, "width": 180}))
    hf.save_pretrained(tmp_path)
    cfg = ImagePreprocessConfig.from_dir(tmp_path)
    assert cfg.size == 224 and cfg.crop_size == (200, 180) and cfg.resample == 3
    assert cfg.image_mean == pytest.approx(HF_CONFIG["image_mean"])
    assert cfg.rescale_factor == pytest.approx(1 / 255)


def test_config_round_trip(tmp_path):
    cfg = ImagePreprocessConfig(size=(256, 320), crop_size=(224, 288), image_mean=(0.1, 0.2, 0.3),
                                image_std=(0.4, 0.5, 0.6), resample=2, do_normalize=False)
    file = cfg.to_dir(tmp_path)
    assert os.path.basename(file) == "preprocessor_config.json"
    assert ImagePreprocessConfig.from_dir(tmp_path) == cfg
    # HF reads what we write, and preprocesses the same way.
    hf = HFImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    image = _images()[0]
    np.testing.assert_allclose(
        preprocess_images([image], cfg),
        hf(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1),
        atol=1e-5, rtol=0,
    )


def test_int_sizes_in_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 256, "crop_size": 224}))
    cfg = ImagePreprocessConfig.from_dir(tmp_path)
    assert cfg.size == 256 and cfg.crop_size == (224, 224)


def test_config_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json in .*" + tmp_path.name):
        ImagePreprocessConfig.from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: not valid JSON"):
        ImagePreprocessConfig.from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"foo": 3}}))
    with pytest.raises(ValueError, match="preprocessor_config.json: malformed .*size"):
        ImagePreprocessConfig.from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5]}))
    with pytest.raises(ValueError, match="image_mean must have 3 values"):
        ImagePreprocessConfig.from_dir(tmp_path)


def test_bad_images_are_refused():
    cfg = ImagePreprocessConfig()
    with pytest.raises(TypeError, match="image 1: arrays must be uint8"):
        preprocess_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], cfg)
    with pytest.raises(ValueError, match="image 0: expected a HW or HWC array"):
        preprocess_images([np.zeros((3, 8, 8, 2), np.uint8)], cfg)
    with pytest.raises(ValueError, match="different shapes"):
        preprocess_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)],
                          ImagePreprocessConfig(do_center_crop=False))


# --- tokenizer -------------------------------------------------------------------------------


def _write_tiny_bpe(directory):
    """A CLIP BPE vocabulary with a handful of tokens: single letters (word-internal and
    word-final ``</w>`` forms), the merges for ``cat`` and ``dog``, and the two special tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "acdgot":
        vocab[ch] = len(vocab)
    for ch in "acdgot":
        vocab[ch + "</w>"] = len(vocab)
    merges = ["c a", "ca t</w>", "d o", "do g</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


@pytest.mark.parametrize("resave", [False, True])
def test_load_tokenizer_and_tokenize(tmp_path, resave):
    from transformers import CLIPTokenizer

    vocab = _write_tiny_bpe(tmp_path / "bpe")
    path = tmp_path / "bpe"
    if resave:  # the layout transformers' save_pretrained writes (tokenizer.json + config)
        tok = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        tok.save_pretrained(tmp_path / "saved")
        path = tmp_path / "saved"
    tok = load_tokenizer(path)
    ids, mask = tokenize(tok, ["a cat", "Dog  dog cat", "cat " * 20], max_length=8)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    a, cat, dog = vocab["a</w>"], vocab["cat</w>"], vocab["dog</w>"]
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 8)
    np.testing.assert_array_equal(ids[0], [bos, a, cat, eos, eos, eos, eos, eos])  # pad = EOS
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[1], [bos, dog, dog, cat, eos, eos, eos, eos])  # lowercased
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 1, 1, 0, 0, 0])
    # Truncation keeps EOS last, which CLIP's EOS pooling relies on.
    np.testing.assert_array_equal(ids[2], [bos] + [cat] * 6 + [eos])
    np.testing.assert_array_equal(mask[2], [1] * 8)
    # Default: padded to CLIP's 77 positions; a single string is a batch of one.
    ids77, mask77 = tokenize(tok, "a cat")
    assert ids77.shape == mask77.shape == (1, 77) and mask77.sum() == 4
    ids_longest, _ = tokenize(tok, ["a", "a cat dog"], pad_to_max_length=False)
    assert ids_longest.shape == (2, 5)


def test_load_tokenizer_missing_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "vocab.json").write_text("{}")  # vocab without merges is not enough
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "tokenizer.json" in msg and "vocab.json + merges.txt" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
