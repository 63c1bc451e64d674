"""Sparse autoencoders as pure functions of a params pytree: ``x -> z = f(pre(x)) -> x_hat = z W_dec
+ b_dec``, with ``pre(x) = (x - b_dec) W_enc + b_enc``. The param names are SAELens' (``W_enc
[d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold``), so a saved SAE is
theirs too (``features.saelens``).

Architectures (``SAEConfig.architecture``), each its paper's activation and sparsity term:

- ``relu``: ReLU with an L1 penalty on ``z_i * ||W_dec[i]||`` (Bricken et al. 2023, "Towards
  Monosemanticity"; the decoder-norm weighting of Conerly et al. 2024, Anthropic's April update).
- ``topk``: keep each row's ``k`` largest pre-activations, ReLU'd (Gao et al. 2024, "Scaling and
  evaluating sparse autoencoders"); no sparsity term.
- ``batchtopk``: keep the ``k * B`` largest over the whole batch (Bussmann et al. 2024,
  "BatchTopK Sparse Autoencoders"); at inference a fixed ``threshold``, the running mean of the
  smallest kept activation, replaces the batch (a JumpReLU with one threshold for every latent).
- ``jumprelu``: ``z = pre * H(pre - theta)`` with a learned per-latent threshold ``theta`` and an
  L0 penalty, both differentiated with the straight-through estimator of Rajamanoharan et al.
  2024 ("Jumping Ahead"): the Heaviside step's derivative with respect to ``theta`` is the
  rectangle kernel ``K((pre - theta) / eps) / eps``, bandwidth ``eps``.

Training details shared by all (``loss``): the decoder's rows are kept at unit norm (renormalised
after every step, Bricken et al.), ``b_dec`` starts at the data's mean, inputs are scaled by a
fixed factor so that their expected norm is ``sqrt(d_in)`` (SAELens' ``expected_average_only_in``;
folded into the weights at the end, ``fold_scale``), and the top-k kinds add AuxK (Gao et al.):
the residual ``x - x_hat`` reconstructed by the ``aux_k`` largest pre-activations of the latents
that have not fired for ``dead_steps`` steps, weighted by ``aux_coefficient``.

Stacks: every function takes one SAE; ``jax.vmap`` over a stack of params (and ``SAEConfig``'s
per-member ``k`` and live-latent masks, ``Member``) trains several SAEs of one input width in one
program. A member of fewer latents than the stack's ``d_sae`` masks the rest (they never fire and
hold zero decoder rows), and ``k`` is an array, so sizes and ``k`` vary inside one program.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.features import sparse

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """What defines one stack of SAEs and its training (hashable: a static argument).

    Attributes:
      d_in: input width; d_sae: latents (the largest member's, in a stack).
      architecture: one of ``ARCHITECTURES``.
      l1_coefficient: ``relu``'s sparsity weight; l0_coefficient: ``jumprelu``'s.
      bandwidth, init_threshold: ``jumprelu``'s STE kernel width and initial ``theta`` (in the
        normalised input's units).
      aux_k, aux_coefficient, dead_steps: AuxK for ``topk`` / ``batchtopk`` (0 turns it off).
      threshold_decay: ``batchtopk``'s running-mean decay of the inference threshold.
      learning_rate, batch_size, num_steps, seed: Adam and the stream of activation batches.
      normalize: scale inputs to expected norm ``sqrt(d_in)`` (the factor is estimated once, from
        the first batches, and folded into the saved weights).
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1e-3
    bandwidth: float = 1e-3
    init_threshold: float = 1e-3
    aux_k: int = 256
    aux_coefficient: float = 1.0 / 32
    dead_steps: int = 200
    threshold_decay: float = 0.99
    learning_rate: float = 4e-4
    batch_size: int = 1024
    num_steps: int = 2000
    seed: int = 0
    normalize: bool = True

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.architecture!r} is not one of {list(ARCHITECTURES)}")
        for name in ("d_in", "d_sae", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_steps < 0 or self.aux_k < 0 or self.dead_steps < 1:
            raise ValueError(f"need num_steps >= 0, aux_k >= 0 and dead_steps >= 1, got {self.num_steps}, "
                             f"{self.aux_k} and {self.dead_steps}")


@flax.struct.dataclass
class Member:
    """One SAE's settings that vary inside a stack, as arrays: ``k`` (top-k kinds; ignored
    otherwise) and ``live [d_sae]``, which latents exist (a member of ``n`` latents: the first
    ``n``)."""

    k: jax.Array
    live: jax.Array

    @classmethod
    def of(cls, d_sae: int, size: int | None = None, k: int = 0) -> Member:
        size = d_sae if size is None else int(size)
        if not 1 <= size <= d_sae:
            raise ValueError(f"an SAE of {size} latents does not fit a stack of d_sae={d_sae}")
        return cls(jnp.asarray(k, jnp.int32), jnp.arange(d_sae) < size)


def init_params(cfg: SAEConfig, key, sample: np.ndarray, member: Member | None = None) -> dict:
    """Fresh params: decoder rows random unit vectors, ``W_enc = W_dec.T`` (the tied start of
    Conerly et al. / Gao et al.), ``b_enc = 0``, ``b_dec`` the mean of ``sample [N, d_in]`` (in
    the units the SAE is trained in), ``threshold`` ``init_threshold`` (``jumprelu``; the
    ``batchtopk`` inference threshold starts at 0 and is tracked during training)."""
    member = Member.of(cfg.d_sae) if member is None else member
    # One key per latent: latent i starts alike in a stack of any d_sae and alone.
    w = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (cfg.d_in,)))(jnp.arange(cfg.d_sae))
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True) * member.live[:, None]
    params = {"W_enc": w.T, "b_enc": jnp.zeros((cfg.d_sae,), jnp.float32), "W_dec": w,
              "b_dec": jnp.asarray(np.mean(np.asarray(sample, np.float64), 0), jnp.float32)}
    if cfg.architecture == "jumprelu":
        params["log_threshold"] = jnp.full((cfg.d_sae,), np.log(cfg.init_threshold), jnp.float32)
    return params


def pre_activations(params: dict, x):
    """``(x - b_dec) W_enc + b_enc``, ``[..., d_sae]``."""
    return (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]


def _rank_mask(values, k):
    """True where an entry of the last axis is among its ``k`` largest (``k`` may be traced:
    members of other ``k`` share one program, unlike ``lax.top_k``'s static size).

    Radix select: floats map to order-preserving unsigned keys, and each row's ``k``-th largest
    key is built bit by bit from the most significant down (the largest ``t`` with ``count(key >=
    t) >= k``): 32 compare-and-count passes, no sort. On XLA:CPU (2 cores) it selects the top 32 of
    a [1024, 8192] block in 106-130 ms, a 48-step bisection in 182 ms, a sort in 1.3 s; where ``k``
    has a static bound, ``lax.top_k`` with its indices used (``sparse.select``) takes 22 ms
    (``bench/sae.py``), so ``loss`` and ``encode`` use that when given ``k_max``. The mask is the
    sort's: entries tied with the ``k``-th are all kept; ``-inf`` entries only when fewer than ``k``
    are finite."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
    signed = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)  # monotone in the float
    keys = jax.lax.bitcast_convert_type(signed, jnp.uint32) ^ jnp.uint32(0x80000000)
    t = jnp.zeros(values.shape[:-1], jnp.uint32)
    for b in range(31, -1, -1):
        candidate = t | jnp.uint32(1 << b)
        count = jnp.sum(keys >= candidate[..., None], axis=-1, dtype=jnp.int32)
        t = jnp.where(count >= k, candidate, t)
    signed = jax.lax.bitcast_convert_type(t ^ jnp.uint32(0x80000000), jnp.int32)
    kth = jax.lax.bitcast_convert_type(jnp.where(signed < 0, signed ^ jnp.int32(0x7FFFFFFF), signed), jnp.float32)
    return (values >= kth[..., None].astype(values.dtype)) & (k > 0)


@jax.custom_vjp
def _step(u, theta, bandwidth):
    """Heaviside ``H(u - theta)`` with Rajamanoharan et al.'s STE for ``theta``."""
    return (u > theta).astype(u.dtype)


def _step_fwd(u, theta, bandwidth):
    return _step(u, theta, bandwidth), (u, theta, bandwidth)


def _step_bwd(res, g):
    u, theta, bandwidth = res
    kernel = (jnp.abs((u - theta) / bandwidth) < 0.5).astype(u.dtype) / bandwidth
    return jnp.zeros_like(u), -jnp.sum(g * kernel, axis=tuple(range(g.ndim - theta.ndim))), None


_step.defvjp(_step_fwd, _step_bwd)


@jax.custom_vjp
def _jump(u, theta, bandwidth):
    """``u * H(u - theta)``: gradient ``H`` with respect to ``u`` and, by the STE,
    ``-theta / eps * K((u - theta) / eps)`` with respect to ``theta``."""
    return u * (u > theta).astype(u.dtype)


def _jump_fwd(u, theta, bandwidth):
    return _jump(u, theta, bandwidth), (u, theta, bandwidth)


def _jump_bwd(res, g):
    u, theta, bandwidth = res
    kernel = (jnp.abs((u - theta) / bandwidth) < 0.5).astype(u.dtype) / bandwidth
    d_theta = -jnp.sum(g * theta * kernel, axis=tuple(range(g.ndim - theta.ndim)))
    return g * (u > theta).astype(u.dtype), d_theta, None


_jump.defvjp(_jump_fwd, _jump_bwd)


def threshold(params: dict):
    """The per-latent inference threshold: ``exp(log_threshold)`` (``jumprelu``) or the stored
    ``threshold`` (``batchtopk`` after training, and any SAE loaded from SAELens)."""
    if "log_threshold" in params:
        return jnp.exp(params["log_threshold"])
    return params["threshold"]


def encode(params: dict, x, cfg: SAEConfig, member: Member | None = None, train: bool = False,
           k_max: int = 0):
    """Latents ``z [..., d_sae]`` of ``x [..., d_in]``. ``batchtopk`` picks over the whole batch
    (axis 0) when ``train``, else compares with its ``threshold``. ``k_max`` (static, ``topk``):
    at least ``member.k``; given, the selection is ``lax.top_k`` (``sparse.select``; 6x faster
    than the radix select on XLA:CPU) instead of ``_rank_mask``."""
    member = Member.of(cfg.d_sae) if member is None else member
    pre = pre_activations(params, x)
    live = member.live
    arch = cfg.architecture
    if arch == "topk" and k_max:
        flat = jnp.where(live, pre, -jnp.inf).reshape(-1, pre.shape[-1])
        vals, idx = sparse.select(flat, k_max)
        kept = jax.nn.relu(vals) * (jnp.arange(k_max) < member.k)
        z = jnp.zeros_like(flat).at[jnp.arange(flat.shape[0])[:, None], idx].set(kept).reshape(pre.shape)
    elif arch == "relu":
        z = jax.nn.relu(pre)
    elif arch == "topk":
        masked = jnp.where(live, pre, -jnp.inf)
        z = jax.nn.relu(pre) * _rank_mask(masked, member.k)
    elif arch == "batchtopk" and train:
        masked = jnp.where(live, jax.nn.relu(pre), -jnp.inf)
        flat = masked.reshape(-1)
        keep = _rank_mask(flat, member.k * masked.shape[0]).reshape(masked.shape)
        z = jax.nn.relu(pre) * keep
    elif arch == "batchtopk":
        z = jax.nn.relu(pre) * (pre > params["threshold"])
    else:  # jumprelu
        z = _jump(pre, threshold(params), cfg.bandwidth)
    return z * live


def decode(params: dict, z):
    """``z W_dec + b_dec``."""
    return z @ params["W_dec"] + params["b_dec"]


def reconstruct(params: dict, x, cfg: SAEConfig, member: Member | None = None):
    return decode(params, encode(params, x, cfg, member))


def _aux_loss(params, x, x_hat, pre, dead, cfg: SAEConfig, live):
    """AuxK (Gao et al. 2024): the residual ``x - x_hat`` predicted from the ``aux_k`` largest
    pre-activations among dead latents, its squared error relative to the residual's variance."""
    residual = jax.lax.stop_gradient(x - x_hat)
    candidates = jnp.where(dead & live, jax.nn.relu(pre), -jnp.inf)
    k = min(cfg.aux_k, cfg.d_sae)
    keep = _rank_mask(candidates, k) & (dead & live)
    e_hat = (jax.nn.relu(pre) * keep) @ params["W_dec"]
    err = jnp.sum((residual - e_hat) ** 2, -1).mean()
    total = jnp.sum((residual - residual.mean(0)) ** 2, -1).mean()
    # No dead latent: nothing to revive, and the term must not push the live ones.
    return jnp.where(jnp.any(dead & live), err / jnp.maximum(total, 1e-12), 0.0)


def _sparse_topk(params: dict, x, pre, member: Member, k_max: int):
    """TopK's latents as ``(z [B, k_max], idx [B, k_max])`` (slot ``s`` kept where ``s < k``) and
    the reconstruction, through ``features.sparse`` (the same values as ``encode`` / ``decode``;
    ties at the ``k``-th value keep exactly ``k``, the lowest indices first)."""
    vals, idx = sparse.select(jnp.where(member.live, pre, -jnp.inf), k_max)
    a = sparse.encode_rows(params["W_enc"], params["b_enc"], x - params["b_dec"], idx, vals)
    z = jax.nn.relu(a) * (jnp.arange(k_max) < member.k)
    return z, idx, sparse.decode_rows(params["W_dec"], z, idx) + params["b_dec"]


def loss(params: dict, x, cfg: SAEConfig, member: Member, dead, k_max: int = 0) -> tuple[jax.Array, dict]:
    """One SAE's training loss on a batch ``x [B, d_in]`` (already normalised): mean squared
    error summed over features, plus the architecture's sparsity term (L1 or L0) or AuxK.
    ``dead [d_sae]``: latents that have not fired for ``dead_steps`` steps. ``k_max`` (static,
    ``topk`` only): at least every member's ``k``; given, the latents are computed sparsely
    (``features.sparse``: one GEMM instead of five), else densely. Returns the loss and
    ``{"mse", "l0", "aux", "fired" [d_sae], "min_kept"}``."""
    pre = pre_activations(params, x)
    if cfg.architecture == "topk" and k_max:
        z, idx, x_hat = _sparse_topk(params, x, pre, member, k_max)
        fired = jnp.zeros((cfg.d_sae,), bool).at[idx.reshape(-1)].max(z.reshape(-1) > 0)
    else:
        z = encode(params, x, cfg, member, train=True)
        x_hat = decode(params, z)
        fired = jnp.any(z > 0, axis=0)
    mse = jnp.sum((x - x_hat) ** 2, -1).mean()
    stats = {"mse": mse, "l0": jnp.sum(z > 0, -1).mean(), "fired": fired}
    total, aux = mse, jnp.zeros(())
    if cfg.architecture == "relu":
        total = total + cfg.l1_coefficient * jnp.sum(z * jnp.linalg.norm(params["W_dec"], axis=-1), -1).mean()
    elif cfg.architecture == "jumprelu":
        l0 = jnp.sum(_step(pre, threshold(params), cfg.bandwidth) * member.live, -1).mean()
        total = total + cfg.l0_coefficient * l0
    elif cfg.aux_k > 0:
        aux = _aux_loss(params, x, x_hat, pre, dead, cfg, member.live)
        total = total + cfg.aux_coefficient * aux
    stats["aux"] = aux
    # BatchTopK's inference threshold: the smallest activation the batch kept.
    stats["min_kept"] = jnp.min(jnp.where(z > 0, z, jnp.inf))
    return total, stats


def unit_decoder(params: dict) -> dict:
    """Decoder rows rescaled to unit norm (dead-padding rows stay zero)."""
    norm = jnp.linalg.norm(params["W_dec"], axis=-1, keepdims=True)
    return {**params, "W_dec": params["W_dec"] / jnp.where(norm > 0, norm, 1.0)}


def fold_scale(params: dict, scale) -> dict:
    """The params of an SAE trained on ``x * scale``, rewritten to read raw ``x`` and to return raw
    reconstructions: ``W_enc * scale``, ``W_dec / scale``, ``b_dec / scale`` (``b_enc`` and the
    thresholds act on pre-activations, which do not change)."""
    return {**params, "W_enc": params["W_enc"] * scale, "W_dec": params["W_dec"] / scale,
            "b_dec": params["b_dec"] / scale}


def saelens_params(params: dict) -> dict:
    """SAELens' names: ``threshold`` instead of our ``log_threshold``."""
    out = {k: v for k, v in params.items() if k != "log_threshold"}
    if "log_threshold" in params:
        out["threshold"] = jnp.exp(params["log_threshold"])
    return out
