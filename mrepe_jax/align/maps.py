"""Cross-modal alignment maps ``phi_{i->j}: R_i -> R_j`` (eq 4) and their linear baselines.

Every map is a Linen module ``map.apply(variables, r) -> r_j`` from ``[..., d_i]`` source
representations to ``[..., d_j]`` target ones; the two widths may differ. Three kinds, one
interface (``MAP_KINDS``):

- ``AlignmentMap``: eq 4, ``MLP_j(MLP_i(r) * attention(r, anchors_j))``, trained with InfoNCE;
- ``LinearMap``: ``W r + b``, trained with the same objective (the simplest learned baseline);
- ``ProcrustesMap``: an orthogonal (semi-orthogonal when widths differ) ``W``, fitted in closed
  form by ``procrustes`` on paired, centred data; no training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: How the eq 4 anchors are obtained (see ``AlignmentMap``).
ANCHOR_MODES = ("data", "learned", "data+learned")


class AlignmentMap(nn.Module):
    """Eq 4: ``phi_{i->j}(r) = MLP_j(MLP_i(r) * attention(r, anchors_j))``.

    ``MLP_i`` lifts the source representation to a ``hidden``-wide code. ``attention(r, anchors_j)``
    is single-head dot-product attention whose query is a projection of ``r`` and whose keys and
    values are projections of ``num_anchors`` modality-j representations: it returns, for each
    input, a ``hidden``-wide summary of the target space's anchors it resembles, which gates the
    source code element-wise (the ``*``). ``MLP_j`` maps the gated code to the target width.

    Anchors (``anchors`` attribute, one of ``ANCHOR_MODES``):

    - ``"data"``: a sample of real target representations, frozen (the variable collection
      ``"anchors"``, never updated by the optimiser). The attention then reads the target space as
      it is, and the map cannot drift away from it; but A samples cover it only coarsely.
    - ``"learned"``: free parameters from a random start; they may move wherever the loss wants,
      which is what "anchor representation in modality j" does not promise.
    - ``"data+learned"`` (the default): initialised from data, then trained. It starts in the
      target space and may refine. ``init_variables`` fills data anchors; the ToyWorld report has
      an ablation row for each mode.
    """

    target_dim: int
    hidden: int = 128
    num_anchors: int = 32
    anchors: str = "data+learned"

    @nn.compact
    def __call__(self, r):
        if self.anchors not in ANCHOR_MODES:
            raise ValueError(f"unknown anchor mode {self.anchors!r}; expected one of {ANCHOR_MODES}")
        shape = (self.num_anchors, self.target_dim)
        if self.anchors == "data":
            anchors = self.variable("anchors", "anchors", jnp.zeros, shape, jnp.float32).value
        else:
            anchors = self.param("anchors", nn.initializers.normal(1.0), shape)
        code = _mlp(r, self.hidden, self.hidden, "mlp_i")
        q = nn.Dense(self.hidden, name="query")(r)
        k = nn.Dense(self.hidden, name="key")(anchors)
        v = nn.Dense(self.hidden, name="value")(anchors)
        weights = jax.nn.softmax(q @ k.T / jnp.sqrt(self.hidden).astype(q.dtype), axis=-1)
        return _mlp(code * (weights @ v), self.hidden, self.target_dim, "mlp_j")


def _mlp(x, hidden: int, out: int, name: str):
    x = nn.Dense(hidden, name=f"{name}_0")(x)
    return nn.Dense(out, name=f"{name}_1")(nn.gelu(x, approximate=False))


class LinearMap(nn.Module):
    """``W r + b``: the linear baseline (trained with the same InfoNCE objective as eq 4)."""

    target_dim: int
    bias: bool = True

    @nn.compact
    def __call__(self, r):
        return nn.Dense(self.target_dim, use_bias=self.bias, name="linear")(r)


class ProcrustesMap(nn.Module):
    """``(r - mu_i) W + mu_j`` with ``W`` (semi-)orthogonal: the Procrustes baseline.

    Parameters come from ``procrustes``; ``init`` only gives their shapes (identity-like ``W``).
    """

    target_dim: int

    @nn.compact
    def __call__(self, r):
        d_in = r.shape[-1]
        w = self.param("w", lambda _, s: jnp.eye(*s), (d_in, self.target_dim))
        mu_src = self.param("mu_src", nn.initializers.zeros, (d_in,))
        mu_tgt = self.param("mu_tgt", nn.initializers.zeros, (self.target_dim,))
        return (r - mu_src) @ w + mu_tgt


#: kind -> module class: the one table behind ``make_map`` (saved maps name their kind).
MAP_KINDS = {"mrepe": AlignmentMap, "linear": LinearMap, "procrustes": ProcrustesMap}
TRAINED_KINDS = ("mrepe", "linear")


def make_map(kind: str, target_dim: int, **options) -> nn.Module:
    """The map module of ``kind`` (``MAP_KINDS``) with ``options`` as its attributes."""
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown alignment map kind {kind!r}; expected one of {tuple(MAP_KINDS)}")
    if target_dim < 1:
        raise ValueError(f"alignment map target width must be >= 1, got {target_dim}")
    return MAP_KINDS[kind](target_dim=target_dim, **options)


def procrustes(src, tgt) -> dict[str, Any]:
    """Orthogonal Procrustes on paired rows: ``argmin_W ||(src - mu_s) W - (tgt - mu_t)||_F`` over
    ``W`` with orthonormal rows or columns (``W = U V^T`` from the SVD of the cross-covariance).
    Widths may differ (then ``W`` is semi-orthogonal). Returns ``ProcrustesMap`` params."""
    src, tgt = _paired(src, tgt)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    u, _, vt = np.linalg.svd((src - mu_s).T @ (tgt - mu_t), full_matrices=False)
    return {"w": jnp.asarray(u @ vt, jnp.float32), "mu_src": jnp.asarray(mu_s, jnp.float32),
            "mu_tgt": jnp.asarray(mu_t, jnp.float32)}


def data_anchors(tgt, num_anchors: int, seed: int) -> np.ndarray:
    """``num_anchors`` distinct target rows drawn without replacement: eq 4's data anchors."""
    tgt = np.asarray(tgt, np.float32)
    if num_anchors < 1:
        raise ValueError(f"an alignment map needs at least one anchor, got num_anchors={num_anchors}")
    if len(tgt) < num_anchors:
        raise ValueError(f"cannot draw {num_anchors} anchors from {len(tgt)} target representations")
    return tgt[np.random.default_rng(seed).choice(len(tgt), num_anchors, replace=False)]


def _paired(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    src, tgt = np.asarray(src, np.float64), np.asarray(tgt, np.float64)
    if src.ndim != 2 or tgt.ndim != 2 or len(src) != len(tgt):
        raise ValueError(f"paired representations must be [N, d_i] and [N, d_j] with the same N, "
                         f"got {src.shape} and {tgt.shape}")
    if len(src) == 0:
        raise ValueError("paired representations are empty")
    return src, tgt


# One compiled init per map configuration (eagerly, every initializer op compiles on its own).
_init = jax.jit(lambda module, key, x: module.init(key, x), static_argnums=0)


def init_variables(module: nn.Module, src, tgt, seed: int) -> dict[str, Any]:
    """Initial variables of ``module`` for paired data ``src`` [N, d_i] / ``tgt`` [N, d_j]:
    Procrustes is solved here, eq 4's data anchors are drawn from ``tgt``."""
    src, tgt = _paired(src, tgt)
    if tgt.shape[1] != module.target_dim:
        raise ValueError(f"target representations have width {tgt.shape[1]} but the map was built "
                         f"for width {module.target_dim}")
    variables = dict(_init(module, jax.random.key(seed), jnp.zeros((1, src.shape[1]), jnp.float32)))
    if isinstance(module, ProcrustesMap):
        variables["params"] = procrustes(src, tgt)
    elif isinstance(module, AlignmentMap) and module.anchors != "learned":
        anchors = jnp.asarray(data_anchors(tgt, module.num_anchors, seed))
        if module.anchors == "data":
            variables["anchors"] = {"anchors": anchors}
        else:
            variables["params"] = {**variables["params"], "anchors": anchors}
    return variables
