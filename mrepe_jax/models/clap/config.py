"""CLAP configurations: frozen dataclasses (hashable, so they are static Linen attributes).

Field names follow transformers' ``ClapTextConfig`` / ``ClapAudioConfig`` / ``ClapConfig`` (5.24) so
a checkpoint's ``config.json`` maps onto them key for key (``ClapConfig.from_hf_dict``). As in
``ClapConfig.__post_init__``, the projection width and activation of both towers are the top-level
``projection_dim`` / ``projection_hidden_act``; the sub-configs' copies are not read.

``ClapAudioConfig`` also derives the HTSAT geometry every module needs (the patch grid, each
stage's resolution, width, window and shifts) and refuses, with the field to change, the configs
transformers' own forward cannot run (a window larger than a stage's resolution, a grid that does
not halve evenly, ``fusion_type="channel_map"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mrepe_jax.models.clip.config import EncoderConfig
from mrepe_jax.models.layers import ACT_FNS


@dataclasses.dataclass(frozen=True)
class ClapTextConfig(EncoderConfig):
    """The RoBERTa text tower (defaults: ``laion/clap-htsat-unfused``'s, RoBERTa-base)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


@dataclasses.dataclass(frozen=True)
class ClapAudioConfig:
    """The HTSAT audio tower (defaults: ``laion/clap-htsat-unfused``'s).

    The mel "image": ``[batch, channels, time, num_mel_bins]`` features are resized in time to
    ``spec_width = spec_size * freq_ratio`` frames and folded into a ``spec_size x spec_size``
    image whose rows are ``freq_ratio`` stacked copies of the mel axis, each holding one
    ``1/freq_ratio`` of the clip (``htsat.mel_to_image``).
    """

    window_size: int = 8
    num_mel_bins: int = 64
    spec_size: int = 256
    hidden_act: str = "gelu"
    patch_size: int | tuple[int, int] = 4
    patch_stride: int | tuple[int, int] = (4, 4)
    hidden_size: int = 768
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    enable_fusion: bool = False
    fusion_type: str | None = None
    patch_embed_input_channels: int = 1
    flatten_patch_embeds: bool = True
    patch_embeds_hidden_size: int = 96
    enable_patch_layer_norm: bool = True
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    aff_block_r: int = 4
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("depths", "num_attention_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("patch_size", "patch_stride"):
            v = getattr(self, name)
            if not isinstance(v, int):
                object.__setattr__(self, name, tuple(int(x) for x in v))
        self._validate()

    def _validate(self):
        def bad(msg):
            raise ValueError(f"ClapAudioConfig: {msg}")

        if self.hidden_act not in ACT_FNS:
            bad(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACT_FNS)}")
        if len(self.depths) != len(self.num_attention_heads) or not self.depths:
            bad(f"depths {self.depths} and num_attention_heads {self.num_attention_heads} must have one "
                "entry per stage")
        if not self.flatten_patch_embeds:
            bad("flatten_patch_embeds=False is not supported (transformers' Swin stages need flat tokens)")
        if self.enable_fusion and self.fusion_type == "channel_map":
            bad("fusion_type='channel_map' is not supported: transformers builds a 4-channel patch "
                "convolution for it but feeds it the 1-channel global mel, so no checkpoint runs it")
        if self.enable_fusion and self.patch_embed_input_channels != 1:
            bad("the fused patch embedding reads one global mel channel: patch_embed_input_channels "
                f"must be 1, got {self.patch_embed_input_channels}")
        if self.freq_ratio < 1 or self.spec_size // self.freq_ratio != self.num_mel_bins:
            bad(f"spec_size {self.spec_size} must be a multiple of num_mel_bins {self.num_mel_bins} "
                "(a mel axis resized in frequency is not supported)")
        (p0, p1), (s0, s1), (q0, q1) = self.patch_hw, self.stride_hw, self.padding
        conv = ((self.spec_size + 2 * q0 - p0) // s0 + 1, (self.spec_size + 2 * q1 - p1) // s1 + 1)
        if conv != self.grid:
            bad(f"patch_size {self.patch_hw} / patch_stride {self.stride_hw} give a {conv} patch grid but "
                f"transformers assumes spec_size // patch_stride = {self.grid}")
        n = 2 ** (self.num_stages - 1)
        if self.grid[0] % n or self.grid[1] % n:
            bad(f"the {self.grid} patch grid must halve evenly through {self.num_stages} stages")
        for s, (dim, heads, res) in enumerate(zip(self.stage_dims, self.num_attention_heads,
                                                   self.stage_resolutions)):
            if dim % heads:
                bad(f"stage {s} width {dim} is not divisible by its {heads} attention heads")
            if min(res) < self.window_size:
                bad(f"window_size {self.window_size} exceeds stage {s}'s {res} resolution (transformers "
                    "shrinks the window there but not its relative position table)")
        fh = self.stage_resolutions[-1][0]
        if fh < self.freq_ratio or fh % (fh // self.freq_ratio):
            bad(f"the last stage's {fh} rows cannot be regrouped into freq_ratio {self.freq_ratio} bands "
                "(transformers' final reshape)")
        if self.hidden_size != self.num_features:
            bad(f"hidden_size {self.hidden_size} (the projection's input) must equal the last stage's "
                f"width patch_embeds_hidden_size * 2**(stages-1) = {self.num_features}")

    @property
    def patch_hw(self) -> tuple[int, int]:
        return _pair(self.patch_size)

    @property
    def stride_hw(self) -> tuple[int, int]:
        return _pair(self.patch_stride)

    @property
    def padding(self) -> tuple[int, int]:
        """The patch convolution's symmetric padding, ``(patch - stride) // 2`` per axis."""
        (p0, p1), (s0, s1) = self.patch_hw, self.stride_hw
        return (p0 - s0) // 2, (p1 - s1) // 2

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.num_mel_bins

    @property
    def spec_width(self) -> int:
        """The number of time frames the features are resized to before folding."""
        return self.spec_size * self.freq_ratio

    @property
    def input_channels(self) -> int:
        """Feature channels: 1 (``rand_trunc``), or 4 for fused models (the global mel and three
        local crops, ``ClapFeatureExtractor``'s ``fusion`` truncation)."""
        return 4 if self.enable_fusion else self.patch_embed_input_channels

    @property
    def grid(self) -> tuple[int, int]:
        (s0, s1) = self.stride_hw
        return self.spec_size // s0, self.spec_size // s1

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.patch_embeds_hidden_size * 2 ** s for s in range(self.num_stages))

    @property
    def stage_resolutions(self) -> tuple[tuple[int, int], ...]:
        g0, g1 = self.grid
        return tuple((g0 // 2 ** s, g1 // 2 ** s) for s in range(self.num_stages))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def mlp_dim(self, stage: int) -> int:
        return int(self.mlp_ratio * self.stage_dims[stage])

    def shift(self, stage: int, block: int) -> int:
        """HF's cyclic shift: half a window on odd blocks, none where the window spans the whole
        stage (``ClapAudioLayer.set_shift_and_window_size``)."""
        if block % 2 == 0 or min(self.stage_resolutions[stage]) <= self.window_size:
            return 0
        return self.window_size // 2

    def block_index(self, flat: int) -> tuple[int, int]:
        """``(stage, block)`` of the ``flat``-th block counted over every stage."""
        for s, depth in enumerate(self.depths):
            if flat < depth:
                return s, flat
            flat -= depth
        raise ValueError(f"block {flat} is past the audio tower's {self.num_blocks} blocks")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ClapAudioConfig:
        return _pick(cls, d)


@dataclasses.dataclass(frozen=True)
class ClapConfig:
    text_config: ClapTextConfig = ClapTextConfig()
    audio_config: ClapAudioConfig = ClapAudioConfig()
    projection_dim: int = 512
    projection_hidden_act: str = "relu"
    logit_scale_init_value: float = 1 / 0.07

    def __post_init__(self):
        if self.projection_hidden_act not in ACT_FNS:
            raise ValueError(f"ClapConfig.projection_hidden_act {self.projection_hidden_act!r} is not one "
                             f"of {sorted(ACT_FNS)}")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ClapConfig:
        """From a transformers ``config.json`` dict (or ``ClapConfig.to_dict()``); keys this model
        does not use (dropout, initializer factors, ``num_classes``) are dropped."""
        if "text_config" not in d or "audio_config" not in d:
            raise ValueError("not a ClapModel config: expected 'text_config' and 'audio_config' keys, got "
                             f"{sorted(d)[:12]}")
        defaults = cls()
        return cls(text_config=_pick(ClapTextConfig, d["text_config"]),
                   audio_config=ClapAudioConfig.from_hf_dict(d["audio_config"]),
                   projection_dim=d.get("projection_dim", defaults.projection_dim),
                   projection_hidden_act=d.get("projection_hidden_act", defaults.projection_hidden_act),
                   logit_scale_init_value=d.get("logit_scale_init_value", defaults.logit_scale_init_value))

    def to_hf_dict(self) -> dict[str, Any]:
        """The inverse of ``from_hf_dict``: a dict ``transformers.ClapConfig(**d)`` accepts."""
        audio = dataclasses.asdict(self.audio_config)
        for key in ("depths", "num_attention_heads", "patch_size", "patch_stride"):
            if isinstance(audio[key], tuple):
                audio[key] = list(audio[key])
        shared = {"projection_dim": self.projection_dim, "projection_hidden_act": self.projection_hidden_act}
        return {
            "model_type": "clap",
            "architectures": ["ClapModel"],
            "text_config": {**dataclasses.asdict(self.text_config), **shared},
            "audio_config": {**audio, **shared},
            **shared,
            "logit_scale_init_value": self.logit_scale_init_value,
        }


def _pick(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
