"""Conversion and loading: round trips, and clear errors for every way a checkpoint can be wrong."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mrepe_jax.models import hf_files
from mrepe_jax.models.clip import convert as clip_convert
from mrepe_jax.models.convert import ConversionError
from tests.models.hf_tiny import random_batch, tiny_hf_clip
from tests.models.params import flat


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_clip(3, eos_token_id=40, hidden_act="gelu")


@pytest.fixture
def saved_dir(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    return tmp_path / "ckpt"



def test_load_from_transformers_directory_matches_in_memory(saved_dir, hf_model):
    model, params = clip_convert.load_pretrained(saved_dir)
    _, params_mem = clip_convert.from_torch_model(hf_model)
    a, b = flat(params), flat(params_mem)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert model.config.text_config.eos_token_id == 40


def test_save_pretrained_round_trip_is_bit_exact_and_readable_by_transformers(tmp_path, hf_model):
    model, params = clip_convert.from_torch_model(hf_model)
    out_dir = clip_convert.save_pretrained(tmp_path / "ours", model.config, params)
    model2, params2 = clip_convert.load_pretrained(out_dir)
    assert model2.config == model.config
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # transformers reads our directory too, and computes the same logits
    reloaded = transformers.CLIPModel.from_pretrained(out_dir).eval()
    pixels, ids, mask = random_batch(hf_model, 1)
    with torch.no_grad():
        args = dict(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask))
        np.testing.assert_allclose(reloaded(**args).logits_per_text, hf_model(**args).logits_per_text,
                                   atol=1e-6)


def test_load_pretrained_scanned_and_save_back(tmp_path, hf_model):
    from mrepe_jax.models.execution import Execution

    model, params = clip_convert.from_torch_model(hf_model)
    out_dir = clip_convert.save_pretrained(tmp_path / "ours", model.config, params)
    scanned, stacked = clip_convert.load_pretrained(out_dir, execution=Execution(scan_layers=True))
    assert scanned.execution.scan_layers
    n = model.config.vision_config.num_hidden_layers
    assert flat(stacked)[("vision_model", "encoder", "layers", "mlp", "fc1", "kernel")].shape[0] == n
    # Saving the stacked params writes the same checkpoint as the per-layer ones.
    again = clip_convert.save_pretrained(tmp_path / "again", scanned.config, stacked)
    _, params2 = clip_convert.load_pretrained(again)
    a, b = flat(params), flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _edit_checkpoint(directory, fn):
    f = directory / "model.safetensors"
    tensors = dict(load_file(f))
    fn(tensors)
    save_file(tensors, f)


def test_missing_key_is_named(saved_dir):
    _edit_checkpoint(saved_dir, lambda t: t.pop("vision_model.encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(ConversionError, match=r"1 missing parameter\(s\): "
                                              r"vision_model/encoder/layers/1/mlp/fc2/bias"):
        clip_convert.load_pretrained(saved_dir)


def test_extra_key_is_named(saved_dir):
    _edit_checkpoint(saved_dir, lambda t: t.update({"vision_model.extra_head.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ConversionError, match=r"1 unused checkpoint key\(s\): vision_model.extra_head.weight"):
        clip_convert.load_pretrained(saved_dir)


def test_shape_mismatch_names_key_and_both_shapes(saved_dir):
    _edit_checkpoint(saved_dir, lambda t: t.update(
        {"text_model.encoder.layers.0.self_attn.q_proj.weight": np.zeros((32, 16), np.float32)}))
    with pytest.raises(ConversionError, match=r"text_model.encoder.layers.0.self_attn.q_proj.weight: "
                                              r"checkpoint \(32, 16\) -> \(16, 32\) but "
                                              r"text_model/encoder/layers/0/self_attn/q_proj/kernel "
                                              r"expects \(32, 32\)"):
        clip_convert.load_pretrained(saved_dir)


def test_all_problems_reported_at_once(saved_dir):
    def damage(t):
        t.pop("logit_scale")
        t["bogus"] = np.zeros(1, np.float32)
    _edit_checkpoint(saved_dir, damage)
    with pytest.raises(ConversionError) as e:
        clip_convert.load_pretrained(saved_dir)
    assert "bogus" in str(e.value) and "logit_scale" in str(e.value)


def test_offline_hub_id_fails_naming_what_it_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(FileNotFoundError, match=r"could not load 'openai/clip-vit-base-patch32': no local "
                                                r"directory .*openai/clip-vit-base-patch32.*offline"):
        clip_convert.load_pretrained("openai/clip-vit-base-patch32", local_files_only=True)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_convert.load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json in checkpoint directory"):
        clip_convert.load_pretrained(tmp_path / "empty")


def test_pickled_weights_are_refused(saved_dir):
    (saved_dir / "model.safetensors").rename(saved_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickled weights .*never unpickles"):
        hf_files.read_state_dict(saved_dir)


def test_sharded_checkpoint(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, params = clip_convert.load_pretrained(tmp_path / "sharded")
    _, params_mem = clip_convert.from_torch_model(hf_model)
    for k, v in flat(params_mem).items():
        np.testing.assert_array_equal(flat(params)[k], v)
