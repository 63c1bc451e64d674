"""Streaming activation statistics: read captured sites without holding the dataset (DESIGN.md §1, §7).

Everything the identification stage needs from a dataset is a per-group sufficient statistic at each
site: counts and means give eq 6's mean-difference directions and eq 1's prototypes; centred second
moments give covariances for PCA and whitening. ``update`` folds one batch into those statistics and
is a pure function, so the driver jits the model forward pass *and* the update as one step: the
``[batch, token, d_model]`` activations never leave the device and the host keeps O(sites * groups *
d^2) memory whatever the dataset size.

Moments are merged with the pairwise formula of Chan, Golub & LeVeque (1979) rather than by summing
raw ``x x^T``: in float32, ``E[x x^T] - mu mu^T`` cancels catastrophically for activations with a
large mean (residual streams have one), while merging centred scatters stays accurate.

Token reduction turns a ``[B, T, D]`` site into one ``[B, D]`` row per example:

- ``"cls"``: token 0 (the ViT class token);
- ``"mean"``: mean over tokens, over valid tokens only when ``mask_key`` names a ``[B, T]`` mask;
- ``"none"``: no reduction, for sites that are already pooled (``pooled``, ``proj``, ``[B, D]``);
- a callable ``reduce(x, token_mask) -> [B, D]`` for anything else (e.g. CLIP text EOS pooling).

``[B, D]`` sites pass through whatever ``reduce`` says, so one call can mix residual and pooled sites.

Non-finite activations (NaN inputs, out-of-vocabulary ids, a NaN edit under ``jit``) are refused with
a ``FloatingPointError`` naming the sites and the batch, instead of turning every statistic into NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from mrepe_jax import parallel

Array = Any
Batch = Mapping[str, np.ndarray]
# Statistics are results, not features: their matmuls run at full fp32 precision. The default lets
# GPUs use TF32 and TPUs bf16 passes, which would move a mean or covariance by ~1e-3 relative.
STATS_PRECISION = jax.lax.Precision.HIGHEST
# ``apply_fn(params, batch, capture) -> (outputs, {site: activation})``, i.e. ``model.apply`` with the
# model, method and input keys bound; see ``tower_apply``.
ApplyFn = Callable[[Any, Batch, tuple[str, ...]], tuple[Any, Mapping[str, Array]]]
Reduce = str | Callable[[Array, Array | None], Array]


@struct.dataclass
class Moments:
    """Per-group count, mean and (optionally) centred scatter ``sum (x - mean)(x - mean)^T``.

    Shapes: ``count [G]`` (int32), ``mean [G, D]``, ``m2 [G, D, D]`` or ``None``.
    """

    count: Array
    mean: Array
    m2: Array | None = None

    @property
    def sum(self):
        return self.count[:, None].astype(self.mean.dtype) * self.mean

    def covariance(self, ddof: int = 1):
        """Per-group covariance ``[G, D, D]`` (``ddof=1``: the unbiased estimate, as ``np.cov``)."""
        if self.m2 is None:
            raise ValueError("these moments were accumulated without covariance=True")
        denom = jnp.maximum(self.count - ddof, 1).astype(self.m2.dtype)
        return self.m2 / denom[:, None, None]

    def pooled(self, groups: Sequence[int] | None = None) -> Moments:
        """The moments of the union of ``groups`` (default: all), as a single group ``G = 1``."""
        m = self if groups is None else jax.tree.map(lambda a: a[np.asarray(groups)], self)
        n = jnp.sum(m.count)
        w = m.count.astype(m.mean.dtype) / jnp.maximum(n, 1)
        mean = jnp.sum(w[:, None] * m.mean, axis=0)
        m2 = None
        if m.m2 is not None:
            dev = m.mean - mean
            m2 = jnp.sum(m.m2, axis=0) + jnp.einsum("g,gd,ge->de", m.count.astype(dev.dtype), dev, dev,
                                                    precision=STATS_PRECISION)
            m2 = m2[None]
        return Moments(n[None], mean[None], m2)


def init_moments(num_groups: int, dim: int, covariance: bool = False, dtype=jnp.float32) -> Moments:
    return Moments(
        jnp.zeros((num_groups,), jnp.int32),
        jnp.zeros((num_groups, dim), dtype),
        jnp.zeros((num_groups, dim, dim), dtype) if covariance else None,
    )


def batch_moments(x: Array, weights: Array, covariance: bool) -> Moments:
    """Moments of rows ``x [B, D]`` per group, with 0/1 membership ``weights [B, G]``."""
    x = x.astype(jnp.float32)
    w = weights.astype(x.dtype)
    count = jnp.sum(weights, axis=0).astype(jnp.int32)
    total = jnp.matmul(w.T, x, precision=STATS_PRECISION)
    mean = total / jnp.maximum(count, 1)[:, None].astype(x.dtype)
    m2 = None
    if covariance:
        xc = jnp.sqrt(w)[:, :, None] * (x[:, None, :] - mean[None])  # [B, G, D]
        m2 = jnp.einsum("bgd,bge->gde", xc, xc, precision=STATS_PRECISION)
    return Moments(count, mean, m2)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise merge; exact for empty groups on either side."""
    na, nb = a.count.astype(a.mean.dtype), b.count.astype(a.mean.dtype)
    n = jnp.maximum(na + nb, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (nb / n)[:, None]
    m2 = None
    if a.m2 is not None:
        m2 = a.m2 + b.m2 + jnp.einsum("gd,ge,g->gde", delta, delta, na * nb / n,
                                      precision=STATS_PRECISION)
    return Moments(a.count + b.count, mean, m2)


def reduce_tokens(x: Array, reduce: Reduce, token_mask: Array | None = None, site: str = "?") -> Array:
    """``[B, T, D] -> [B, D]`` by ``reduce`` (see the module docstring); ``[B, D]`` passes through."""
    if callable(reduce):
        return reduce(x, token_mask)
    if reduce not in ("cls", "mean", "none"):
        raise ValueError(f"reduce must be 'cls', 'mean', 'none' or a callable, got {reduce!r}")
    if x.ndim == 2:
        return x
    if x.ndim != 3:
        raise ValueError(
            f"site {site!r} has shape {tuple(x.shape)}; token reduction handles [B, T, D] and [B, D] "
            "sites only, pass a callable reduce for other layouts"
        )
    if reduce == "none":
        raise ValueError(
            f"site {site!r} has tokens (shape {tuple(x.shape)}) but reduce='none'; use 'cls', "
            "'mean' or a callable"
        )
    if reduce == "cls":
        return x[:, 0]
    if token_mask is None:
        return jnp.mean(x, axis=1)
    if token_mask.shape != x.shape[:2]:
        raise ValueError(
            f"token mask of shape {tuple(token_mask.shape)} does not match site {site!r} of shape "
            f"{tuple(x.shape)}"
        )
    m = token_mask.astype(x.dtype)[..., None]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def update(
    stats: Mapping[str, Moments],
    acts: Mapping[str, Array],
    labels: Array,
    valid: Array | None = None,
    reduce: Reduce = "mean",
    token_mask: Array | None = None,
) -> dict[str, Moments]:
    """Folds one batch of captured activations into ``stats`` (pure; jit it).

    ``labels [B]`` are group indices in ``[0, G)``; a label outside that range (e.g. ``-1``) and a row
    with ``valid == False`` (batch padding) contribute nothing.
    """
    out = {}
    for site, m in stats.items():
        if site not in acts:
            raise KeyError(f"site {site!r} is in the statistics but was not captured; got {sorted(acts)}")
        x = reduce_tokens(acts[site], reduce, token_mask, site)
        w = jax.nn.one_hot(labels, m.count.shape[0], dtype=jnp.float32)
        if valid is not None:
            w = w * valid[:, None].astype(w.dtype)
        out[site] = merge_moments(m, batch_moments(x, w, m.m2 is not None))
    return out


@dataclasses.dataclass(frozen=True)
class TowerApply:
    """``apply_fn`` for one tower's ``encode`` of a ``ContrastiveTowers`` model (e.g. ``CLIPModel``).

    A frozen dataclass rather than a closure: it hashes by value, so the compiled streaming step is
    reused by every call with the same model, tower and keys instead of recompiled per call.
    """

    model: Any
    tower: str
    input_key: str
    mask_key: str | None = None

    def __call__(self, params, batch, capture):
        args = (batch[self.input_key],) + ((batch[self.mask_key],) if self.mask_key else ())
        return self.model.apply(params, self.tower, *args, method="encode", capture=capture)


def tower_apply(model, tower: str, input_key: str, mask_key: str | None = None) -> ApplyFn:
    """``apply_fn`` for one tower's ``encode`` (see ``TowerApply``)."""
    return TowerApply(model, tower, input_key, mask_key)


def _labels_fn(group_fn: Callable[[Batch], np.ndarray] | str | None):
    if group_fn is None:
        return lambda b: np.zeros((parallel.batch_size(b),), np.int32)
    if isinstance(group_fn, str):
        return lambda b: np.asarray(b[group_fn])
    return lambda b: np.asarray(group_fn(b))


def _stats_step(stats, params, batch, labels, valid, *, apply_fn, capture, reduce, mask_key):
    _, acts = apply_fn(params, batch, capture)
    mask = batch[mask_key] if mask_key else None
    return update(stats, acts, labels, valid, reduce, mask), finite_flags(acts, valid)


def _collect_step(_, params, batch, labels, valid, *, apply_fn, capture, reduce, mask_key):
    _, acts = apply_fn(params, batch, capture)
    mask = batch[mask_key] if mask_key else None
    return {k: reduce_tokens(v, reduce, mask, k) for k, v in acts.items()}


_STEPS = {"stats": _stats_step, "collect": _collect_step}
_STATIC = ("apply_fn", "capture", "reduce", "mask_key")


@functools.lru_cache(maxsize=8)
def _programs(mesh) -> dict:
    """The jit'd steps for ``mesh`` (``{"stats": ..., "collect": ...}``), keyed on the mesh alone.

    The apply function and the capture/reduction settings are static arguments of these jits, not
    keys of this cache: the programs compiled for them live in JAX's cache, which
    ``jax.clear_caches()`` (and ``mrepe_jax.clear_caches()``) empties, so no cache of this module
    keeps a model, its params or a user's closure alive. (An ``lru_cache`` on the apply function
    did: a closure over params survived ``jax.clear_caches()``.) An equal apply function (a
    ``TowerApply`` of an equal model) reuses a program; a new closure compiles a new one.
    """
    if mesh is None:
        return {kind: jax.jit(step, static_argnames=_STATIC) for kind, step in _STEPS.items()}
    # No in_shardings: the arguments arrive placed (statistics replicated, batches split over
    # data by ``_Stepper``, params as ``parallel.keep_or_replicate`` left them), so params sharded
    # over ``model`` stay sharded and GSPMD partitions the step around them.
    return {kind: jax.jit(step, static_argnames=_STATIC, out_shardings=parallel.replicated(mesh))
            for kind, step in _STEPS.items()}


class _Stepper:
    """The edge of the module: pads, shards and dispatches host batches to one jit'd step.

    In a multi-process run each process iterates over its own batches (its rows of the data);
    the processes agree on every step's padded size and keep stepping together until all of them
    have run out (one that has, sends an all-padding batch), so none waits alone in a collective.
    """

    def __init__(self, kind, apply_fn, capture, reduce, mask_key, params, mesh):
        self.mesh = mesh
        self.ndev = 1 if mesh is None else parallel.data_axis_size(mesh) // jax.process_count()
        self.size = 0
        self.step = functools.partial(_programs(mesh)[kind], apply_fn=apply_fn, capture=capture,
                                      reduce=reduce, mask_key=mask_key)
        self.params = params if mesh is None else parallel.keep_or_replicate(params, mesh)

    def steps(self, batches: Iterable[Batch], labels_of):
        """``(index, rows, batch, args)`` per step: this process's ``rows`` real rows of ``batch``,
        and the step's padded (global) arguments ``(batch, labels, valid)``."""
        it, template = iter(batches), None
        for i in itertools.count():
            batch = next(it, None)
            n = 0 if batch is None else parallel.batch_size(batch)
            sizes = parallel.process_sizes(n)
            if sizes.max() == 0:
                return
            if batch is None:
                if template is None:
                    raise ValueError("this process has no batches while others have: every process "
                                     "must read some of the data")
                batch = template
            template = jax.tree.map(lambda x: np.asarray(x)[:1], batch) if template is None else template
            labels = np.asarray(labels_of(batch)) if n else np.zeros(1, np.int32)
            yield i, n, batch, self._args(batch, labels, n, int(sizes.max()))

    def _args(self, batch: Batch, labels: np.ndarray, n: int, most: int):
        if np.shape(labels) != (parallel.batch_size(batch),):
            raise ValueError(f"group labels have shape {np.shape(labels)}, expected ({n},)")
        # Pad to one size (a multiple of the local devices, the same in every process) so the step
        # compiles once, however ragged the last batch is; padded rows carry valid=False.
        self.size = max(self.size, -(-most // self.ndev) * self.ndev)
        batch, valid = parallel.pad_batch(dict(batch), self.size)
        valid = valid & (np.arange(self.size) < n)
        labels = np.concatenate([labels[:n], np.full(self.size - n, -1, labels.dtype)]).astype(np.int32)
        args = (batch, labels, valid)
        if self.mesh is not None:
            args = parallel.global_batch(args, self.mesh)
        return args

    def local_rows(self, out, n: int):
        """This process's ``n`` real rows of a replicated per-row output ``out`` (host arrays)."""
        start = jax.process_index() * self.size if self.mesh is not None else 0
        return jax.tree.map(lambda v: np.asarray(v)[start:start + n], out)


def stream_statistics(
    apply_fn: ApplyFn,
    batches: Iterable[Batch],
    sites: Sequence[str] | str,
    *,
    params: Any = None,
    group_fn: Callable[[Batch], np.ndarray] | str | None = None,
    num_groups: int = 1,
    reduce: Reduce = "mean",
    mask_key: str | None = None,
    covariance: bool = False,
    mesh=None,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Moments]:
    """Streams ``batches`` through ``apply_fn`` and returns per-site, per-group ``Moments`` (numpy).

    Args:
      apply_fn: ``apply_fn(params, batch, capture) -> (outputs, acts)``, e.g.
        ``tower_apply(model, "vision", "pixels")``; ``params`` is a jit argument, not a constant.
        It is a static argument of the compiled step: an equal one (``tower_apply`` of an equal
        model, a module-level function) reuses the program, while a closure (one that captures
        its params, with ``params=None``) compiles a new program per new closure, with the params
        baked in, held until ``mrepe_jax.clear_caches()``.
      batches: any iterable of dicts of numeric numpy arrays sharing a leading batch axis; it is
        consumed once and never stored.
      sites: capture glob patterns (``"vision.layers.*.resid_post"``); the result has one entry per
        concrete site they match.
      group_fn: ``batch -> int labels [B]`` in ``[0, num_groups)`` (or the name of a batch key holding
        them); ``-1`` skips an example. Default: one group.
      reduce, mask_key: token reduction (module docstring); ``mask_key`` names a ``[B, T]`` mask.
      covariance: also accumulate centred second moments (``Moments.m2``).
      mesh: if given, every batch is split over its ``data`` axis; ``params`` already sharded
        over it (``models.sharding.shard_params``: a 2-D ``(data, model)`` mesh) stay sharded, the
        rest is replicated. The result equals the single-device one up to float reassociation.
      total: number of examples, for the progress bar only.
    """
    capture = (sites,) if isinstance(sites, str) else tuple(sites)
    labels_of = _labels_fn(group_fn)

    stepper = _Stepper("stats", apply_fn, capture, reduce, mask_key, params, mesh)
    stats, pending, seen = None, None, 0
    with tqdm(total=total, unit="ex", disable=not progress, desc="activations") as bar:
        for i, n, _, args in stepper.steps(batches, labels_of):
            if stats is None:
                stats = _init_stats(apply_fn, stepper.params, args[0], capture, reduce, mask_key,
                                    num_groups, covariance, mesh)
            stats, flags = stepper.step(stats, stepper.params, *args)
            # Keep at most one step in flight: async dispatch would otherwise queue every batch's
            # input buffers when the host outruns the device, and memory would grow with the data.
            # Reading the previous step's finiteness flags is that wait.
            if pending is not None:
                check_finite_flags(*pending)
            pending = flags, i, seen, n
            seen += n
            bar.update(n)
    if pending is None:
        raise ValueError("stream_statistics got no batches")
    check_finite_flags(*pending)
    return parallel.to_host(stats)


def finite_flags(acts: Mapping[str, Array], valid: Array | None = None) -> dict[str, Array]:
    """``{site: all values finite}`` over the valid rows (batch padding is ignored)."""
    out = {}
    for site, x in acts.items():
        rows = jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
        out[site] = jnp.all(rows if valid is None else rows | ~valid)
    return out


def check_finite_flags(flags: Mapping[str, Any], batch_index: int, first: int, n: int) -> None:
    """Raises ``FloatingPointError`` naming the sites whose activations were non-finite."""
    bad = sorted(site for site, ok in parallel.to_host(dict(flags)).items() if not bool(ok))
    if bad:
        shown = ", ".join(repr(b) for b in bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise FloatingPointError(
            f"non-finite activations (NaN or inf) at {shown} in batch {batch_index} (examples "
            f"{first}..{first + n - 1}); statistics over them would be NaN. Check that batch's inputs "
            "and any edit at or before those sites."
        )


def _init_stats(apply_fn, params, batch, capture, reduce, mask_key, num_groups, covariance, mesh):
    def reduced(params, batch):
        _, acts = apply_fn(params, batch, capture)
        mask = batch[mask_key] if mask_key else None
        return {k: reduce_tokens(v, reduce, mask, k) for k, v in acts.items()}

    shapes = jax.eval_shape(reduced, params, batch)
    stats = {k: init_moments(num_groups, s.shape[-1], covariance) for k, s in shapes.items()}
    if mesh is not None:
        stats = jax.device_put(stats, parallel.replicated(mesh))
    return stats


def collect_activations(
    apply_fn: ApplyFn,
    batches: Iterable[Batch],
    sites: Sequence[str] | str,
    *,
    params: Any = None,
    reduce: Reduce = "mean",
    mask_key: str | None = None,
    keep: Sequence[str] = (),
    mesh=None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Reduced activations stacked over the whole set, ``{site: [N, D]}``, for small sets (tests,
    probes). Batch keys listed in ``keep`` (e.g. labels) are stacked alongside, aligned row by row.
    """
    capture = (sites,) if isinstance(sites, str) else tuple(sites)

    stepper = _Stepper("collect", apply_fn, capture, reduce, mask_key, params, mesh)
    chunks: dict[str, list[np.ndarray]] = {}
    seen = 0
    zeros = lambda b: np.zeros(parallel.batch_size(b), np.int32)  # noqa: E731
    steps = stepper.steps(tqdm(batches, unit="batch", disable=not progress, desc="activations"), zeros)
    for i, n, batch, args in steps:
        out = stepper.local_rows(parallel.to_host(stepper.step(None, stepper.params, *args)), n)
        check_finite_flags({k: np.isfinite(v).all() for k, v in out.items()}, i, seen, n)
        seen += n
        if n == 0:
            continue
        for k in keep:
            if k in out:
                raise ValueError(f"keep key {k!r} collides with a captured site name")
            out[k] = np.asarray(batch[k])
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v))
    if not chunks:
        raise ValueError("collect_activations got no batches")
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}
