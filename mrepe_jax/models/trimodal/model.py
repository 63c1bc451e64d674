"""A tri-modal CLIP (image, text, audio) built from the same Flax towers as the real CLIP.

The audio tower is a ViT over log-mel patches: ``AudioTransformer`` computes the log-mel
spectrogram (``mrepe_jax.data.audio``) inside ``embed``, so ``audio.*`` sites start from the
waveform the user passes, exactly as ``vision.*`` sites start from pixels.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.data.audio import LogMelConfig, log_mel_spectrogram, n_frames
from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.clip.model import CLIPTextTransformer, CLIPVisionTransformer, ContrastiveTowers
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import normalize
from mrepe_jax.sites import Sites


@dataclasses.dataclass(frozen=True)
class TriModalConfig:
    vision_config: CLIPVisionConfig
    text_config: CLIPTextConfig
    audio_config: CLIPVisionConfig  # image_size = (frames, n_mels), num_channels = 1
    log_mel: LogMelConfig = LogMelConfig()
    num_audio_samples: int = 4000
    # Fixed affine on log-mel power: per-clip standardisation would erase loudness, which
    # encodes a concept (size) in ToyWorld.
    log_mel_shift: float = 8.5
    log_mel_scale: float = 3.5
    projection_dim: int = 64
    logit_scale_init_value: float = 2.6592

    def __post_init__(self):
        frames = n_frames(self.num_audio_samples, self.log_mel)
        want = (frames, self.log_mel.n_mels)
        if self.audio_config.image_hw != want or self.audio_config.num_channels != 1:
            raise ValueError(
                f"audio tower expects a (frames, n_mels) = {want} one-channel input for "
                f"{self.num_audio_samples}-sample clips, but audio_config has image_size "
                f"{self.audio_config.image_hw} and {self.audio_config.num_channels} channels"
            )


def log_mel_features(waveform, log_mel: LogMelConfig, shift: float, scale: float):
    """``[B, samples]`` waveforms -> the audio tower's ``[B, frames, n_mels, 1]`` input."""
    return ((log_mel_spectrogram(waveform, log_mel) + shift) / scale)[..., None]


class AudioTransformer(CLIPVisionTransformer):
    """ViT over log-mel patches; input is a waveform ``[B, num_samples]``, or the log-mel features
    ``features(waveform)`` of shape ``[B, frames, n_mels, 1]`` when they were computed beforehand
    (training computes them once per clip, not once per step: they hold no parameters)."""

    log_mel: LogMelConfig = LogMelConfig()
    num_audio_samples: int = 4000
    log_mel_shift: float = 8.5
    log_mel_scale: float = 3.5

    def features(self, waveform):
        if waveform.ndim != 2 or waveform.shape[1] != self.num_audio_samples:
            raise ValueError(
                f"audio tower expects waveforms of shape [batch, {self.num_audio_samples}], "
                f"got {waveform.shape}"
            )
        inputs_lib.check_batch(waveform, "audio waveforms", self.tower)
        inputs_lib.check_finite(waveform, "audio waveforms", self.tower)
        return log_mel_features(waveform, self.log_mel, self.log_mel_shift, self.log_mel_scale)

    def embed(self, audio, sites: Sites):
        """``audio``: waveforms ``[B, num_samples]`` or their ``features`` ``[B, frames, n_mels, 1]``."""
        if audio.ndim not in (2, 4):
            raise ValueError(
                f"audio tower expects waveforms [batch, {self.num_audio_samples}] or log-mel features "
                f"[batch, frames, n_mels, 1], got shape {audio.shape}"
            )
        return super().embed(self.features(audio) if audio.ndim == 2 else audio, sites)


class TriModalCLIP(ContrastiveTowers):
    config: TriModalConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.config
        self.vision_model = CLIPVisionTransformer(c.vision_config, "vision", self.dtype, self.execution)
        self.text_model = CLIPTextTransformer(c.text_config, "text", self.dtype, self.execution)
        self.audio_model = AudioTransformer(
            c.audio_config, "audio", self.dtype, self.execution, c.log_mel, c.num_audio_samples,
            c.log_mel_shift, c.log_mel_scale,
        )
        dense = lambda: nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)  # noqa: E731
        self.visual_projection, self.text_projection, self.audio_projection = dense(), dense(), dense()
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init_value), ())

    def tower_modules(self):
        return {
            "vision": (self.vision_model, self.visual_projection),
            "text": (self.text_model, self.text_projection),
            "audio": (self.audio_model, self.audio_projection),
        }

    def tower_layers(self):
        c = self.config
        return {
            "vision": c.vision_config.num_hidden_layers,
            "text": c.text_config.num_hidden_layers,
            "audio": c.audio_config.num_hidden_layers,
        }

    def __call__(self, pixel_values, input_ids, attention_mask, audio, sites: Sites = Sites()):
        """Unit-norm ``image_embeds`` / ``text_embeds`` / ``audio_embeds`` (as ``CLIPModel``'s) and
        the learned logit scale; the unnormalised projections are the ``{tower}.proj`` sites."""
        return {
            "image_embeds": normalize(self.encode("vision", pixel_values, sites=sites)),
            "text_embeds": normalize(self.encode("text", input_ids, attention_mask, sites=sites)),
            "audio_embeds": normalize(self.encode("audio", audio, sites=sites)),
            "logit_scale": jnp.exp(self.logit_scale),
        }
