"""CLAP: the conversion table between transformers' ``ClapModel`` state dict and our Flax params,
and ``load_pretrained`` / ``save_pretrained`` for HF-format directories (DESIGN.md §2).

==============================================================  =============================================
HF key (5.24; no key renaming for CLAP in transformers)         Flax path / rule
==============================================================  =============================================
Linear ``*.weight`` [out, in] (attention q/k/v and output,      ``.../kernel`` [in, out] (transposed)
MLPs, pooler, ``downsample.reduction``, projections)
LayerNorm / BatchNorm ``*.weight``                              ``.../scale``
BatchNorm ``running_mean`` / ``running_var``                    the same names (frozen parameters here)
Conv2d ``patch_embed.proj|mel_conv2d``, fusion 1x1 convs        ``.../kernel`` [kh, kw, in, out] (OIHW->HWIO)
``*.bias``                                                      ``.../bias``
``text_model.embeddings.*_embeddings.weight``                   ``.../embedding``
``*.attention.self.relative_position_bias_table``               the same table
``logit_scale_a``, ``logit_scale_t``                            top-level scalars
``text_model.encoder.layer.{i}.*``                              ``text_model/encoder/layers/{i}/...``
buffers: ``position_ids``, ``token_type_ids``,                  not read (recomputed); written back by
``relative_position_index``, ``num_batches_tracked``            ``save_pretrained`` as transformers does
==============================================================  =============================================

The one renamed component (``layer`` -> ``layers``, so the text layers stack like every tower's)
is renamed on the way in and back on the way out; the generic converter's error then names the
checkpoint's own keys (``_restore_names``). Loading reads a local directory or a hub id
(``hf_files.resolve``), safetensors only, single or sharded (converted shard by shard as read); a
directory holding only pickled weights is refused with the command that converts it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import ItemsView, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models import hf_files
from mrepe_jax.models.clap.config import ClapConfig
from mrepe_jax.models.clap.model import ClapModel
from mrepe_jax.models.clap.swin import relative_position_index
from mrepe_jax.models.convert import (
    ConversionError,
    Rule,
    hwio_to_oihw,
    linear_and_norm_rules,
    oihw_to_hwio,
    param_shapes,
    to_flax,
    to_hf,
    to_numpy,
)
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import unstack_layer_params

TEXT_LAYER = r"text_model\.encoder\.layers\.\d+"
AUDIO = r"audio_model\.audio_encoder"
AUDIO_STAGE = rf"{AUDIO}\.layers\.\d+"
AUDIO_BLOCK = rf"{AUDIO_STAGE}\.blocks\.\d+"
FUSION = rf"{AUDIO}\.patch_embed\.fusion_model"
# Sequential indices: local_att = conv, BN, ReLU, conv, BN; global_att = pool, conv, BN, ReLU, conv, BN.
FUSION_CONVS = rf"{FUSION}\.(?:local_att\.[03]|global_att\.[14])"
BATCH_NORMS = rf"{AUDIO}\.batch_norm|{FUSION}\.(?:local_att\.[14]|global_att\.[25])"
CONVS = rf"{AUDIO}\.patch_embed\.(?:proj|mel_conv2d)|{FUSION_CONVS}"
BLOCK_LINEARS = r"attention\.self\.(?:query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense"
LINEARS = "|".join((
    rf"{TEXT_LAYER}\.(?:{BLOCK_LINEARS})", r"text_model\.pooler\.dense", r"(?:text|audio)_projection\.linear[12]",
    rf"{AUDIO_BLOCK}\.(?:{BLOCK_LINEARS})", rf"{AUDIO_STAGE}\.downsample\.reduction",
))
NORMS = "|".join((
    r"text_model\.embeddings\.LayerNorm", rf"{TEXT_LAYER}\.(?:attention\.output|output)\.LayerNorm",
    rf"{AUDIO_BLOCK}\.layernorm_(?:before|after)", rf"{AUDIO_STAGE}\.downsample\.norm",
    rf"{AUDIO}\.(?:norm|patch_embed\.norm)", BATCH_NORMS,
))

# HF key (regex; group 1 = module path)                    -> Flax leaf, to_flax, to_hf
CLAP_RULES: tuple[Rule, ...] = (
    *linear_and_norm_rules(LINEARS, NORMS),
    Rule(rf"((?:{CONVS}))\.weight", "kernel", oihw_to_hwio, hwio_to_oihw, hf_leaf="weight"),
    Rule(rf"((?:{CONVS}))\.bias", "bias"),
    Rule(rf"((?:{BATCH_NORMS}))\.running_mean", "running_mean"),
    Rule(rf"((?:{BATCH_NORMS}))\.running_var", "running_var"),
    Rule(r"(text_model\.embeddings\.(?:word|position|token_type)_embeddings)\.weight", "embedding",
         hf_leaf="weight"),
    Rule(rf"({AUDIO_BLOCK}\.attention\.self)\.relative_position_bias_table", "relative_position_bias_table"),
    Rule(r"()logit_scale_a", "logit_scale_a"),
    Rule(r"()logit_scale_t", "logit_scale_t"),
)
# Buffers transformers saves and recomputes; none is a parameter here.
CLAP_IGNORED = (r"text_model\.embeddings\.(?:position_ids|token_type_ids)", r".*\.relative_position_index",
                r".*\.num_batches_tracked")

_HF_TEXT_LAYER, _OUR_TEXT_LAYER = "text_model.encoder.layer.", "text_model.encoder.layers."


def _ours(key: str) -> str:
    return _OUR_TEXT_LAYER + key[len(_HF_TEXT_LAYER):] if key.startswith(_HF_TEXT_LAYER) else key


def _theirs(key: str) -> str:
    return _HF_TEXT_LAYER + key[len(_OUR_TEXT_LAYER):] if key.startswith(_OUR_TEXT_LAYER) else key


class _Renamed(Mapping):
    """A state dict seen under our key names, read lazily (a ``SafetensorsCheckpoint`` stays lazy)."""

    def __init__(self, state_dict: Mapping):
        self._sd = state_dict
        self._keys = {_ours(k): k for k in state_dict}

    def __getitem__(self, key):
        return self._sd[self._keys[key]]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def items(self):
        return _RenamedItems(self)


class _RenamedItems(ItemsView):
    def __iter__(self):
        for key, value in self._mapping._sd.items():
            yield _ours(key), value


def _restore_names(message: str) -> str:
    """Our text-layer key names in a conversion error back to the checkpoint's."""
    return re.sub(r"\btext_model\.encoder\.layers\.", _HF_TEXT_LAYER, message)


def dummy_inputs(config: ClapConfig):
    a = config.audio_config
    features = jnp.zeros((1, a.input_channels, a.spec_width, a.num_mel_bins))
    return features, jnp.zeros((1, 4), jnp.int32)


def clap_param_shapes(model: ClapModel) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of every parameter of ``model`` (per-layer layout: unscanned)."""
    return dict(_param_shapes(model.config))


@functools.lru_cache(maxsize=8)
def _param_shapes(config: ClapConfig) -> tuple:
    # Tracing the whole model takes about a second; the shapes depend on the config alone.
    return tuple(param_shapes(ClapModel(config), *dummy_inputs(config)).items())


def convert_state_dict(state_dict: Mapping, config: ClapConfig, source: str = "checkpoint") -> dict:
    """HF ``ClapModel`` state dict (numpy or torch tensors; may be a lazy ``SafetensorsCheckpoint``)
    -> per-layer Flax params for ``ClapModel(config)``."""
    try:
        return to_flax(_Renamed(state_dict), CLAP_RULES, clap_param_shapes(ClapModel(config)), CLAP_IGNORED,
                       source)
    except ConversionError as e:
        raise ConversionError(_restore_names(str(e))) from None


def stack_text_layers(params) -> dict:
    """Per-layer params -> the layout of ``ClapModel(execution=Execution(scan_layers=True))``: the
    text tower's layers stacked (the audio stages never are)."""
    return ClapModel.stack_params(params)


def from_torch_model(hf_model) -> tuple[ClapModel, dict]:
    """(model, params) from an in-memory ``transformers.ClapModel``."""
    config = ClapConfig.from_hf_dict(hf_model.config.to_dict())
    state_dict = {k: to_numpy(v) for k, v in hf_model.state_dict().items()}
    return ClapModel(config), convert_state_dict(state_dict, config, "transformers ClapModel")


def load_pretrained(name_or_dir: str | os.PathLike, local_files_only: bool | None = None,
                    execution: Execution = Execution(), dtype=jnp.float32):
    """(model, params) from a local HF directory (config.json + safetensors, single or sharded) or a
    hub id (offline: an error naming the directory looked in). Pickled weights are refused. With
    ``execution.scan_layers`` the text tower's params come stacked. Params stay float32 whatever
    ``dtype`` (the model's compute dtype) says."""
    directory = hf_files.resolve(name_or_dir, local_files_only)
    config = ClapConfig.from_hf_dict(hf_files.read_config(directory))
    checkpoint = hf_files.SafetensorsCheckpoint(directory)
    params = convert_state_dict(checkpoint, config, f"checkpoint {str(directory)!r}")
    if execution.scan_layers:
        params = stack_text_layers(params)
    return ClapModel(config, dtype=dtype, execution=execution), params


def buffers(config: ClapConfig, state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The buffers transformers keeps in its state dict, for the modules ``state_dict`` holds."""
    t = config.text_config
    out = {"text_model.embeddings.position_ids": np.arange(t.max_position_embeddings, dtype=np.int64)[None],
           "text_model.embeddings.token_type_ids": np.zeros((1, t.max_position_embeddings), np.int64)}
    index = relative_position_index(config.audio_config.window_size).astype(np.int64)
    for key in state_dict:
        if key.endswith(".relative_position_bias_table"):
            out[key.rsplit(".", 1)[0] + ".relative_position_index"] = index
        elif key.endswith(".running_mean"):
            out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
    return out


def save_pretrained(directory: str | os.PathLike, config: ClapConfig, params) -> Path:
    """Writes an HF-format directory (config.json + model.safetensors) that ``load_pretrained`` and
    ``transformers.ClapModel.from_pretrained`` read (stacked text layers are unstacked first)."""
    params = unstack_layer_params(jax.device_get(params))
    state_dict = {_theirs(k): v for k, v in to_hf(params, CLAP_RULES).items()}
    state_dict.update(buffers(config, state_dict))
    return hf_files.write_checkpoint(directory, config.to_hf_dict(), state_dict)
