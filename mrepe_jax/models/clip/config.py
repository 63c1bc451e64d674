"""CLIP configurations: frozen dataclasses (hashable, so they are static Linen attributes).

Field names follow transformers' ``CLIPVisionConfig`` / ``CLIPTextConfig`` / ``CLIPConfig`` so a
checkpoint's ``config.json`` maps onto them key for key (``from_hf_dict``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def __post_init__(self):
        name = type(self).__name__
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{name}.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}.hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(EncoderConfig):
    """A ViT tower. ``image_size`` may be ``(height, width)`` for non-square inputs (log-mel audio)."""

    image_size: int | tuple[int, int] = 224
    patch_size: int = 32
    num_channels: int = 3

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.image_hw
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {self.image_hw} is not a multiple of patch {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    @property
    def num_positions(self) -> int:
        gh, gw = self.grid
        return gh * gw + 1


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(EncoderConfig):
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407
    pad_token_id: int = 1


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision_config: CLIPVisionConfig = CLIPVisionConfig()
    text_config: CLIPTextConfig = CLIPTextConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592


def _pick(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    if isinstance(kwargs.get("image_size"), list):
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return cls(**kwargs)


def from_hf_dict(d: dict[str, Any]) -> CLIPConfig:
    """Builds a ``CLIPConfig`` from a transformers ``config.json`` dict (or ``config.to_dict()``)."""
    if "vision_config" not in d or "text_config" not in d:
        raise ValueError(
            "not a CLIPModel config: expected 'vision_config' and 'text_config' keys, got "
            f"{sorted(d)[:12]}"
        )
    return CLIPConfig(
        vision_config=_pick(CLIPVisionConfig, d["vision_config"]),
        text_config=_pick(CLIPTextConfig, d["text_config"]),
        projection_dim=d.get("projection_dim", 512),
        logit_scale_init_value=d.get("logit_scale_init_value", 2.6592),
    )


def to_hf_dict(config: CLIPConfig) -> dict[str, Any]:
    """The inverse of ``from_hf_dict``: a dict ``transformers.CLIPConfig(**d)`` accepts."""
    return {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "vision_config": dataclasses.asdict(config.vision_config),
        "text_config": dataclasses.asdict(config.text_config),
        "projection_dim": config.projection_dim,
        "logit_scale_init_value": config.logit_scale_init_value,
    }
