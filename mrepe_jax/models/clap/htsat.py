"""CLAP's HTSAT audio tower in Linen, mirroring transformers' ``ClapAudioModel`` (5.24): from the
log-mel features to the pooled audio embedding, with named sites (tower ``audio``).

The forward, step by step as in ``ClapAudioEncoder.forward``:

1. ``batch_norm`` over the mel bins (``BatchNorm2d(num_mel_bins)``, inference: running statistics)
   of the ``[batch, channels, time, num_mel_bins]`` features (``ClapFeatureExtractor``'s layout).
2. ``mel_to_image``: time resized to ``spec_width`` frames (bicubic, ``align_corners=True``; only
   when shorter, as HF), then folded into a ``spec_size x spec_size`` image (``reshape_mel2img``).
3. ``patch_embed``: a strided convolution (padding ``(patch - stride) // 2``), flattened to tokens
   in raster order, then ``norm``. Fused models (``enable_fusion``) embed channel 0 (the global mel)
   with ``proj`` and, for the clips flagged ``is_longer``, fuse it with the three local crops
   (channels 1-3) embedded by ``mel_conv2d`` and laid side by side in time
   (``ClapAudioAFFBlock``, attentional feature fusion).
4. The Swin stages (``swin``): blocks, then patch merging between stages.
5. ``norm``; ``pooler_output`` is the mean over every token (``AdaptiveAvgPool1d`` over the
   regrouped map, which only permutes the tokens); ``last_hidden_state`` is HF's regrouped
   ``[batch, C, f // freq_ratio, freq_ratio * t]`` map (``regroup``).

Flax paths under ``audio_model/audio_encoder`` are HF's keys: ``batch_norm/{scale, bias,
running_mean, running_var}`` (the running statistics are frozen parameters here: inference only),
``patch_embed/proj|mel_conv2d/kernel [kh, kw, in, out]|bias``, ``patch_embed/norm``,
``patch_embed/fusion_model/local_att/{0,1,3,4}``, ``.../global_att/{1,2,4,5}`` (convolutions and
batch norms at their ``nn.Sequential`` indices), ``layers/{s}/...`` (``swin``) and ``norm``.

Sites: ``audio.embed`` (the patch embedding after its norm: the input of the first block),
``audio.stages.{s}.blocks.{b}.{point}`` (``swin``; ``stages.{s+1}.blocks.0.resid_pre`` is the
patch merging of stage ``s``'s last ``resid_post``), ``audio.pooled`` (``pooler_output``). The
blocks run unrolled: their shapes change from stage to stage, and alternate blocks shift.
``run_layers(h, start, stop)`` counts blocks over all stages (``ClapAudioConfig.block_index``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.clap.config import ClapAudioConfig
from mrepe_jax.models.clap.swin import TORCH_LN_EPS, ClapAudioStages
from mrepe_jax.models.layers import layer_norm
from mrepe_jax.sites import SitedModel, Sites, hierarchical_site_names

BICUBIC_A = -0.75  # torch's cubic convolution coefficient


@functools.cache
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float32 weights of torch's 1-D bicubic resize with ``align_corners=True``
    (the source position, its fraction and the four tap weights computed in float32 by torch's
    formulas; taps beyond the edges clamp to the edge sample). Where torch's compiled kernel fuses
    multiply-adds, a weight differs by an ulp or two (at most 5e-7 measured, torch 2.13 CPU)."""
    a = np.float32(BICUBIC_A)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    real = scale * np.arange(n_out, dtype=np.float32)
    index = np.floor(real).astype(np.int64)
    t = np.clip(real - index.astype(np.float32), 0, 1).astype(np.float32)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    u = (1 - t).astype(np.float32)  # torch's coefficients of the far side take 1 - t, then add 1
    weights = np.stack([far(t + 1), near(t), near(u), far(u + 1)], axis=1).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    for k in range(4):
        np.add.at(m, (np.arange(n_out), np.clip(index - 1 + k, 0, n_in - 1)), weights[:, k])
    return m


def mel_to_image(features, config: ClapAudioConfig):
    """``[B, C, T, F]`` normalised features -> the ``[B, C, spec_size, spec_size]`` (NCHW) image of
    HF's ``reshape_mel2img``: time resized to ``spec_width`` when shorter, then cut into
    ``freq_ratio`` consecutive pieces stacked along the frequency axis."""
    b, ch, t, f = features.shape
    width, ratio = config.spec_width, config.freq_ratio
    if t < width:
        # HIGHEST: a reduced-precision matmul (TF32/bf16 passes on accelerators) is no resize.
        features = jnp.einsum("ot,bctf->bcof", jnp.asarray(bicubic_matrix(t, width)), features,
                              precision=jax.lax.Precision.HIGHEST)
    x = features.reshape(b, ch * ratio, width // ratio, f).transpose(0, 1, 3, 2)
    return x.reshape(b, ch, f * ratio, width // ratio)


class BatchNorm(nn.Module):
    """Inference-mode ``BatchNorm2d`` over the last axis, computed as torch's CPU kernel does
    (``x * alpha + beta``); parameters ``scale``/``bias`` and the frozen running statistics."""

    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (d,))
        bias = self.param("bias", nn.initializers.zeros_init(), (d,))
        mean = self.param("running_mean", nn.initializers.zeros_init(), (d,))
        var = self.param("running_var", nn.initializers.ones_init(), (d,))
        alpha = scale / jnp.sqrt(var + self.epsilon)
        return (x.astype(jnp.float32) * alpha + (bias - mean * alpha)).astype(self.dtype)


def _conv(features: int, kernel, stride, padding, dtype, name: str) -> nn.Conv:
    return nn.Conv(features, tuple(kernel), tuple(stride), padding=[(p, p) for p in padding], dtype=dtype,
                   name=name)


class _AttentionBranch(nn.Module):
    """One branch of ``ClapAudioAFFBlock``: ``conv1x1 -> BN -> ReLU -> conv1x1 -> BN``, on the map
    (``local_att``, indices 0-4) or on its spatial mean (``global_att``, indices 1-5, index 0 being
    HF's ``AdaptiveAvgPool2d``)."""

    channels: int
    inter_channels: int
    pooled: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        i = int(self.pooled)
        if self.pooled:
            x = x.mean(axis=(1, 2), keepdims=True)
        x = _conv(self.inter_channels, (1, 1), (1, 1), (0, 0), self.dtype, str(i))(x)
        x = jax.nn.relu(BatchNorm(dtype=self.dtype, name=str(i + 1))(x))
        x = _conv(self.channels, (1, 1), (1, 1), (0, 0), self.dtype, str(i + 3))(x)
        return BatchNorm(dtype=self.dtype, name=str(i + 4))(x)


class ClapAudioAFFBlock(nn.Module):
    """``ClapAudioAFFBlock`` (2-D attentional feature fusion) on NHWC maps:
    ``w = sigmoid(local_att(h + r) + global_att(h + r))``, output ``2 h w + 2 r (1 - w)``."""

    config: ClapAudioConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, residual):
        channels = self.config.patch_embeds_hidden_size
        inter = int(channels // self.config.aff_block_r)
        x = h + residual
        w = jax.nn.sigmoid(_AttentionBranch(channels, inter, False, self.dtype, name="local_att")(x)
                           + _AttentionBranch(channels, inter, True, self.dtype, name="global_att")(x))
        return 2 * h * w + 2 * residual * (1 - w)


class ClapAudioPatchEmbed(nn.Module):
    """``ClapAudioPatchEmbed`` on the NHWC image: tokens ``[B, grid_h * grid_w, D]``."""

    config: ClapAudioConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image, is_longer=None):
        c = self.config
        d, (p0, p1), (s0, s1) = c.patch_embeds_hidden_size, c.patch_hw, c.stride_hw
        proj = _conv(d, (p0, p1), (s0, s1), c.padding, self.dtype, "proj")
        b = image.shape[0]
        if c.enable_fusion:
            x = proj(image[..., :1])
            # Each local crop through mel_conv2d on its own, then the crops side by side in time,
            # zero-padded (or cut) to the global map's width, as HF's F.pad does.
            crops, (_, h, w, _) = image.shape[-1] - 1, image.shape
            local = image[..., 1:].transpose(0, 3, 1, 2).reshape(b * crops, h, w, 1)
            local = _conv(d, (p0, 3 * p1), (s0, 3 * s1), c.padding, self.dtype, "mel_conv2d")(local)
            lh, lw = local.shape[1:3]
            local = local.reshape(b, crops, lh, lw, d).transpose(0, 2, 1, 3, 4).reshape(b, lh, crops * lw, d)
            width = x.shape[2]
            local = local[:, :, :width] if crops * lw >= width else jnp.pad(
                local, ((0, 0), (0, 0), (0, width - crops * lw), (0, 0)))
            fused = ClapAudioAFFBlock(c, self.dtype, name="fusion_model")(x, local)
            # Every row is fused (static shapes); the short clips keep their global embedding.
            longer = jnp.zeros((b,), bool) if is_longer is None else jnp.reshape(is_longer, (b,)).astype(bool)
            x = jnp.where(longer[:, None, None, None], fused, x)
        else:
            x = proj(image)
        x = x.reshape(b, -1, d)
        if c.enable_patch_layer_norm:
            x = layer_norm(TORCH_LN_EPS, "norm", self.dtype)(x)
        return x


def regroup(last, config: ClapAudioConfig):
    """The normed final tokens ``[B, fh*fw, C]`` as HF's ``last_hidden_state``: the ``[B, C, fh,
    fw]`` map with its ``freq_ratio`` frequency bands laid side by side in time,
    ``[B, C, fh // freq_ratio, freq_ratio * fw]``."""
    b, _, ch = last.shape
    fh, fw = config.stage_resolutions[-1]
    bins = fh // config.freq_ratio
    x = last.transpose(0, 2, 1).reshape(b, ch, fh // bins, bins, fw)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, ch, bins, -1)


class ClapAudioEncoder(nn.Module):
    """``ClapAudioEncoder``, in the stages a patching sweep needs: ``embed`` / ``run_layers`` /
    ``readout``."""

    config: ClapAudioConfig
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.batch_norm = BatchNorm(dtype=jnp.float32)
        self.patch_embed = ClapAudioPatchEmbed(self.config, self.dtype)
        self.layers = ClapAudioStages(self.config, self.tower, self.dtype)
        self.norm = layer_norm(TORCH_LN_EPS, None, self.dtype)

    def embed(self, input_features, sites: Sites, is_longer=None):
        check_features(input_features, self.config, self.tower)
        x = self.batch_norm(jnp.asarray(input_features, jnp.float32))
        image = mel_to_image(x, self.config).transpose(0, 2, 3, 1).astype(self.dtype)
        return sites(self, f"{self.tower}.embed", self.patch_embed(image, is_longer))

    def run_layers(self, h, sites: Sites, start: int = 0, stop: int | None = None):
        return self.layers(h, sites, start, stop)

    def readout(self, h, sites: Sites):
        """``(last_hidden_state`` in HF's regrouped layout, ``pooler_output``, site ``pooled)``."""
        last = self.norm(h)
        return regroup(last, self.config), sites(self, f"{self.tower}.pooled", last.mean(axis=1))


def check_features(x, config: ClapAudioConfig, tower: str = "audio") -> None:
    """``[batch, channels, time, mel bins]`` features of the model's channels and mel bins, no
    longer than the image takes, or an error naming the expected layout."""
    inputs_lib.check_batch(x, "input_features", tower)
    shape = tuple(np.shape(x))
    want = (f"expected input_features [batch, {config.input_channels}, time <= {config.spec_width}, "
            f"{config.num_mel_bins}] (ClapFeatureExtractor's layout"
            f"{', fusion truncation' if config.enable_fusion else ''}) for the {tower} tower, got {shape}")
    if len(shape) != 4 or shape[1] != config.input_channels or shape[3] != config.num_mel_bins:
        raise ValueError(want)
    if shape[2] > config.spec_width:
        raise ValueError(f"{want}: {shape[2]} frames exceed the {config.spec_width} the spectrogram image holds")
    inputs_lib.check_finite(x, "input_features", tower)


class ClapAudioModel(SitedModel):
    """transformers' ``ClapAudioModel``; ``apply(variables, input_features [B, C, T, F], is_longer
    [B] or [B, 1] (fused models; None: no clip is longer), edits=, capture=)`` returns
    ``({"last_hidden_state", "pooler_output"}, acts)``. As a submodule (``audio_model`` of
    ``ClapModel``) it is called with ``sites=`` and through its stages."""

    config: ClapAudioConfig
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.audio_encoder = ClapAudioEncoder(self.config, self.tower, self.dtype)

    def tower_layers(self) -> dict[str, int]:
        return {self.tower: self.config.num_blocks}

    def site_names(self) -> tuple[str, ...]:
        """Every site but ``proj`` (a projection belongs to ``ClapModel``)."""
        names = hierarchical_site_names(self.tower, self.config.depths)
        return tuple(n for n in names if n != f"{self.tower}.proj")

    def embed(self, input_features, sites: Sites = Sites(), is_longer=None):
        """Features -> tokens entering the first block (site ``audio.embed``)."""
        return self.audio_encoder.embed(input_features, sites, is_longer)

    def layer_mask(self, inputs, attention_mask=None):
        """Audio tokens attend within their windows; there is no padding mask."""
        return None

    def run_layers(self, h, sites: Sites = Sites(), start: int = 0, stop: int | None = None, mask=None):
        """Blocks ``[start, stop)`` counted over every stage (static ints)."""
        return self.audio_encoder.run_layers(h, sites, start, stop)

    def pool_index(self, inputs):
        raise ValueError("the CLAP audio tower pools the mean of all its final tokens: no single token "
                         "position is read out")

    def readout(self, h, sites: Sites = Sites(), inputs=None):
        """Final tokens -> ``pooler_output`` (site ``audio.pooled``)."""
        return self.audio_encoder.readout(h, sites)[1]

    def __call__(self, input_features, is_longer=None, sites: Sites = Sites()):
        h = self.run_layers(self.embed(input_features, sites, is_longer), sites)
        last, pooled = self.audio_encoder.readout(h, sites)
        return {"last_hidden_state": last, "pooler_output": pooled}
