"""CLAP checkpoints: our ``save_pretrained`` read back by us and by transformers, scanned text layers,
sharded safetensors, and a clear error for each way a checkpoint can be wrong (named with the
checkpoint's own keys, although the text layers are renamed on the way in)."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mrepe_jax.models.clap import convert as clap_convert
from mrepe_jax.models.convert import ConversionError
from mrepe_jax.models.execution import Execution
from tests.models.clap.hf_tiny import random_inputs, tiny_hf_clap
from tests.models.params import assert_same_params, flat

torch.set_num_threads(1)
NAME = "fused"  # the config with every kind of parameter (fusion convolutions and batch norms)


@functools.cache
def converted():
    return clap_convert.from_torch_model(tiny_hf_clap(NAME))




@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "ckpt"
    tiny_hf_clap(NAME).save_pretrained(d)
    return d


def _edit_checkpoint(directory, fn):
    f = directory / "model.safetensors"
    tensors = dict(load_file(f))
    fn(tensors)
    save_file(tensors, f)


def test_the_table_reads_every_tensor_of_a_transformers_checkpoint(hf_dir):
    keys = set(load_file(hf_dir / "model.safetensors"))
    assert "text_model.encoder.layer.2.output.LayerNorm.weight" in keys
    assert "audio_model.audio_encoder.patch_embed.fusion_model.global_att.5.running_var" in keys
    model, params = clap_convert.load_pretrained(hf_dir)
    assert model.config == converted()[0].config
    assert_same_params(params, converted()[1])
    p = flat(params)
    assert p[("text_model", "encoder", "layers", "2", "output", "LayerNorm", "scale")].shape == (32,)
    assert p[("audio_model", "audio_encoder", "patch_embed", "mel_conv2d", "kernel")].shape == (4, 12, 1, 8)
    assert p[("audio_model", "audio_encoder", "layers", "0", "blocks", "1", "attention", "self",
              "relative_position_bias_table")].shape == (49, 1)


def test_save_pretrained_round_trip_and_transformers_reads_it(tmp_path):
    model, params = converted()
    out_dir = clap_convert.save_pretrained(tmp_path / "ours", model.config, params)
    model2, params2 = clap_convert.load_pretrained(out_dir)
    assert model2.config == model.config
    assert_same_params(params, params2)
    # transformers loads every tensor (buffers included) and computes what the original computes.
    reloaded, info = transformers.ClapModel.from_pretrained(out_dir, output_loading_info=True)
    assert not any(info.values()), info
    hf = tiny_hf_clap(NAME)
    features, is_longer, ids, mask = random_inputs(NAME, seed=3)
    args = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                input_features=torch.tensor(features), is_longer=torch.tensor(is_longer))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded.eval()(**args).logits_per_audio, hf(**args).logits_per_audio)
    saved = load_file(out_dir / "model.safetensors")
    assert set(saved) == set(hf.state_dict())
    for key, value in hf.state_dict().items():
        np.testing.assert_array_equal(saved[key], value.numpy(), err_msg=key)


def test_scanned_text_layers_load_run_and_save_back(tmp_path, hf_dir):
    scanned, stacked = clap_convert.load_pretrained(hf_dir, execution=Execution(scan_layers=True))
    assert flat(stacked)[("text_model", "encoder", "layers", "output", "dense", "kernel")].shape == (3, 48, 32)
    model, params = converted()
    features, is_longer, ids, mask = random_inputs(NAME)
    text = jax.jit(lambda m, p: m.apply({"params": p}, "text", ids, mask, method="encode")[0], static_argnums=0)
    np.testing.assert_allclose(text(scanned, stacked), text(model, params), atol=1e-5)
    with pytest.raises(ValueError, match="per-layer params .* stack_layer_params"):
        scanned.apply({"params": params}, "text", ids, mask, method="encode")
    again = clap_convert.save_pretrained(tmp_path / "again", scanned.config, stacked)
    assert_same_params(clap_convert.load_pretrained(again)[1], params)


def test_sharded_checkpoint(tmp_path):
    tiny_hf_clap(NAME).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_same_params(clap_convert.load_pretrained(tmp_path / "sharded")[1], converted()[1])


def test_pickled_weights_are_refused_with_the_conversion_command(hf_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"only pickled weights \(pytorch_model.bin\).*never unpickles.*"
                                         r"save_pretrained\(dir, safe_serialization=True\)"):
        clap_convert.load_pretrained(d)


def test_missing_unused_and_mismatched_keys_are_named_as_the_checkpoint_names_them(tmp_path, hf_dir):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    (d / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())

    def damage(t):
        t.pop("text_model.encoder.layer.1.output.dense.bias")
        t.pop("audio_model.audio_encoder.batch_norm.running_mean")
        t["text_model.encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
        t["audio_model.audio_encoder.layers.1.blocks.0.attention.self.query.weight"] = np.zeros((16, 8), np.float32)
    _edit_checkpoint(d, damage)
    with pytest.raises(ConversionError) as e:
        clap_convert.load_pretrained(d)
    message = str(e.value)
    assert "1 unused checkpoint key(s): text_model.encoder.layer.0.extra.weight" in message
    assert ("3 missing parameter(s): audio_model/audio_encoder/batch_norm/running_mean, "
            "audio_model/audio_encoder/layers/1/blocks/0/attention/self/query/kernel, "  # the mismatched one
            "text_model/encoder/layers/1/output/dense/bias") in message
    assert ("audio_model.audio_encoder.layers.1.blocks.0.attention.self.query.weight: checkpoint (16, 8) -> "
            "(8, 16) but audio_model/audio_encoder/layers/1/blocks/0/attention/self/query/kernel expects "
            "(16, 16)") in message


def test_offline_hub_id_and_missing_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(FileNotFoundError, match=r"could not load 'laion/clap-htsat-unfused': no local directory "
                                                r".*laion/clap-htsat-unfused.*offline"):
        clap_convert.load_pretrained("laion/clap-htsat-unfused", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clap_convert.load_pretrained(tmp_path / "nowhere" / "ckpt")
