"""SAELens' saved format (issue 26, item 4): our SAEs round-trip through it, and directories written
to SAELens' spec (v6 and v5 cfg.json, safetensors weights) load and compute what SAELens computes."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from mrepe_jax.features import sae as sae_lib
from mrepe_jax.features import saelens

D_IN, D_SAE = 8, 16


def _ours(arch: str, seed: int = 0) -> dict:
    """Our params for ``arch``, untied and off their init (so a swapped or transposed tensor shows)."""
    rng = np.random.default_rng(seed)
    cfg = sae_lib.SAEConfig(D_IN, D_SAE, arch)
    p = {k: np.asarray(v) for k, v in sae_lib.init_params(cfg, jax.random.key(seed),
                                                           rng.standard_normal((32, D_IN))).items()}
    p["W_enc"] = rng.standard_normal((D_IN, D_SAE)).astype(np.float32) * 0.5
    p["W_dec"] = p["W_dec"] * rng.uniform(0.5, 2.0, (D_SAE, 1)).astype(np.float32)
    p["b_enc"] = rng.normal(0, 0.3, D_SAE).astype(np.float32)
    p["b_dec"] = rng.normal(0, 0.3, D_IN).astype(np.float32)
    if arch == "jumprelu":
        p["log_threshold"] = np.log(rng.uniform(0.05, 0.5, D_SAE)).astype(np.float32)
    if arch == "batchtopk":
        p["threshold"] = rng.uniform(0.0, 0.4, D_SAE).astype(np.float32)
    return p


def _x(seed: int = 1, n: int = 6) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, D_IN)) * 2).astype(np.float32)


def _saelens_forward(cfg: dict, w: dict, x: np.ndarray):
    """SAELens' forward pass (5.11 ``SAE.encode_*``/``decode``; 6.x ``StandardSAE``, ``TopKSAE``,
    ``JumpReLUSAE``) in float64 numpy, written from their source, independent of ``features.sae``."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    sae_in = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    rescale = arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    if arch == "topk" or act == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        pre = pre * norms if rescale else pre
        idx = np.argsort(-pre, axis=-1)[:, :k]
        z = np.zeros_like(pre)
        np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    elif arch == "jumprelu":
        z = np.maximum(pre, 0) * (pre > w["threshold"])
    else:
        z = np.maximum(pre, 0)
    zd = z / norms if rescale else z
    if "finetuning_scaling_factor" in w:
        zd = zd * w["finetuning_scaling_factor"]
    return z, zd @ w["W_dec"] + w["b_dec"]


def _ours_forward(params: dict, meta: dict, x: np.ndarray):
    cfg = sae_lib.SAEConfig(meta["d_in"], meta["d_sae"], meta["architecture"])
    member = sae_lib.Member.of(meta["d_sae"], k=meta["k"] or 0)
    z = sae_lib.encode(params, x, cfg, member)
    return np.asarray(z), np.asarray(sae_lib.decode(params, z))


def _write(directory, cfg, weights, sparsity=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg) if isinstance(cfg, dict) else cfg)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
              str(directory / "sae_weights.safetensors"))
    if sparsity is not None:
        save_file({"sparsity": np.asarray(sparsity, np.float32)}, str(directory / "sparsity.safetensors"))
    return directory


def _theirs(arch: str, seed: int = 3, d_in: int = D_IN, d_sae: int = D_SAE) -> dict:
    rng = np.random.default_rng(seed)
    w = {"W_enc": rng.standard_normal((d_in, d_sae)) * 0.5, "b_enc": rng.normal(0, 0.3, d_sae),
         "W_dec": rng.standard_normal((d_sae, d_in)) * rng.uniform(0.2, 2.0, (d_sae, 1)),
         "b_dec": rng.normal(0, 0.3, d_in)}
    if arch == "jumprelu":
        w["threshold"] = rng.uniform(-0.2, 0.5, d_sae)  # SAELens allows negative thresholds
    return {k: np.asarray(v, np.float32) for k, v in w.items()}


# SAELens 6.54.12's cfg.json for a JumpReLU SAE its LLM runner trained (``save_inference_model``:
# ``get_inference_sae_cfg_dict`` + ``_set_sae_metadata`` + training info), keys verbatim.
V6_JUMPRELU_CFG = {
    "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
    "normalize_activations": "none", "reshape_activations": "none", "architecture": "jumprelu",
    "metadata": {
        "sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", "dataset_path": "NeelNanda/pile-10k",
        "hook_name": "blocks.3.hook_resid_post", "model_name": "gpt2", "model_class_name": "HookedTransformer",
        "hook_head_index": None, "context_size": 128, "seqpos_slice": [None], "model_from_pretrained_kwargs": {},
        "prepend_bos": True, "exclude_special_tokens": False, "sequence_separator_token": "bos",
        "disable_concat_sequences": False, "training_architecture": "jumprelu",
        "training_architecture_details": {"jumprelu_init_threshold": 0.01, "jumprelu_bandwidth": 0.05,
                                          "decoder_init_norm": 0.1},
        "l0": 12.5, "num_dead_features": 0,
    },
}

# SAELens 5.11.0's ``SAEConfig.to_dict`` for a standard SAE, keys verbatim; apply_b_dec_to_input false
# (as in several released SAEs) so the loader's fold of b_dec into b_enc is exercised.
V5_STANDARD_CFG = {
    "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
    "model_name": "gpt2-small", "hook_name": "blocks.2.hook_resid_pre", "hook_layer": 2, "hook_head_index": None,
    "activation_fn_str": "relu", "activation_fn_kwargs": {}, "apply_b_dec_to_input": False,
    "finetuning_scaling_factor": False, "sae_lens_training_version": "5.11.0", "prepend_bos": True,
    "dataset_path": "Skylion007/openwebtext", "dataset_trust_remote_code": True, "context_size": 128,
    "normalize_activations": "none", "neuronpedia_id": None, "model_from_pretrained_kwargs": {},
    "seqpos_slice": [None],
}


# --- our SAEs, round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sae_lib.ARCHITECTURES)
def test_round_trip_each_architecture(tmp_path, arch):
    p = _ours(arch)
    k = 3 if arch in ("topk", "batchtopk") else None
    sparsity = np.log10(np.random.default_rng(0).uniform(1e-4, 0.5, D_SAE) + 1e-10)
    out = saelens.save_saelens(tmp_path / arch, p, architecture=arch, hook_name="vision.layers.3.resid_post",
                               model_name="toyworld-clip", k=k, sparsity=sparsity, dataset="toyworld")
    assert sorted(f.name for f in out.iterdir()) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]

    params, meta = saelens.load_saelens(out)
    expected = {k_: np.asarray(v, np.float32) for k_, v in sae_lib.saelens_params(p).items()}
    assert sorted(params) == sorted(expected)
    for key in expected:
        assert params[key].dtype == np.float32
        np.testing.assert_array_equal(params[key], expected[key], err_msg=key)
    assert {key: meta[key] for key in ("architecture", "saelens_architecture", "d_in", "d_sae", "k", "hook_name",
                                       "model_name", "apply_b_dec_to_input", "normalize_activations")} == {
        "architecture": arch, "saelens_architecture": saelens.TO_SAELENS[arch], "d_in": D_IN, "d_sae": D_SAE,
        "k": k, "hook_name": "vision.layers.3.resid_post", "model_name": "toyworld-clip",
        "apply_b_dec_to_input": True, "normalize_activations": "none"}
    assert meta["conversions"] == []
    np.testing.assert_array_equal(meta["sparsity"], sparsity.astype(np.float32))

    x = _x()
    cfg = sae_lib.SAEConfig(D_IN, D_SAE, arch)
    member = sae_lib.Member.of(D_SAE, k=k or 0)
    z_want = sae_lib.encode(p, x, cfg, member)
    z, x_hat = _ours_forward(params, meta, x)
    assert np.count_nonzero(z) > 0 and np.count_nonzero(z) < z.size  # a test that can tell encoders apart
    np.testing.assert_array_equal(z, np.asarray(z_want))
    np.testing.assert_array_equal(x_hat, np.asarray(sae_lib.decode(p, z_want)))
    # SAELens computes the same from the saved files.
    z_sl, x_hat_sl = _saelens_forward(meta["cfg"], params, x)
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl, atol=1e-5)


def test_saving_over_a_directory_drops_the_old_sparsity(tmp_path):
    saelens.save_saelens(tmp_path, _ours("relu"), architecture="relu", hook_name="vision.embed",
                         sparsity=np.full(D_SAE, -1.0))
    saelens.save_saelens(tmp_path, _ours("relu", seed=1), architecture="relu", hook_name="vision.embed")
    params, meta = saelens.load_saelens(tmp_path)
    assert "sparsity" not in meta
    np.testing.assert_array_equal(params["b_enc"], _ours("relu", seed=1)["b_enc"])


def test_saved_cfg_has_the_v5_and_v6_keys(tmp_path):
    out = saelens.save_saelens(tmp_path, _ours("topk"), architecture="topk", hook_name="text.layers.11.resid_post",
                               k=4, extra={"context_size": 77, "prepend_bos": False})
    cfg = json.loads((out / "cfg.json").read_text())
    assert set(saelens.V5_KEYS) <= set(cfg), set(saelens.V5_KEYS) - set(cfg)
    assert set(saelens.V6_KEYS + saelens.V6_TOPK_KEYS) <= set(cfg)
    md = cfg["metadata"]
    assert {"sae_lens_version", "model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos",
            "dataset_path", "seqpos_slice", "model_from_pretrained_kwargs"} <= set(md)
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    assert cfg["activation_fn_str"] == "topk" and cfg["activation_fn_kwargs"] == {"k": 4}
    assert cfg["hook_layer"] == 11 and cfg["hook_name"] == md["hook_name"] == "text.layers.11.resid_post"
    assert cfg["context_size"] == md["context_size"] == 77 and md["prepend_bos"] is False
    assert md["sae_lens_version"].startswith("6.") and cfg["dtype"] == "float32"
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["finetuning_scaling_factor"] is False and cfg["reshape_activations"] == "none"


def test_batchtopk_saves_as_jumprelu_with_scalar_threshold(tmp_path):
    p = _ours("batchtopk")
    p["threshold"] = np.float32(0.15)  # one threshold for every latent
    out = saelens.save_saelens(tmp_path, p, architecture="batchtopk", hook_name="vision.pooled", k=2)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["activation_fn_str"] == "relu" and cfg["hook_layer"] == 0
    assert cfg["metadata"]["training_architecture"] == "batchtopk"
    params, meta = saelens.load_saelens(out)
    np.testing.assert_array_equal(params["threshold"], np.full(D_SAE, 0.15, np.float32))
    assert meta["architecture"] == "batchtopk" and meta["k"] == 2


# --- directories written to SAELens' spec ---------------------------------------------------------


def test_load_v6_jumprelu(tmp_path):
    w = _theirs("jumprelu")
    sparsity = np.full(D_SAE, -2.5, np.float32)
    params, meta = saelens.load_saelens(_write(tmp_path, V6_JUMPRELU_CFG, w, sparsity))
    assert meta["architecture"] == "jumprelu" and meta["k"] is None
    assert meta["hook_name"] == "blocks.3.hook_resid_post" and meta["model_name"] == "gpt2"
    assert meta["sae_lens_version"] == "6.54.12" and meta["cfg"] == V6_JUMPRELU_CFG
    assert meta["conversions"] == ["negative jumprelu thresholds raised to 0 (same outputs)"]
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(params[key], w[key], err_msg=key)
    np.testing.assert_array_equal(params["threshold"], np.maximum(w["threshold"], 0))
    np.testing.assert_array_equal(meta["sparsity"], sparsity)
    x = _x()
    z, x_hat = _ours_forward(params, meta, x)
    z_sl, x_hat_sl = _saelens_forward(V6_JUMPRELU_CFG, w, x)
    assert np.count_nonzero(z_sl) > 0
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl, atol=1e-5)


def test_load_v6_batchtopk_saved_as_jumprelu(tmp_path):
    cfg = json.loads(json.dumps(V6_JUMPRELU_CFG))
    cfg["metadata"]["training_architecture"] = "batchtopk"
    cfg["metadata"]["training_architecture_details"] = {"k": 4.0, "topk_threshold_lr": 0.01}
    w = _theirs("jumprelu")
    params, meta = saelens.load_saelens(_write(tmp_path, cfg, w))
    assert meta["architecture"] == "batchtopk" and meta["k"] == 4 and meta["conversions"] == []
    np.testing.assert_array_equal(params["threshold"], w["threshold"])  # ReLU * (pre > t) is ours as is
    x = _x()
    for got, want in zip(_ours_forward(params, meta, x), _saelens_forward(cfg, w, x)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_load_v6_topk_rescaled_by_decoder_norm(tmp_path):
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "k": 3,
           "rescale_acts_by_decoder_norm": True, "architecture": "topk",
           "metadata": {"sae_lens_version": "6.3.0", "hook_name": "blocks.0.hook_mlp_out", "model_name": "gpt2"}}
    w = _theirs("topk")
    params, meta = saelens.load_saelens(_write(tmp_path, cfg, w))
    assert meta["architecture"] == "topk" and meta["k"] == 3
    assert meta["conversions"] == ["rescale_acts_by_decoder_norm: decoder norms folded (SAELens' fold_W_dec_norm)"]
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=-1), 1.0, rtol=1e-6)
    x = _x()
    z, x_hat = _ours_forward(params, meta, x)
    z_sl, x_hat_sl = _saelens_forward(cfg, w, x)
    assert (np.count_nonzero(z, axis=-1) == 3).all()
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl, atol=1e-5)


def test_load_v5_standard_without_b_dec_on_input(tmp_path):
    w = _theirs("standard")
    params, meta = saelens.load_saelens(_write(tmp_path, V5_STANDARD_CFG, w))
    assert meta["architecture"] == "relu" and meta["saelens_architecture"] == "standard"
    assert meta["hook_name"] == "blocks.2.hook_resid_pre" and meta["model_name"] == "gpt2-small"
    assert meta["apply_b_dec_to_input"] is False and meta["sae_lens_version"] is None
    assert meta["conversions"] == ["apply_b_dec_to_input=false: b_dec @ W_enc folded into b_enc"]
    x = _x()
    z, x_hat = _ours_forward(params, meta, x)
    z_sl, x_hat_sl = _saelens_forward(V5_STANDARD_CFG, w, x)
    assert np.count_nonzero(z_sl) > 0
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl, atol=1e-5)


def test_load_v5_topk_from_activation_fn_kwargs_with_scaling_factor(tmp_path):
    cfg = {**V5_STANDARD_CFG, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5},
           "apply_b_dec_to_input": True, "finetuning_scaling_factor": True}
    cfg.pop("architecture")  # pre-5 configs had none: SAELens defaults to "standard"
    w = _theirs("topk")
    w["scaling_factor"] = np.random.default_rng(5).uniform(0.5, 1.5, D_SAE).astype(np.float32)
    params, meta = saelens.load_saelens(_write(tmp_path, cfg, w))
    assert meta["architecture"] == "topk" and meta["k"] == 5
    assert meta["conversions"] == ["scaling_factor folded into W_dec"]
    x = _x()
    w_sl = {**w, "finetuning_scaling_factor": w.pop("scaling_factor")}
    for got, want in zip(_ours_forward(params, meta, x), _saelens_forward(cfg, w_sl, x)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_load_v5_all_ones_scaling_factor_is_dropped(tmp_path):
    w = {**_theirs("standard"), "scaling_factor": np.ones(D_SAE, np.float32)}
    params, meta = saelens.load_saelens(_write(tmp_path, {**V5_STANDARD_CFG, "apply_b_dec_to_input": True}, w))
    assert meta["conversions"] == [] and "scaling_factor" not in params
    np.testing.assert_array_equal(params["W_dec"], w["W_dec"])


@pytest.mark.parametrize("source", ["argument", "activation_scaler.json"])
def test_expected_average_only_in_folds_the_scale(tmp_path, source):
    cfg = {**V6_JUMPRELU_CFG, "normalize_activations": "expected_average_only_in"}
    w = _theirs("jumprelu")
    w["threshold"] = np.abs(w["threshold"])
    d = _write(tmp_path, cfg, w)
    scale = 0.37
    if source == "argument":
        params, meta = saelens.load_saelens(d, norm_scaling_factor=scale)
    else:
        (d / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale, "has_whitening": False}))
        params, meta = saelens.load_saelens(d)
    assert len(meta["conversions"]) == 1 and "0.37" in meta["conversions"][0]
    x = _x()
    # The trained SAE read x * scale and reconstructed x * scale.
    z_sl, x_hat_sl = _saelens_forward(cfg, w, x * scale)
    z, x_hat = _ours_forward(params, meta, x)
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl / scale, atol=1e-5)


def test_bfloat16_weights_load_as_float32(tmp_path):
    import ml_dtypes

    w = _theirs("standard")
    d = _write(tmp_path, {**V5_STANDARD_CFG, "dtype": "bfloat16", "apply_b_dec_to_input": True}, w)
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}, str(d / "sae_weights.safetensors"))
    params, _ = saelens.load_saelens(d)
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["W_enc"], w["W_enc"].astype(ml_dtypes.bfloat16).astype(np.float32))


# --- refusals -----------------------------------------------------------------------------------


def _valid(tmp_path, cfg=V5_STANDARD_CFG, w=None):
    return _write(tmp_path / "sae", cfg, _theirs("standard") if w is None else w)


def test_refuses_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SAE directory '.*nowhere' does not exist"):
        saelens.load_saelens(tmp_path / "nowhere")
    d = _valid(tmp_path)
    (d / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no cfg.json in '.*sae'; it holds \['sae_weights.safetensors'\]"):
        saelens.load_saelens(d)
    d = _valid(tmp_path)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no sae_weights.safetensors in '.*sae'; it holds \['cfg.json'\]"):
        saelens.load_saelens(d)


def test_refuses_pickled_weights(tmp_path):
    d = _valid(tmp_path)
    (d / "sae_weights.safetensors").unlink()
    (d / "sae_weights.pt").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(ValueError, match=r"pickled weights \(sae_weights.pt\).*never unpickles.*safetensors"):
        saelens.load_saelens(d)


@pytest.mark.parametrize("text, match", [
    ("{not json", r"cfg.json' is not valid JSON"),
    ("[1, 2]", r"holds a JSON list, not an object"),
    (json.dumps({k: v for k, v in V5_STANDARD_CFG.items() if k != "d_in"}), r"lacks required key 'd_in'"),
    (json.dumps({**V5_STANDARD_CFG, "d_sae": "16"}), r"lacks required key 'd_sae' \(a positive int\); got '16'"),
    (json.dumps({k: v for k, v in V6_JUMPRELU_CFG.items() if k != "architecture"}),
     r"\(SAELens 6.54.12\) lacks required key 'architecture'"),
    (json.dumps({**V6_JUMPRELU_CFG, "architecture": "topk"}), r"a topk SAE needs key 'k'"),
    (json.dumps({**V5_STANDARD_CFG, "activation_fn_str": "tanh-relu"}), r"activation function 'tanh-relu'"),
])
def test_refuses_bad_cfg(tmp_path, text, match):
    d = _valid(tmp_path)
    (d / "cfg.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        saelens.load_saelens(d)


@pytest.mark.parametrize("arch, match", [
    ("gated", r"SAELens architecture 'gated' is not supported by mrepe_jax"),
    ("jumprelu_transcoder", r"SAELens architecture 'jumprelu_transcoder' is not supported"),
])
def test_refuses_unsupported_architectures(tmp_path, arch, match):
    d = _valid(tmp_path, {**V6_JUMPRELU_CFG, "architecture": arch})
    with pytest.raises(ValueError, match=match):
        saelens.load_saelens(d)


@pytest.mark.parametrize("edit, match", [
    (lambda w: w.pop("b_enc"), r"lacks tensor\(s\) \['b_enc'\]"),
    (lambda w: w.update(b_gate=np.zeros(D_SAE)), r"holds unknown tensor\(s\) \['b_gate'\]"),
    (lambda w: w.update(W_dec=w["W_dec"].T), r"tensor 'W_dec' has shape \(8, 16\).*d_in=8, d_sae=16 need \(16, 8\)"),
    (lambda w: w.update(b_dec=np.zeros(D_IN + 1)), r"tensor 'b_dec' has shape \(9,\).*need \(8,\)"),
])
def test_refuses_bad_weights(tmp_path, edit, match):
    w = _theirs("standard")
    edit(w)
    d = _valid(tmp_path, {**V5_STANDARD_CFG, "apply_b_dec_to_input": True}, w)
    with pytest.raises(ValueError, match=match):
        saelens.load_saelens(d)


def test_refuses_jumprelu_without_threshold(tmp_path):
    with pytest.raises(ValueError, match=r"\(jumprelu SAE\) lacks tensor\(s\) \['threshold'\]"):
        saelens.load_saelens(_valid(tmp_path, V6_JUMPRELU_CFG))


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale", "covariance_whitening"])
def test_refuses_per_input_normalisation(tmp_path, norm):
    d = _valid(tmp_path, {**V5_STANDARD_CFG, "normalize_activations": norm})
    with pytest.raises(ValueError, match=f"normalize_activations='{norm}' rescales each input"):
        saelens.load_saelens(d)


def test_refuses_unfolded_norm_scale_without_factor(tmp_path):
    d = _valid(tmp_path, {**V5_STANDARD_CFG, "normalize_activations": True})  # pre-6.0 spelling
    with pytest.raises(ValueError, match=r"expected_average_only_in.*not folded in.*norm_scaling_factor=s"):
        saelens.load_saelens(d)
    params, meta = saelens.load_saelens(d, norm_scaling_factor=1.0)  # SAELens' load_from_disk: as they are
    assert meta["normalize_activations"] == "expected_average_only_in"
    with pytest.raises(ValueError, match=r"positive number, got -2.0"):
        saelens.load_saelens(d, norm_scaling_factor=-2.0)


def test_refuses_bad_sparsity_file(tmp_path):
    d = _valid(tmp_path)
    save_file({"log_sparsity": np.zeros(D_SAE, np.float32)}, str(d / "sparsity.safetensors"))
    with pytest.raises(ValueError, match=r"sparsity.safetensors' lacks tensor 'sparsity'; it holds \['log_sparsity'\]"):
        saelens.load_saelens(d)
    save_file({"sparsity": np.zeros(D_SAE + 2, np.float32)}, str(d / "sparsity.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'sparsity' has shape \(18,\), but d_sae=16 needs \(16,\)"):
        saelens.load_saelens(d)


def test_refuses_corrupt_safetensors(tmp_path):
    d = _valid(tmp_path)
    (d / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ValueError, match=r"sae_weights.safetensors' is not a readable safetensors file"):
        saelens.load_saelens(d)


@pytest.mark.parametrize("kwargs, edit, match", [
    ({"architecture": "gated"}, None, r"SAE architecture 'gated' is not one of"),
    ({"architecture": "topk"}, None, r"'topk' needs k >= 1"),
    ({"architecture": "relu", "k": 3}, None, r"k applies to 'topk' and 'batchtopk' only, not to 'relu'"),
    ({"architecture": "relu", "extra": {"d_sae": 3}}, None, r"extra may not set \['d_sae'\]"),
    ({"architecture": "relu"}, lambda p: p.update(W_dec=p["W_dec"].T),
     r"param 'W_dec' has shape \(8, 16\), but W_enc \(8, 16\) needs \(16, 8\)"),
    ({"architecture": "relu"}, lambda p: p.pop("b_dec"), r"params lack 'b_dec'"),
    ({"architecture": "relu"}, lambda p: p.update(threshold=np.zeros(D_SAE)), r"params hold \['threshold'\]"),
    ({"architecture": "jumprelu"}, None, r"'jumprelu' SAE needs 'threshold' \(or 'log_threshold'\)"),
    ({"architecture": "relu", "sparsity": np.full(D_SAE, 0.2)}, None, r"sparsity must be log10 .* maximum of 0.2"),
    ({"architecture": "relu", "sparsity": np.zeros(D_SAE + 1)}, None, r"sparsity has shape \(17,\), expected \(16,\)"),
])
def test_save_refuses(tmp_path, kwargs, edit, match):
    p = _ours("relu")
    if edit is not None:
        edit(p)
    with pytest.raises(ValueError, match=match):
        saelens.save_saelens(tmp_path, p, hook_name="vision.embed", **kwargs)
    assert not (tmp_path / "cfg.json").exists()


# --- SAELens itself -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", sae_lib.ARCHITECTURES)
def test_saelens_loads_ours_and_we_load_theirs(tmp_path, arch):
    """SAELens (if installed) loads a directory we saved and computes what we compute; a directory
    SAELens saves loads here and computes what SAELens computes."""
    pytest.importorskip("sae_lens")
    import torch
    from sae_lens import SAE

    p = _ours(arch)
    k = 3 if arch in ("topk", "batchtopk") else None
    ours_dir = saelens.save_saelens(tmp_path / "ours", p, architecture=arch, hook_name="vision.layers.1.resid_post",
                                    model_name="toyworld-clip", k=k)
    theirs = SAE.load_from_disk(str(ours_dir))
    assert theirs.cfg.architecture() == saelens.TO_SAELENS[arch]
    x = _x(n=7)
    with torch.no_grad():
        z_sl = theirs.encode(torch.from_numpy(x)).numpy()
        x_hat_sl = theirs.decode(torch.from_numpy(z_sl)).numpy()
    cfg = sae_lib.SAEConfig(D_IN, D_SAE, arch)
    z = np.asarray(sae_lib.encode(p, x, cfg, sae_lib.Member.of(D_SAE, k=k or 0)))
    np.testing.assert_allclose(z_sl, z, atol=1e-5)
    np.testing.assert_allclose(x_hat_sl, np.asarray(sae_lib.decode(p, z)), atol=1e-5)

    # SAELens' own save_model, of an SAE with weights of its own: we read it and agree.
    theirs_w = _theirs("jumprelu" if arch in ("jumprelu", "batchtopk") else "standard", seed=9)
    with torch.no_grad():
        for name, value in theirs_w.items():
            getattr(theirs, name).copy_(torch.from_numpy(value))
        theirs.save_model(str(tmp_path / "theirs"))
        z_sl = theirs.encode(torch.from_numpy(x)).numpy()
        x_hat_sl = theirs.decode(torch.from_numpy(z_sl)).numpy()
    params, meta = saelens.load_saelens(tmp_path / "theirs")
    assert meta["saelens_architecture"] == saelens.TO_SAELENS[arch]
    z, x_hat = _ours_forward(params, meta, x)
    np.testing.assert_allclose(z, z_sl, atol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_sl, atol=1e-5)
