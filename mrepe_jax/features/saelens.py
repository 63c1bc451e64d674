"""SAELens' saved SAE format, both ways (issue 26, item 4: "Interop with SAELens' saved format").

A SAELens SAE directory holds three files (names from ``sae_lens/constants.py``):

- ``cfg.json`` (``SAE_CFG_FILENAME``): the config;
- ``sae_weights.safetensors`` (``SAE_WEIGHTS_FILENAME``): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``;
- ``sparsity.safetensors`` (``SPARSITY_FILENAME``, optional): one tensor ``"sparsity" [d_sae]``, the
  log10 firing frequency of each latent (``SAETrainer``'s ``log10(feature_sparsity + 1e-10)``).

The config follows SAELens 6.54.12 (``SAEConfig.to_dict``: ``architecture``, ``d_in``, ``d_sae``,
``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``,
``metadata`` and, for ``topk``, ``k`` and ``rescale_acts_by_decoder_norm``) and, at the top level as
well, every key SAELens 5.11.0's ``SAEConfig`` requires (``activation_fn_str``,
``activation_fn_kwargs``, ``hook_name``, ``hook_layer``, ``hook_head_index``, ``context_size``,
``model_name``, ``prepend_bos``, ``dataset_path``, ``finetuning_scaling_factor``, ...). Each version
reads the keys it knows and drops the rest (v6: ``filter_valid_dataclass_fields``; v5:
``SAEConfig.from_dict``), so one file loads in both. ``metadata.sae_lens_version`` says 6.x: v6's
``handle_config_defaulting`` then reads the file as its own format, not as a pre-6.0 one.

Architectures: ours -> SAELens' ``relu -> standard``, ``topk -> topk``, ``jumprelu -> jumprelu``,
``batchtopk -> jumprelu``: BatchTopK's inference form, ``ReLU(pre) * (pre > threshold)``, is exactly
SAELens' ``JumpReLUSAE.encode``, and SAELens saves its own BatchTopK SAEs that way too, recording
``metadata.training_architecture = "batchtopk"`` (which ``load_saelens`` reads back). ``gated`` and
SAELens' other kinds (transcoders, ``abstopk``, ...) are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mrepe_jax.features import sae as sae_lib
from mrepe_jax.models.hf_files import read_tensor

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
ACTIVATION_SCALER_FILENAME = "activation_scaler.json"  # SAELens 6 training checkpoints only
SAELENS_FORMAT_VERSION = "6.54.12"

TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}

# Keys of SAELens 5.11's SAEConfig.to_dict, all written at the top level.
V5_KEYS = ("architecture", "d_in", "d_sae", "dtype", "device", "model_name", "hook_name", "hook_layer",
           "hook_head_index", "activation_fn_str", "activation_fn_kwargs", "apply_b_dec_to_input",
           "finetuning_scaling_factor", "sae_lens_training_version", "prepend_bos", "dataset_path",
           "dataset_trust_remote_code", "context_size", "normalize_activations", "neuronpedia_id",
           "model_from_pretrained_kwargs", "seqpos_slice")
# Keys of SAELens 6's SAEConfig.to_dict (plus TopKSAEConfig's); the LLM keys (hook_name, ...) live
# in its ``metadata``.
V6_KEYS = ("architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
           "normalize_activations", "reshape_activations", "metadata")
V6_TOPK_KEYS = ("k", "rescale_acts_by_decoder_norm")
# Keys ``extra`` may not set: they define the SAE, or the arguments set them.
_STRUCTURAL = frozenset({"architecture", "d_in", "d_sae", "dtype", "k", "activation_fn_str", "activation_fn",
                         "activation_fn_kwargs", "apply_b_dec_to_input", "normalize_activations",
                         "finetuning_scaling_factor", "rescale_acts_by_decoder_norm", "reshape_activations",
                         "metadata", "hook_name", "model_name", "dataset_path", "sae_lens_version",
                         "training_architecture", "training_architecture_details", "written_by"})
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
# SAELens' normalisations that rescale each input by its own statistics: not an affine map of x,
# so no weights can absorb them, and our SAE functions have no such step.
_PER_INPUT_NORMS = ("constant_norm_rescale", "layer_norm", "covariance_whitening")


def save_saelens(directory, params: Mapping, *, architecture: str, hook_name: str, model_name: str | None = None,
                 k: int | None = None, sparsity=None, dataset: str | None = None,
                 extra: dict | None = None) -> Path:
    """Writes one SAE as a SAELens directory (issue 26, item 4): ``cfg.json``,
    ``sae_weights.safetensors`` (float32) and, given ``sparsity``, ``sparsity.safetensors``.

    Args:
      directory: created if missing; existing SAELens files in it are replaced.
      params: ``sae``'s params (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, and ``threshold`` or
        ``log_threshold`` for ``jumprelu`` / ``batchtopk``; a scalar ``threshold`` is broadcast to
        every latent), weights that read raw activations (``train`` folds its input scale in).
      architecture: ours, one of ``sae.ARCHITECTURES``; ``batchtopk`` is saved as SAELens'
        ``jumprelu`` (its inference form), with ``metadata.training_architecture = "batchtopk"``.
      hook_name: the site the SAE reads (SAELens' ``hook_name``; our site names, e.g.
        ``"vision.layers.3.resid_post"``). v5's ``hook_layer`` is the number after ``layers.`` /
        ``blocks.`` in it, else 0.
      model_name, dataset: SAELens' ``model_name`` and ``dataset_path``.
      k: latents per row, required for ``topk`` and ``batchtopk`` (kept in
        ``metadata.training_architecture_details``), refused for the others.
      sparsity: ``[d_sae]`` log10 firing frequency of each latent, as SAELens stores it
        (``np.log10(freq + 1e-10)``); positive values (frequencies, or counts) are refused.
      extra: more SAELens config keys (``context_size``, ``prepend_bos``, ``hook_head_index``, ...),
        written both at the top level (v5) and in ``metadata`` (v6). Keys that define the SAE's
        math are refused: the other arguments set those.

    Returns the directory.
    """
    if architecture not in TO_SAELENS:
        raise ValueError(f"SAE architecture {architecture!r} is not one of {list(TO_SAELENS)}")
    if architecture in ("topk", "batchtopk"):
        if k is None or int(k) < 1:
            raise ValueError(f"architecture {architecture!r} needs k >= 1 (latents per row), got {k!r}")
        k = int(k)
    elif k is not None:
        raise ValueError(f"k applies to 'topk' and 'batchtopk' only, not to {architecture!r}")
    extra = dict(extra or {})
    clash = sorted(_STRUCTURAL & set(extra))
    if clash:
        raise ValueError(f"extra may not set {clash}: the SAE and the other arguments fix them")

    weights = _weights_for_saving(params, architecture)
    d_in, d_sae = weights["W_enc"].shape
    saelens_arch = TO_SAELENS[architecture]
    details = {"k": k} if k is not None else {}
    layer = re.search(r"(?:^|\.)(?:layers|blocks)\.(\d+)(?:\.|$)", hook_name)
    llm = {  # SAELens' LLM metadata, at their defaults where we have no value
        "model_name": model_name, "hook_name": hook_name, "hook_head_index": None, "context_size": None,
        "prepend_bos": True, "dataset_path": dataset, "model_from_pretrained_kwargs": {}, "seqpos_slice": [None],
        "sae_lens_training_version": None, "neuronpedia_id": None, **extra,
    }
    cfg = {
        # v6 (and v5 where the key is shared)
        "architecture": saelens_arch, "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": k, "rescale_acts_by_decoder_norm": False} if saelens_arch == "topk" else {}),
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION, **llm,
            "training_architecture": TO_SAELENS[architecture] if architecture != "batchtopk" else "batchtopk",
            "training_architecture_details": details,
            "written_by": f"mrepe_jax.features.saelens (SAELens {SAELENS_FORMAT_VERSION} format)",
        },
        # v5 only
        "activation_fn_str": "topk" if saelens_arch == "topk" else "relu",
        "activation_fn_kwargs": {"k": k} if saelens_arch == "topk" else {},
        "finetuning_scaling_factor": False, "dataset_trust_remote_code": False,
        "hook_layer": int(layer.group(1)) if layer else 0, **llm,
    }

    if sparsity is not None:
        s = np.ascontiguousarray(np.asarray(sparsity, np.float32))
        if s.shape != (d_sae,):
            raise ValueError(f"sparsity has shape {s.shape}, expected ({d_sae},) = (d_sae,)")
        if np.any(s > 0):
            raise ValueError("sparsity must be log10 of each latent's firing frequency (SAELens' "
                             f"sparsity.safetensors), so <= 0; got a maximum of {float(s.max())}. Pass "
                             "np.log10(frequency + 1e-10).")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic(directory / SAE_WEIGHTS_FILENAME, lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
    if sparsity is not None:
        _atomic(directory / SPARSITY_FILENAME, lambda p: save_file({"sparsity": s}, str(p), metadata={"format": "pt"}))
    elif (directory / SPARSITY_FILENAME).exists():
        (directory / SPARSITY_FILENAME).unlink()  # an earlier SAE's: it would load as this one's
    _atomic(directory / SAE_CFG_FILENAME, lambda p: p.write_text(json.dumps(cfg, indent=2)))
    return directory


def load_saelens(directory, *, norm_scaling_factor: float | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a SAELens SAE directory, ours or SAELens' (v5 or v6 ``cfg.json``) (issue 26, item 4).

    Returns ``(params, meta)``: float32 params with SAELens' names, ready for ``sae.encode`` /
    ``sae.decode`` with ``SAEConfig(meta["d_in"], meta["d_sae"], meta["architecture"])`` and
    ``Member.of(d_sae, k=meta["k"] or 0)``, which then give SAELens' outputs. ``meta``:
    ``architecture`` (ours: ``standard -> relu``, ``topk``, ``jumprelu``; a ``jumprelu`` that
    SAELens records as trained as ``batchtopk`` -> ``batchtopk``), ``saelens_architecture``, ``d_in``,
    ``d_sae``, ``k``, ``hook_name``, ``model_name``, ``apply_b_dec_to_input``,
    ``normalize_activations``, ``reshape_activations`` (``"hook_z"``: SAELens flattens
    ``[..., n_heads, d_head]`` first; so must the caller), ``conversions`` (what was folded, below),
    ``cfg`` (the file's dict) and, when ``sparsity.safetensors`` exists, ``sparsity [d_sae]``.

    Where SAELens' forward pass has a step ours lacks, the step is folded into the weights, exactly
    (each listed in ``meta["conversions"]``; an SAE we saved needs none, and loads bit-identical):

    - ``apply_b_dec_to_input: false``: ``b_enc += b_dec @ W_enc`` (our encoder always subtracts
      ``b_dec``).
    - v6 ``topk`` with ``rescale_acts_by_decoder_norm``: the decoder norms, as SAELens'
      ``fold_W_dec_norm`` does (``W_enc *= n``, ``b_enc *= n``, ``W_dec /= n``).
    - v5 ``finetuning_scaling_factor`` (tensor ``scaling_factor`` or ``finetuning_scaling_factor``):
      into ``W_dec``'s rows (SAELens drops an all-ones one).
    - ``jumprelu`` thresholds below 0 are raised to 0: SAELens' ``ReLU(pre) * (pre > t)`` equals our
      ``pre * (pre > t)`` for every ``t >= 0``, and for ``t < 0`` equals it at ``t = 0``.
    - ``normalize_activations: "expected_average_only_in"``: the SAE was trained on ``x * s``.
      SAELens' trainer folds ``s`` into the weights and writes ``"none"`` before saving, so this value
      means an unfolded file: a training checkpoint (``s`` in its ``activation_scaler.json``, read
      here) or a release whose ``s`` lives in SAELens' ``pretrained_saes.yaml``
      (``norm_scaling_factor``; pass it). It is folded as SAELens'
      ``fold_activation_norm_scaling_factor`` does (``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``).
      With neither, this refuses: SAELens' ``load_from_disk`` would silently use the unscaled
      weights; ``norm_scaling_factor=1.0`` does the same here, on purpose.

    Refused, with the path, key or shape named: a missing directory or file, a ``cfg.json`` that is
    not a JSON object or lacks ``d_in`` / ``d_sae`` / ``k`` (topk), weights missing a tensor, holding
    an unknown one, or of a shape that disagrees with ``d_in`` / ``d_sae``; pickled-only SAEs
    (``.pt``: never unpickled); ``gated`` and other architectures; per-input normalisations
    (``layer_norm``, ``constant_norm_rescale``, ``covariance_whitening``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"SAELens SAE directory {str(directory)!r} does not exist")
    cfg_path, weights_path = directory / SAE_CFG_FILENAME, directory / SAE_WEIGHTS_FILENAME
    if not weights_path.is_file():
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{str(directory)!r} holds pickled weights ({', '.join(pickled)}) and no {SAE_WEIGHTS_FILENAME}; "
                "mrepe_jax never unpickles (it can run arbitrary code). Convert once where you trust the file: "
                "`sd = torch.load(path, weights_only=True)`, then `safetensors.torch.save_file(sd, "
                f"'{SAE_WEIGHTS_FILENAME}')` (or SAELens' `sae.save_model(dir)`).")
        hint = (" (sae.safetensors is EleutherAI sparsify's format, not SAELens')"
                if (directory / "sae.safetensors").is_file() else "")
        raise FileNotFoundError(
            f"no {SAE_WEIGHTS_FILENAME} in {str(directory)!r}{hint}; it holds {_listing(directory)}")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {SAE_CFG_FILENAME} in {str(directory)!r}; it holds {_listing(directory)}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(cfg_path)!r} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{str(cfg_path)!r} holds a JSON {type(raw).__name__}, not an object of config keys")

    meta = _read_cfg(raw, cfg_path)
    d_in, d_sae = meta["d_in"], meta["d_sae"]
    state = _read_safetensors(weights_path)
    conversions = []
    _fold_finetuning_scale(state, raw, weights_path, conversions)

    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if meta["saelens_architecture"] == "jumprelu" else [])
    missing = [key for key in need if key not in state]
    unknown = sorted(set(state) - set(need))
    if missing or unknown:
        raise ValueError(f"{str(weights_path)!r} ({meta['saelens_architecture']} SAE) "
                         + (f"lacks tensor(s) {missing}" if missing else "")
                         + ("; " if missing and unknown else "")
                         + (f"holds unknown tensor(s) {unknown}" if unknown else "")
                         + f"; it holds {sorted(state)}")
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for key in need:
        if state[key].shape != shapes[key]:
            raise ValueError(f"{str(weights_path)!r}: tensor {key!r} has shape {tuple(state[key].shape)}, but "
                             f"cfg.json's d_in={d_in}, d_sae={d_sae} need {shapes[key]}")
    # Folds in float64, so the float32 result is as close as the format allows.
    p = {key: state[key].astype(np.float64) for key in need}

    norm = meta["normalize_activations"]
    if norm in _PER_INPUT_NORMS:
        raise ValueError(f"{str(cfg_path)!r}: normalize_activations={norm!r} rescales each input by its own "
                         "statistics; mrepe_jax's SAEs have no such step and no weights can absorb it")
    if norm == "expected_average_only_in":
        scale, source = _norm_scale(norm_scaling_factor, directory, cfg_path)
        p["W_enc"], p["W_dec"], p["b_dec"] = p["W_enc"] * scale, p["W_dec"] / scale, p["b_dec"] / scale
        conversions.append(f"expected_average_only_in: norm scaling factor {scale} ({source}) folded into "
                           "W_enc, W_dec, b_dec")
    elif norm != "none":
        raise ValueError(f"{str(cfg_path)!r}: unknown normalize_activations {norm!r}")
    if not meta["apply_b_dec_to_input"]:
        p["b_enc"] = p["b_enc"] + p["b_dec"] @ p["W_enc"]
        conversions.append("apply_b_dec_to_input=false: b_dec @ W_enc folded into b_enc")
    if meta.pop("_rescale_by_decoder_norm"):
        n = np.maximum(np.linalg.norm(p["W_dec"], axis=-1), 1e-8)  # SAELens' clamp in get_W_dec_norm
        p["W_enc"], p["b_enc"], p["W_dec"] = p["W_enc"] * n, p["b_enc"] * n, p["W_dec"] / n[:, None]
        conversions.append("rescale_acts_by_decoder_norm: decoder norms folded (SAELens' fold_W_dec_norm)")
    if meta["architecture"] == "jumprelu" and np.any(p["threshold"] < 0):
        p["threshold"] = np.maximum(p["threshold"], 0.0)
        conversions.append("negative jumprelu thresholds raised to 0 (same outputs)")
    params = {key: v.astype(np.float32) for key, v in p.items()}  # f32 -> f64 -> f32 is exact
    meta["conversions"] = conversions
    meta["cfg"] = raw

    sparsity_path = directory / SPARSITY_FILENAME
    if sparsity_path.is_file():
        sp = _read_safetensors(sparsity_path)
        if "sparsity" not in sp:
            raise ValueError(f"{str(sparsity_path)!r} lacks tensor 'sparsity'; it holds {sorted(sp)}")
        if sp["sparsity"].shape != (d_sae,):
            raise ValueError(f"{str(sparsity_path)!r}: tensor 'sparsity' has shape {tuple(sp['sparsity'].shape)}, "
                             f"but d_sae={d_sae} needs ({d_sae},)")
        meta["sparsity"] = sp["sparsity"].astype(np.float32)
    return params, meta


def _weights_for_saving(params: Mapping, architecture: str) -> dict[str, np.ndarray]:
    """Our params as SAELens' float32 tensors, every shape checked against ``W_enc``'s."""
    params = dict(params)
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if key not in params:
            raise ValueError(f"params lack {key!r}; they hold {sorted(params)}")
    needs_threshold = TO_SAELENS[architecture] == "jumprelu"
    if needs_threshold and "threshold" not in params and "log_threshold" not in params:
        raise ValueError(f"a {architecture!r} SAE needs 'threshold' (or 'log_threshold'); params hold {sorted(params)}")
    allowed = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold", "log_threshold"} if needs_threshold else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"params hold {unknown}, which a SAELens {TO_SAELENS[architecture]!r} SAE has no place for")
    out = {key: np.asarray(v, np.float32) for key, v in sae_lib.saelens_params(params).items()}
    if out["W_enc"].ndim != 2:
        raise ValueError(f"W_enc must be [d_in, d_sae], got shape {out['W_enc'].shape}")
    d_in, d_sae = out["W_enc"].shape
    if needs_threshold and out["threshold"].ndim == 0:  # one threshold for every latent (batchtopk)
        out["threshold"] = np.full((d_sae,), out["threshold"], np.float32)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for key, v in out.items():
        if v.shape != shapes[key]:
            raise ValueError(f"param {key!r} has shape {v.shape}, but W_enc {(d_in, d_sae)} needs {shapes[key]}")
    return {key: np.ascontiguousarray(v) for key, v in out.items()}


def _read_cfg(raw: dict, cfg_path: Path) -> dict:
    """The normalised metadata of a v5 or v6 cfg.json, resolved as SAELens' loaders do."""
    md = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = raw.get("sae_lens_version") or md.get("sae_lens_version")
    pre_6 = not version or _major(version) < 6  # v6's handle_config_defaulting makes the same test

    def get(*keys, default=None):
        # v6 keeps the LLM keys in metadata; v5 (and pre-6.0 renames) at the top level.
        for key in keys:
            for source in (raw, md):
                if source.get(key) is not None:
                    return source[key]
        return default

    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool) or raw[key] < 1:
            raise ValueError(f"{str(cfg_path)!r} lacks required key {key!r} (a positive int); "
                             f"got {raw.get(key)!r}; its keys: {sorted(raw)}")
    arch = raw.get("architecture", "standard" if pre_6 else None)
    if arch is None:
        raise ValueError(f"{str(cfg_path)!r} (SAELens {version}) lacks required key 'architecture'; "
                         f"its keys: {sorted(raw)}")
    act = raw.get("activation_fn_str", raw.get("activation_fn", "relu"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if pre_6 and act == "topk":  # v5: a TopK activation on a "standard" SAE is SAELens 6's topk
        arch = "topk"
    elif pre_6 and act != "relu":
        raise ValueError(f"{str(cfg_path)!r}: activation function {act!r} is not supported (relu or topk only)")
    if arch == "gated":
        raise ValueError(f"{str(cfg_path)!r}: SAELens architecture 'gated' is not supported by mrepe_jax "
                         f"(it has separate gate and magnitude paths); supported: {sorted(FROM_SAELENS)}")
    if arch not in FROM_SAELENS:
        raise ValueError(f"{str(cfg_path)!r}: SAELens architecture {arch!r} is not supported; "
                         f"supported: {sorted(FROM_SAELENS)}")

    ours = FROM_SAELENS[arch]
    k = None
    details = md.get("training_architecture_details") or {}
    if arch == "topk":
        k = raw.get("k", kwargs.get("k"))
        if k is None:
            raise ValueError(f"{str(cfg_path)!r}: a topk SAE needs key 'k' (or activation_fn_kwargs.k); "
                             f"its keys: {sorted(raw)}")
    elif arch == "jumprelu" and md.get("training_architecture") == "batchtopk":
        # SAELens' BatchTopK SAEs are saved in their JumpReLU inference form; so are ours.
        ours, k = "batchtopk", details.get("k")
    if k is not None:
        k = int(k) if float(k).is_integer() else float(k)

    norm = raw.get("normalize_activations")
    if isinstance(norm, bool):  # pre-6.0 configs: True meant "expected_average_only_in"
        norm = "expected_average_only_in" if norm else "none"
    hook_name = get("hook_name", "hook_point")
    return {
        "architecture": ours, "saelens_architecture": arch, "d_in": raw["d_in"], "d_sae": raw["d_sae"], "k": k,
        "hook_name": hook_name, "model_name": get("model_name"),
        "apply_b_dec_to_input": bool(raw.get("apply_b_dec_to_input", True)),
        "normalize_activations": "none" if norm is None else norm,
        "reshape_activations": raw.get("reshape_activations",
                                       "hook_z" if str(hook_name or "").endswith("_z") else "none"),
        "sae_lens_version": version,
        "_rescale_by_decoder_norm": arch == "topk" and bool(raw.get("rescale_acts_by_decoder_norm", False)),
    }


def _fold_finetuning_scale(state: dict, raw: dict, weights_path: Path, conversions: list) -> None:
    """SAELens 5's ``finetuning_scaling_factor`` scales latents before decoding; fold it into
    ``W_dec`` (SAELens' ``read_sae_components_from_disk`` drops an all-ones ``scaling_factor``)."""
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key not in state:
            continue
        s = state.pop(key).astype(np.float64)
        if np.allclose(s, 1.0):
            continue
        if "W_dec" not in state or s.shape != (state["W_dec"].shape[0],):
            raise ValueError(f"{str(weights_path)!r}: tensor {key!r} of shape {s.shape} does not match "
                             f"W_dec's latents {state.get('W_dec', np.empty(0)).shape[:1]}")
        state["W_dec"] = state["W_dec"].astype(np.float64) * s[:, None]
        conversions.append(f"{key} folded into W_dec")


def _norm_scale(norm_scaling_factor, directory: Path, cfg_path: Path) -> tuple[float, str]:
    if norm_scaling_factor is not None:
        scale, source = float(norm_scaling_factor), "norm_scaling_factor argument"
    else:
        scaler = directory / ACTIVATION_SCALER_FILENAME
        scale = None
        if scaler.is_file():
            try:
                scale = json.loads(scaler.read_text()).get("scaling_factor")
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{str(scaler)!r} is not SAELens' activation scaler JSON: {e}") from e
        if scale is None:
            raise ValueError(
                f"{str(cfg_path)!r}: normalize_activations='expected_average_only_in' but the norm scaling factor "
                f"is not folded in, and there is no {ACTIVATION_SCALER_FILENAME} with it beside. SAELens' trainer "
                "folds it and writes 'none'; for a pretrained release it is the 'norm_scaling_factor' in SAELens' "
                "pretrained_saes.yaml. Pass load_saelens(..., norm_scaling_factor=s) (1.0 takes the weights "
                "as they are, which is what SAELens' load_from_disk does).")
        scale, source = float(scale), str(scaler)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"norm scaling factor must be a positive number, got {scale} ({source})")
    return scale, source


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy; bfloat16 (which numpy lacks) via ml_dtypes."""
    try:
        handle = safe_open(str(path), framework="np")
    except Exception as e:  # safetensors' own error type for a bad header; OSError for the rest
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {type(e).__name__}: {e}") from e
    out = {}
    with handle as f:
        for key in f.keys():
            out[key] = read_tensor(f, path, key)
    return out


def _major(version) -> int:
    m = re.match(r"\s*v?(\d+)", str(version))
    return int(m.group(1)) if m else 0


def _listing(directory: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    return repr(names) if names else "nothing"


def _atomic(path: Path, write) -> None:
    """Writes to a temporary name and renames: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
