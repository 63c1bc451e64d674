"""``models.blip2.preprocess`` against transformers' ``Blip2Processor``, built locally (no downloads).

The checkpoint directories are written here in the layout of ``Salesforce/blip2-opt-2.7b``:
``preprocessor_config.json`` (BlipImageProcessor), ``processor_config.json`` with
``num_query_tokens``, and an OPT-style GPT-2 byte-level BPE tokenizer (``<s> <pad> </s> <unk>`` at
ids 0-3, BOS = EOS = ``</s>``, ``add_bos_token``) whose ``<image>`` is an added special token at the
first id after the vocabulary, as 50265 is in the real one.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer, Blip2Processor

from mrepe_jax.models.blip2.preprocess import (
    Blip2Preprocessor,
    BlipImageConfig,
    load_blip2_tokenizer,
    process,
    tokenize_prompts,
)

try:  # transformers 5 names the PIL backend; its default backend is torchvision when installed.
    from transformers import BlipImageProcessorPil as HFImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import BlipImageProcessor as HFImageProcessor

NQ = 4  # num_query_tokens (32 in the real checkpoints)
HUB_IMAGE_CONFIG = {  # Salesforce/blip2-opt-2.7b's preprocessor_config.json
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "BlipImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "Blip2Processor", "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224},
}
PROMPTS = ["Question: what is in the image? Answer:", "a photo of", "", "A dog ON the grass, éh?"]
_SPECIAL = {"lstrip": False, "rstrip": False, "single_word": False, "special": True}


def _images(seed=0):
    """PIL images of several sizes and modes: RGB (square, landscape, portrait), RGBA, L, LA, P."""
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return rng.integers(0, 256, shape, dtype=np.uint8)

    return [
        Image.fromarray(arr(64, 64, 3)),
        Image.fromarray(arr(37, 91, 3)),  # non-square, odd sizes
        Image.fromarray(arr(120, 45, 4), mode="RGBA"),  # alpha composited onto white
        Image.fromarray(arr(50, 70), mode="L"),
        Image.fromarray(arr(33, 33, 2), mode="LA"),
        Image.fromarray(arr(40, 52, 3)).convert("P"),
    ]


def _write_tokenizer(directory, with_image_token=True):
    """Trains a tiny byte-level BPE and writes vocab.json, merges.txt and an OPT/BLIP-2
    tokenizer_config.json. Returns the vocabulary size (the id ``<image>`` gets)."""
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(directory, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["a photo of a cat", "Question: what is in the image? Answer:", "a dog on the grass"] * 3,
        vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        show_progress=False,
    )
    bpe.save_model(str(directory))
    n_vocab = bpe.get_vocab_size()
    added = {"1": {"content": "<pad>", "normalized": True, **_SPECIAL},
             "2": {"content": "</s>", "normalized": True, **_SPECIAL}}
    if with_image_token:
        added[str(n_vocab)] = {"content": "<image>", "normalized": False, **_SPECIAL}
    config = {"add_bos_token": True, "add_prefix_space": False, "added_tokens_decoder": added,
              "bos_token": "</s>", "eos_token": "</s>", "errors": "replace", "pad_token": "<pad>",
              "processor_class": "Blip2Processor", "tokenizer_class": "GPT2Tokenizer",
              "unk_token": "</s>"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return n_vocab


def _write_checkpoint(directory, image_config=None, nq=NQ, with_image_token=True):
    n_vocab = _write_tokenizer(directory, with_image_token)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(dict(HUB_IMAGE_CONFIG if image_config is None else image_config), f)
    with open(os.path.join(directory, "processor_config.json"), "w") as f:
        json.dump({"num_query_tokens": nq, "processor_class": "Blip2Processor"}, f)
    return n_vocab


def _hf_processor(directory, nq=NQ):
    """HF's processor on the PIL backend (the one we match), from the directory's files."""
    return Blip2Processor(
        HFImageProcessor.from_pretrained(directory, local_files_only=True),
        AutoTokenizer.from_pretrained(directory, local_files_only=True),
        num_query_tokens=nq,
    )


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_config", [
    HUB_IMAGE_CONFIG,
    # Non-square target, bilinear, other mean/std: every field is honoured.
    dict(HUB_IMAGE_CONFIG, size={"height": 48, "width": 80}, resample=2,
         image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4]),
    # A bare int size is a square for BLIP (default_to_square=True), not a shortest edge.
    dict(HUB_IMAGE_CONFIG, size=40, do_normalize=False),
    # Keys left out take BlipImageProcessor's defaults (384x384 bicubic, CLIP mean/std, no crop).
    {"image_processor_type": "BlipImageProcessor"},
])
def test_pixels_match_hf_processor(tmp_path, image_config):
    hf = HFImageProcessor(**{k: v for k, v in image_config.items()
                             if k not in ("image_processor_type", "processor_class")})
    cfg = BlipImageConfig.from_hf_dict(image_config)
    images = _images()
    ours = Blip2Preprocessor(cfg, None, NQ, 0).images(images)
    theirs = hf(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.shape[1:3] == (cfg.size if isinstance(cfg.size, tuple) else (cfg.size,) * 2)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_image_config_defaults_and_round_trip(tmp_path):
    cfg = BlipImageConfig.from_hf_dict({})
    assert cfg.size == (384, 384) and not cfg.do_center_crop and cfg.resample == 3
    cfg = BlipImageConfig(size=(96, 128), image_mean=(0.1, 0.2, 0.3), resample=2)
    cfg.to_dir(tmp_path)
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "BlipImageProcessor"
    assert written["size"] == {"height": 96, "width": 128}
    assert BlipImageConfig.from_dir(tmp_path) == cfg
    hf = HFImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    image = _images()[1]
    np.testing.assert_allclose(
        Blip2Preprocessor(cfg, None, NQ, 0).images(image),
        hf(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1),
        atol=1e-6, rtol=0)


# --- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_text_matches_hf_processor(tmp_path, padding_side):
    n_vocab = _write_checkpoint(tmp_path)
    images = _images()[: len(PROMPTS)]
    hf = _hf_processor(tmp_path)
    kwargs = {} if padding_side == "right" else {"padding_side": "left"}  # right: HF's default
    theirs = hf(images=images, text=PROMPTS, padding=True, return_tensors="np", **kwargs)
    ours = Blip2Preprocessor.from_dir(tmp_path).text(PROMPTS, padding_side=padding_side)
    for name, got in zip(("input_ids", "attention_mask"), ours):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, theirs[name], err_msg=name)

    ids, mask = ours
    image, bos, pad = n_vocab, 2, 1
    lengths = mask.sum(1) - NQ  # each prompt's own length, BOS included
    assert len(set(lengths.tolist())) == len(PROMPTS)  # the prompts really differ in length
    # Every row starts with the NQ image tokens, unmasked, whatever the padding side.
    np.testing.assert_array_equal(ids[:, :NQ], image)
    np.testing.assert_array_equal(mask[:, :NQ], 1)
    for row, n in zip(range(len(PROMPTS)), lengths):
        text = ids[row, NQ:]
        real = text[-n:] if padding_side == "left" else text[:n]
        pads = text[:-n] if padding_side == "left" else text[n:]
        assert real[0] == bos and image not in real and np.all(pads == pad)
        assert (mask[row, NQ:] == 1).sum() == n
    assert (ids[2, NQ:] == bos).sum() == 1 and lengths[2] == 1  # "" is BOS alone


def test_max_length_matches_hf(tmp_path):
    _write_checkpoint(tmp_path)
    hf = _hf_processor(tmp_path)
    images = _images()[: len(PROMPTS)]
    pre = Blip2Preprocessor.from_dir(tmp_path)
    for length, side in ((NQ + 6, "right"), (NQ + 30, "left")):  # truncating, then padding
        theirs = hf(images=images, text=PROMPTS, padding="max_length", truncation=True,
                    max_length=length, padding_side=side, return_tensors="np")
        ids, mask = pre.text(PROMPTS, padding_side=side, max_length=length)
        assert ids.shape == (len(PROMPTS), length)
        np.testing.assert_array_equal(ids, theirs["input_ids"])
        np.testing.assert_array_equal(mask, theirs["attention_mask"])
    with pytest.raises(ValueError, match="no room"):
        pre.text(PROMPTS, max_length=NQ)


def test_process_matches_hf_processor_call(tmp_path):
    _write_checkpoint(tmp_path, dict(HUB_IMAGE_CONFIG, size={"height": 32, "width": 48}))
    images = _images(1)[:3]
    prompts = PROMPTS[:3]
    theirs = _hf_processor(tmp_path)(images=images, text=prompts, padding=True,
                                     padding_side="left", return_tensors="np")
    ours = process(images, prompts, tmp_path)
    assert set(ours) == {"pixel_values", "input_ids", "attention_mask"}
    assert ours["pixel_values"].shape == (3, 32, 48, 3) and ours["pixel_values"].dtype == np.float32
    np.testing.assert_allclose(ours["pixel_values"],
                               theirs["pixel_values"].transpose(0, 2, 3, 1), atol=1e-6, rtol=0)
    for name in ("input_ids", "attention_mask"):
        assert ours[name].dtype == np.int32
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # One image and one string is a batch of one; no prompt is [<image>*N, BOS], what HF's
    # generate builds when it gets no input_ids.
    one = process(images[0], "a photo of", tmp_path)
    np.testing.assert_array_equal(one["input_ids"][0],
                                  ours["input_ids"][1][ours["attention_mask"][1] == 1])
    np.testing.assert_array_equal(one["attention_mask"], 1)
    captions = process(images, None, tmp_path)
    bos, image = 2, ours["input_ids"][0, 0]
    np.testing.assert_array_equal(captions["input_ids"], [[image] * NQ + [bos]] * 3)
    np.testing.assert_array_equal(captions["attention_mask"], 1)


def test_hf_reads_num_query_tokens_where_we_do(tmp_path):
    _write_checkpoint(tmp_path, nq=7)
    hf = Blip2Processor.from_pretrained(tmp_path, local_files_only=True)
    pre = Blip2Preprocessor.from_dir(tmp_path)
    assert hf.num_query_tokens == pre.num_query_tokens == 7
    assert pre.image_token_id == hf.tokenizer.convert_tokens_to_ids("<image>")
    ids, _ = pre.text(["a cat"])
    np.testing.assert_array_equal(ids, hf(images=_images()[:1], text=["a cat"],
                                          return_tensors="np")["input_ids"])


def test_transformers5_saved_layout(tmp_path):
    """transformers 5 saves tokenizer.json and nests the image settings in processor_config.json
    (no preprocessor_config.json); both are read, and give the same outputs."""
    _write_checkpoint(tmp_path / "hub", dict(HUB_IMAGE_CONFIG, size={"height": 40, "width": 24}))
    _hf_processor(tmp_path / "hub").save_pretrained(tmp_path / "saved")
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert "preprocessor_config.json" not in saved and "tokenizer.json" in saved
    images, prompts = _images()[:2], PROMPTS[:2]
    a = process(images, prompts, tmp_path / "hub")
    b = process(images, prompts, tmp_path / "saved")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_bare_vocab_and_merges_load_as_opt(tmp_path):
    _write_checkpoint(tmp_path / "full")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("vocab.json", "merges.txt"):
        (bare / f).write_bytes((tmp_path / "full" / f).read_bytes())
    ours = tokenize_prompts(load_blip2_tokenizer(bare), PROMPTS, NQ, 999)
    theirs = tokenize_prompts(load_blip2_tokenizer(tmp_path / "full"), PROMPTS, NQ, 999)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    vocab = json.loads((bare / "vocab.json").read_text())
    del vocab["<pad>"]
    (bare / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"lacks OPT's special tokens \['<pad>'\]"):
        load_blip2_tokenizer(bare)


def test_tokenizer_without_image_token_gets_hf_id(tmp_path):
    n_vocab = _write_checkpoint(tmp_path, with_image_token=False)
    hf = _hf_processor(tmp_path)  # adds "<image>" itself
    theirs = hf(images=_images()[:2], text=PROMPTS[:2], padding=True, return_tensors="np")
    pre = Blip2Preprocessor.from_dir(tmp_path)
    assert pre.image_token_id == n_vocab
    np.testing.assert_array_equal(pre.text(PROMPTS[:2], "right")[0], theirs["input_ids"])


# --- errors ------------------------------------------------------------------------------------


def test_missing_files_name_the_path_and_file(tmp_path):
    _write_checkpoint(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"no preprocessor_config.json in .*{tmp_path.name}"):
        Blip2Preprocessor.from_dir(tmp_path)
    _write_checkpoint(tmp_path)
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / f).unlink()
    with pytest.raises(FileNotFoundError, match=f"no tokenizer files in .*{tmp_path.name}.*"
                                                "tokenizer.json, or vocab.json \\+ merges.txt"):
        Blip2Preprocessor.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.* does not exist"):
        process(_images()[:1], "a", tmp_path / "nowhere")


def test_num_query_tokens_errors_say_what_to_set(tmp_path):
    _write_checkpoint(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Blip2Processor"}))
    (tmp_path / "config.json").write_text(json.dumps({"num_query_tokens": 5}))
    with pytest.raises(ValueError, match='processor_config.json has no num_query_tokens: set '
                                         '"num_query_tokens": 5 in'):
        Blip2Preprocessor.from_dir(tmp_path)
    (tmp_path / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match='no processor_config.json in .*set "num_query_'):
        Blip2Preprocessor.from_dir(tmp_path)
    assert Blip2Preprocessor.from_dir(tmp_path, num_query_tokens=5).num_query_tokens == 5
    # config.json disagreeing with the processor files is refused, naming the key.
    with pytest.raises(ValueError, match="config.json has num_query_tokens=5, but .* give 6"):
        Blip2Preprocessor.from_dir(tmp_path, num_query_tokens=6)
    (tmp_path / "config.json").write_text(json.dumps({"image_token_index": 3}))
    with pytest.raises(ValueError, match="config.json has image_token_index=3"):
        Blip2Preprocessor.from_dir(tmp_path, num_query_tokens=5)


def test_bad_inputs_name_the_index(tmp_path):
    _write_checkpoint(tmp_path, dict(HUB_IMAGE_CONFIG, size={"height": 16, "width": 16}))
    pre = Blip2Preprocessor.from_dir(tmp_path)
    images = _images()[:2]
    with pytest.raises(TypeError, match="image 1: expected a PIL image or a uint8 numpy array, "
                                        "got str"):
        pre([images[0], "cat.png"], ["a", "b"])
    with pytest.raises(TypeError, match="image 0: arrays must be uint8"):
        pre([np.zeros((8, 8, 3), np.float32)], ["a"])
    with pytest.raises(TypeError, match="prompt 1: expected a string, got int"):
        pre(images, ["a", 3])
    with pytest.raises(ValueError, match="got 2 images and 3 prompts"):
        pre(images, ["a", "b", "c"])
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        pre(images, ["a", "b"], padding_side="middle")
