"""BLIP-2 checkpoints: ``save_pretrained`` / ``load_pretrained`` round trips (ours and transformers'),
sharded safetensors read shard by shard, and a clear error for each way a checkpoint can be wrong."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mrepe_jax.models import hf_files
from mrepe_jax.models.blip2 import convert as blip2_convert
from mrepe_jax.models.convert import ConversionError
from mrepe_jax.models.execution import Execution
from tests.models.blip2.test_parity import converted, hf_blip2, nhwc, prompt
from tests.models.params import assert_same_params, flat

NAME = "xattn2_opt2"




@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """transformers' own save_pretrained directory of the tiny model."""
    d = tmp_path_factory.mktemp("hf") / "ckpt"
    hf_blip2(NAME).save_pretrained(d)
    return d


def test_the_table_uses_every_key_of_a_transformers_checkpoint(hf_dir):
    keys = list(load_file(hf_dir / "model.safetensors"))
    assert "query_tokens" in keys and "language_projection.weight" in keys
    assert "language_model.model.decoder.layers.1.fc2.weight" in keys
    assert "language_model.lm_head.weight" not in keys  # tied: transformers does not write it
    model, params = blip2_convert.load_pretrained(hf_dir)
    assert model.config == converted(NAME)[0].config
    assert_same_params(params, converted(NAME)[1])
    assert flat(params)[("query_tokens",)].shape == (1, 4, 32)
    assert flat(params)[("language_projection", "kernel")].shape == (32, 40)


def test_save_pretrained_round_trip_and_transformers_reads_it(tmp_path):
    model, params = converted(NAME)
    out_dir = blip2_convert.save_pretrained(tmp_path / "ours", model.config, params)
    model2, params2 = blip2_convert.load_pretrained(out_dir)
    assert model2.config == model.config
    assert_same_params(params, params2)
    reloaded = transformers.Blip2ForConditionalGeneration.from_pretrained(out_dir).eval()
    reloaded.config._attn_implementation = "eager"
    pixels, ids, mask = prompt()
    with torch.no_grad():
        ref = reloaded(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).logits.numpy()
        orig = hf_blip2(NAME)(pixel_values=torch.tensor(pixels), input_ids=torch.tensor(ids),
                              attention_mask=torch.tensor(mask)).logits.numpy()
    ours, _ = model2.apply({"params": params2}, nhwc(pixels), ids, mask)
    np.testing.assert_allclose(ref, orig, atol=1e-6)  # every tensor arrived, the lm_head tied
    assert np.abs(np.asarray(ours["logits"]) - ref).max() <= 1e-5


def test_scanned_vision_loads_and_saves_back(tmp_path, hf_dir):
    scanned, stacked = blip2_convert.load_pretrained(hf_dir, execution=Execution(scan_layers=True))
    layers = flat(stacked)[("vision_model", "encoder", "layers", "mlp", "fc1", "kernel")]
    assert scanned.execution.scan_layers and layers.shape[0] == 2
    pixels, ids, mask = prompt()
    out, _ = scanned.apply({"params": stacked}, nhwc(pixels), ids, mask)
    model, params = converted(NAME)
    ref, _ = model.apply({"params": params}, nhwc(pixels), ids, mask)
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=1e-5)
    again = blip2_convert.save_pretrained(tmp_path / "again", scanned.config, stacked)
    assert_same_params(blip2_convert.load_pretrained(again)[1], converted(NAME)[1])


def test_sharded_checkpoint_is_read_shard_by_shard(tmp_path, monkeypatch):
    d = tmp_path / "sharded"
    hf_blip2(NAME).save_pretrained(d, max_shard_size="20KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (d / "model.safetensors").exists()
    opened, open_now, most = [], [0], [0]
    real_open = hf_files.safe_open

    class Counting:  # records every shard opened and how many are open at once
        def __init__(self, path, framework):
            self.handle = real_open(path, framework=framework)
            opened.append(str(path))

        def __enter__(self):
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
            return self.handle.__enter__()

        def __exit__(self, *exc):
            open_now[0] -= 1
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(hf_files, "safe_open", Counting)
    _, params = blip2_convert.load_pretrained(d)
    assert_same_params(params, converted(NAME)[1])
    # headers once per shard, then the tensors once per shard, one shard open at a time
    assert len(opened) == 2 * len(shards) and most[0] == 1


def _damaged(src, dst, fn):
    """A copy of checkpoint directory ``src`` whose tensors ``fn`` changed."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = dict(load_file(src / "model.safetensors"))
    fn(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_missing_key_is_named(hf_dir, tmp_path):
    d = _damaged(hf_dir, tmp_path / "d", lambda t: t.pop("qformer.encoder.layer.2.crossattention.attention.key.bias"))
    with pytest.raises(ConversionError, match=r"1 missing parameter\(s\): "
                                              r"qformer/encoder/layer/2/crossattention/attention/key/bias"):
        blip2_convert.load_pretrained(d)


def test_unused_key_is_named(hf_dir, tmp_path):
    # layer 1 of a Q-Former with cross_attention_frequency 2 has no cross-attention
    extra = "qformer.encoder.layer.1.crossattention.attention.key.bias"
    d = _damaged(hf_dir, tmp_path / "d", lambda t: t.update({extra: np.zeros(32, np.float32)}))
    with pytest.raises(ConversionError, match=rf"1 unused checkpoint key\(s\): {extra}"):
        blip2_convert.load_pretrained(d)


def test_wrong_language_projection_shape_names_key_and_shapes(hf_dir, tmp_path):
    d = _damaged(hf_dir, tmp_path / "d",
                 lambda t: t.update({"language_projection.weight": np.zeros((48, 32), np.float32)}))
    with pytest.raises(ConversionError, match=r"language_projection.weight: checkpoint \(48, 32\) -> \(32, 48\) "
                                              r"but language_projection/kernel expects \(32, 40\)"):
        blip2_convert.load_pretrained(d)


def test_untied_lm_head_is_refused(hf_dir, tmp_path):
    def untie(t):
        t["language_model.lm_head.weight"] = t["language_model.model.decoder.embed_tokens.weight"] + 1.0
    with pytest.raises(ConversionError, match=r"language_model.lm_head.weight .* untied lm_head"):
        blip2_convert.load_pretrained(_damaged(hf_dir, tmp_path / "d", untie))


def test_pickled_weights_are_refused(hf_dir, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save({"query_tokens": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds only pickled weights \(pytorch_model.bin\); mrepe_jax never "
                                         r"unpickles"):
        blip2_convert.load_pretrained(d)


def test_offline_hub_id_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(FileNotFoundError, match=r"could not load 'Salesforce/blip2-opt-2.7b': no local directory "
                                                r"'.*Salesforce/blip2-opt-2.7b'.*offline"):
        blip2_convert.load_pretrained("Salesforce/blip2-opt-2.7b", local_files_only=True)


def test_flan_t5_checkpoint_config_is_refused(hf_dir, tmp_path):
    d = tmp_path / "t5"
    d.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config["text_config"] = {"model_type": "t5", "d_model": 40}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'t5' language model .* is not supported"):
        blip2_convert.load_pretrained(d)
