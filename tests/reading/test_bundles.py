"""Direction bundles round-trip bit-exactly with their provenance; broken bundles fail loudly."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.reading import bundles as B


def provenance(**kw):
    p = dict(model="tiny-clip", weights_sha256="ab" * 32, site="vision.layers.1.resid_post",
             method="mean_diff", concept="colour=red", sign="pos_minus_neg", data_seed=0)
    p.update(kw)
    return p


def directions():
    rng = np.random.default_rng(0)
    d = {
        "red": rng.normal(size=32).astype(np.float32),
        "blue": jnp.asarray(rng.normal(size=32), jnp.float32),
        "stack": rng.normal(size=(3, 16)).astype(np.float64),
        "half": rng.normal(size=8).astype(np.float16),
    }
    d["red"][3] = np.float32(-0.0)
    d["red"][4] = np.nextafter(np.float32(1), np.float32(2))  # not representable in fewer bits
    return d


def test_round_trip_is_bit_exact(tmp_path):
    d = directions()
    st, js = B.save_bundle(tmp_path / "sub" / "colour", d, provenance(extra={"alpha": 0.1}))
    assert st.name == "colour.safetensors" and js.name == "colour.json"
    loaded, prov = B.load_bundle(tmp_path / "sub" / "colour")
    assert sorted(loaded) == sorted(d)
    for k, v in d.items():
        v = np.asarray(v)
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert loaded[k].tobytes() == v.tobytes(), k
    for k, v in provenance(extra={"alpha": 0.1}).items():
        assert prov[k] == v
    assert set(B.AUTO_KEYS) <= set(prov)
    assert prov["library_version"]
    # The suffix form names the same bundle.
    again, _ = B.load_bundle(tmp_path / "sub" / "colour.safetensors")
    assert again["stack"].tobytes() == loaded["stack"].tobytes()
    assert not list((tmp_path / "sub").glob("*.tmp*"))


def test_params_hash_is_canonical():
    a = {"b": {"k": np.ones((2, 3), np.float32)}, "a": np.arange(4, dtype=np.int32)}
    b = {"a": jnp.arange(4), "b": {"k": jnp.ones((2, 3), jnp.float32)}}
    assert B.params_hash(a) == B.params_hash(b)
    assert len(B.params_hash(a)) == 64
    c = {"a": np.arange(4, dtype=np.int32), "b": {"k": np.ones((2, 3), np.float32) + np.float32(1e-7)}}
    assert B.params_hash(a) != B.params_hash(c)
    # Same bytes under a different name or shape are different parameters.
    assert B.params_hash({"x": np.arange(4)}) != B.params_hash({"y": np.arange(4)})
    assert B.params_hash({"x": np.arange(4)}) != B.params_hash({"x": np.arange(4).reshape(2, 2)})


def test_missing_files_name_the_path(tmp_path):
    B.save_bundle(tmp_path / "b", directions(), provenance())
    (tmp_path / "b.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "b.json")):
        B.load_bundle(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.safetensors")):
        B.load_bundle(tmp_path / "nope")


def test_corrupt_bundles_are_refused(tmp_path):
    B.save_bundle(tmp_path / "b", directions(), provenance())
    st, js = tmp_path / "b.safetensors", tmp_path / "b.json"
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 1
    st.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{st}.*corrupt or replaced"):
        B.load_bundle(tmp_path / "b")
    js.write_text("{not json")
    with pytest.raises(ValueError, match=f"{js} is not valid JSON"):
        B.load_bundle(tmp_path / "b")
    B.save_bundle(tmp_path / "c", directions(), provenance())
    meta = json.loads((tmp_path / "c.json").read_text())
    del meta["site"], meta["data_seed"]
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"c.json lacks required keys \['site', 'data_seed'\]"):
        B.load_bundle(tmp_path / "c")


def test_save_validates_provenance(tmp_path):
    p = provenance()
    del p["method"]
    with pytest.raises(ValueError, match=r"lacks required keys \['method'\]"):
        B.save_bundle(tmp_path / "b", directions(), p)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        B.save_bundle(tmp_path / "b", directions(), provenance(data_seed=object()))
    with pytest.raises(ValueError, match="no directions"):
        B.save_bundle(tmp_path / "b", {}, provenance())
    assert not list(tmp_path.iterdir())
