"""Fitted maps: applying, saving and loading with provenance."""

import numpy as np
import pytest

from mrepe_jax.align.mapped import load_map
from mrepe_jax.align.train import MapTrainConfig, train_map


def _pairs(n=64, d_in=6, d_out=4, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, d_in)).astype(np.float32)
    return src, np.tanh(src @ rng.normal(size=(d_in, d_out))).astype(np.float32)


@pytest.mark.parametrize("kind", ["mrepe", "linear", "procrustes"])
def test_a_saved_map_loads_back_with_identical_outputs(tmp_path, kind):
    src, tgt = _pairs()
    cfg = MapTrainConfig(kind=kind, hidden=8, num_anchors=4, batch_size=16, epochs=2,
                         anchors="data" if kind == "mrepe" else "data+learned")
    fitted = train_map(cfg, src, tgt, source_site="text.proj", target_site="vision.pooled",
                       progress=False, provenance={"model": "toy", "weights_sha256": "ab" * 32,
                                                   "data": "pairs"})
    fitted.save(tmp_path / "m")
    back = load_map(tmp_path / "m")
    np.testing.assert_array_equal(np.asarray(back(src)), np.asarray(fitted(src)))
    assert (back.source_site, back.target_site, back.target_dim) == ("text.proj", "vision.pooled", 4)
    assert back.info["data_sha256"] == fitted.info["data_sha256"] and back.info["seed"] == 0
    assert back.info["config"]["kind"] == kind and "library_version" in back.info


def test_a_map_refuses_the_wrong_site_and_width_and_warns_on_another_model(tmp_path):
    src, tgt = _pairs()
    fitted = train_map(MapTrainConfig(kind="procrustes"), src, tgt, source_site="audio.proj",
                       target_site="text.proj", provenance={"weights_sha256": "ab" * 32})
    with pytest.raises(ValueError, match=r"trained on 'audio.proj' -> 'text.proj' and cannot be "
                                         r"applied at 'vision.proj'"):
        fitted(src, site="vision.proj")
    with pytest.raises(ValueError, match=r"takes width 6, got representations of shape \(64, 5\)"):
        fitted(src[:, :5])
    with pytest.warns(UserWarning, match="params hash ababababab.*applied to cdcdcdcd"):
        fitted(src, site="audio.proj", params_hash="cd" * 32)
    fitted(src, site="audio.proj", params_hash="ab" * 32)  # the same model: no warning


def test_a_tampered_bundle_is_refused(tmp_path):
    src, tgt = _pairs()
    fitted = train_map(MapTrainConfig(kind="procrustes"), src, tgt, source_site="a", target_site="b")
    st, js = fitted.save(tmp_path / "m")
    st.write_bytes(st.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="alignment map bundle .*corrupt or replaced"):
        load_map(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="alignment map bundle file .*nope.safetensors is missing"):
        load_map(tmp_path / "nope")
