"""The Swin transformer blocks of CLAP's HTSAT audio encoder, mirroring transformers'
``ClapAudioLayer`` / ``ClapAudioStage`` / ``ClapAudioPatchMerging`` (copies of ``modeling_swin``).

Parameter paths (under ``audio_model/audio_encoder``) are the HF keys, per block
``layers/{s}/blocks/{b}/``:

- ``layernorm_before``, ``layernorm_after``: ``scale``/``bias`` (HF ``weight``/``bias``);
- ``attention/self/query|key|value``, ``attention/output/dense``, ``intermediate/dense``,
  ``output/dense``: ``kernel`` (T) / ``bias``;
- ``attention/self/relative_position_bias_table``: HF's ``[(2w-1)^2, heads]`` table as is;

and per stage but the last, ``layers/{s}/downsample/norm`` and ``downsample/reduction`` (T, no bias).
(T: a torch ``[out, in]`` weight stored as a ``[in, out]`` kernel.) The ``relative_position_index``
buffer is not a parameter: ``relative_position_index`` recomputes it.

A block (pre-LN) on tokens ``x`` ``[B, h*w, C]`` of a stage's ``h x w`` grid:
``resid_mid = x + attn_out``, ``attn_out`` = window attention of ``layernorm_before(x)``: the grid
is zero-padded on the bottom/right to whole windows, rolled by ``-shift`` on odd blocks, cut into
``window x window`` windows, attended inside each window with a learned relative position bias
(and, when shifted, a -100 mask between tokens that the roll brought together from different
regions), then put back, rolled back and cropped. ``resid_post = resid_mid + mlp(
layernorm_after(resid_mid))``. Sites: ``sites.BlockSites``; layouts in ``mrepe_jax.sites``.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.clap.config import ClapAudioConfig
from mrepe_jax.models.layers import ACT_FNS, Dense, DenseParams, layer_norm
from mrepe_jax.sites import BlockSites, Sites

# HF's shifted-window mask value: added to scaled scores, so masked keys keep a weight of e^-100.
SHIFT_MASK_VALUE = -100.0
# nn.LayerNorm's default, which HF's patch merging (unlike the blocks) uses.
TORCH_LN_EPS = 1e-5


def window_partition(x, window: int):
    """``[B, H, W, C] -> [B, windows, window*window, C]``, windows and their tokens in raster order
    (HF's ``window_partition`` with the batch axis kept apart)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(x, window: int, h: int, w: int):
    """The inverse of ``window_partition``: ``[B, windows, window*window, C] -> [B, H, W, C]``."""
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@functools.cache
def relative_position_index(window: int) -> np.ndarray:
    """``[w*w, w*w]`` index into the ``[(2w-1)^2, heads]`` bias table (HF's
    ``create_relative_position_index``: row offset * (2w-1) + column offset, both shifted >= 0)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.cache
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """``[windows, w*w, w*w]`` additive mask of a grid (already padded) rolled by ``-shift``: 0
    between tokens of the same one of the 9 regions the roll creates, -100 across regions (HF's
    ``ClapAudioLayer.get_attn_mask``)."""
    def regions(n):
        i = np.arange(n)
        return (i >= n - window).astype(np.int64) + (i >= n - shift)

    region = (regions(height)[:, None] * 3 + regions(width)[None, :])[None, :, :, None]
    windows = np.asarray(window_partition(region, window))[0, :, :, 0]  # [windows, w*w]
    differ = windows[:, None, :] != windows[:, :, None]
    return np.where(differ, SHIFT_MASK_VALUE, 0.0).astype(np.float32)


class _KernelParams(nn.Module):
    """The ``kernel`` of a bias-free ``nn.Dense`` (``DenseParams`` without its bias)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
        return kernel.astype(self.dtype), None


def _heads(x, num_heads: int):
    """``[B, nW, N, C] -> [B, nW, N, H, C/H]``."""
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


class ClapAudioSelfAttention(nn.Module):
    """``ClapAudioSelfAttention`` over windows ``[B, nW, N, C]``; returns per-head ``z`` merged,
    ``[B, nW, N, C]``. Scores are ``(Q K^T) / sqrt(d_head) + bias[index] (+ shift mask)``, softmax
    in float32. ``attn.logits`` is the raw ``Q K^T`` (eq 7 adds there, before the scaling)."""

    config: ClapAudioConfig
    dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, windows, site: BlockSites, mask=None):
        c, d, heads = self.config, self.dim, self.num_heads
        w = c.window_size
        site = site.bind(self)
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * w - 1) ** 2, heads))
        # q, k and v keep the checkpoint's three Linears but run as one [C, 3C] matmul.
        linear = DenseParams if c.qkv_bias else _KernelParams
        kernels, biases = zip(*(linear(d, self.dtype, name=n)(d) for n in ("query", "key", "value")))
        qkv = windows.astype(self.dtype) @ jnp.concatenate(kernels, 1)
        if c.qkv_bias:
            qkv = qkv + jnp.concatenate(biases)
        q, k, v = (site(f"attn.{n}", _heads(t, heads)) for n, t in zip("qkv", jnp.split(qkv, 3, -1)))
        # Head-major [B, nW, H, N, Dh] for the two batched matmuls; sites keep the documented layout.
        qh, kh, vh = (t.transpose(0, 1, 3, 2, 4) for t in (q, k, v))
        logits = site("attn.logits", jnp.matmul(qh, kh.swapaxes(-1, -2)))
        bias = table[relative_position_index(w).reshape(-1)].reshape(w * w, w * w, heads)
        scores = logits.astype(jnp.float32) / math.sqrt(d // heads) + bias.transpose(2, 0, 1).astype(jnp.float32)
        if mask is not None:
            scores = scores + mask[None, :, None]
        pattern = site("attn.pattern", jax.nn.softmax(scores, axis=-1).astype(self.dtype))
        z = site("attn.z", jnp.matmul(pattern, vh).transpose(0, 1, 3, 2, 4))
        return z.reshape(z.shape[:-2] + (d,))


class _DenseModule(nn.Module):
    """A module holding one ``dense`` Linear, so paths read ``output/dense`` as HF's do."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Dense(self.features, dtype=self.dtype, name="dense")(x)


class ClapAudioAttention(nn.Module):
    """``ClapAudioAttention``: ``self`` (window attention) then ``output.dense``."""

    config: ClapAudioConfig
    dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, windows, site: BlockSites, mask=None):
        z = ClapAudioSelfAttention(self.config, self.dim, self.num_heads, self.dtype, name="self")(
            windows, site, mask)
        return _DenseModule(self.dim, self.dtype, name="output")(z)


class ClapAudioLayer(nn.Module):
    """``ClapAudioLayer``: one Swin block of stage ``stage`` (index ``block`` inside it)."""

    config: ClapAudioConfig
    stage: int
    block: int
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, sites: Sites):
        c, s = self.config, self.stage
        site = BlockSites(sites, self, self.tower, s, self.block)
        dim, (h, w) = c.stage_dims[s], c.stage_resolutions[s]
        window, shift = c.window_size, c.shift(s, self.block)
        b = x.shape[0]
        x = site("resid_pre", x)
        grid = layer_norm(c.layer_norm_eps, "layernorm_before", self.dtype)(x).reshape(b, h, w, dim)
        # Zero-pad after the norm, as HF does: padded tokens enter attention as zero vectors.
        hp, wp = -(-h // window) * window, -(-w // window) * window
        grid = jnp.pad(grid, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if shift:
            grid = jnp.roll(grid, (-shift, -shift), axis=(1, 2))
        mask = jnp.asarray(shifted_window_mask(hp, wp, window, shift)) if shift else None
        attn = ClapAudioAttention(c, dim, c.num_attention_heads[s], self.dtype, name="attention")(
            window_partition(grid, window), site, mask)
        grid = window_reverse(attn, window, hp, wp)
        if shift:
            grid = jnp.roll(grid, (shift, shift), axis=(1, 2))
        a = site("attn_out", grid[:, :h, :w].reshape(b, h * w, dim))
        x = site("resid_mid", x + a)
        m = layer_norm(c.layer_norm_eps, "layernorm_after", self.dtype)(x)
        m = ACT_FNS[c.hidden_act](_DenseModule(c.mlp_dim(s), self.dtype, name="intermediate")(m))
        m = site("mlp_out", _DenseModule(dim, self.dtype, name="output")(site("mlp.hidden", m)))
        return site("resid_post", x + m)


class ClapAudioPatchMerging(nn.Module):
    """``ClapAudioPatchMerging``: each 2x2 group of tokens concatenated (order (0,0), (1,0), (0,1),
    (1,1) as (row, col)), normalised, and reduced ``4C -> 2C`` without bias."""

    config: ClapAudioConfig
    stage: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        (h, w), dim = self.config.stage_resolutions[self.stage], self.config.stage_dims[self.stage]
        grid = x.reshape(x.shape[0], h, w, dim)
        grid = jnp.concatenate([grid[:, row::2, col::2] for col in range(2) for row in range(2)], axis=-1)
        grid = grid.reshape(x.shape[0], -1, 4 * dim)
        grid = layer_norm(TORCH_LN_EPS, "norm", self.dtype)(grid)
        return Dense(2 * dim, use_bias=False, dtype=self.dtype, name="reduction")(grid)


class ClapAudioBlocks(nn.Module):
    """The blocks ``{b}`` of one stage (a module of its own so that paths read ``blocks/{b}``)."""

    config: ClapAudioConfig
    stage: int
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.blocks = [ClapAudioLayer(self.config, self.stage, b, self.tower, self.dtype, name=str(b))
                       for b in range(self.config.depths[self.stage])]

    def __call__(self, x, sites: Sites, start: int, stop: int):
        for b in range(start, stop):
            x = self.blocks[b](x, sites)
        return x


class ClapAudioStage(nn.Module):
    """``ClapAudioStage``: blocks ``[start, stop)``, then the patch merging into the next stage's
    grid once the stage's last block has run (the last stage has none)."""

    config: ClapAudioConfig
    stage: int
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.blocks = ClapAudioBlocks(self.config, self.stage, self.tower, self.dtype)
        if self.stage < self.config.num_stages - 1:
            self.downsample = ClapAudioPatchMerging(self.config, self.stage, self.dtype)

    def __call__(self, x, sites: Sites, start: int, stop: int):
        x = self.blocks(x, sites, start, stop)
        if stop == self.config.depths[self.stage] and self.stage < self.config.num_stages - 1:
            x = self.downsample(x)
        return x


class ClapAudioStages(nn.Module):
    """Every stage ``layers/{s}``; runs blocks ``[start, stop)`` counted over all stages, so the
    output is the residual stream entering block ``stop`` (merged when it opens a new stage)."""

    config: ClapAudioConfig
    tower: str = "audio"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.stages = [ClapAudioStage(self.config, s, self.tower, self.dtype, name=str(s))
                       for s in range(self.config.num_stages)]

    def __call__(self, x, sites: Sites, start: int = 0, stop: int | None = None):
        c = self.config
        stop = c.num_blocks if stop is None else stop
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise TypeError("the audio tower's blocks run unrolled: start/stop must be Python ints, got "
                            f"{type(start).__name__} and {type(stop).__name__}")
        if not 0 <= start <= stop <= c.num_blocks:
            raise ValueError(f"block range [{start}, {stop}) is outside the {self.tower} tower's "
                             f"0..{c.num_blocks}")
        first = 0
        for s, stage in enumerate(self.stages):
            lo, hi = max(start, first), min(stop, first + c.depths[s])
            if lo < hi:
                x = stage(x, sites, lo - first, hi - first)
            first += c.depths[s]
        return x
