"""Training alignment maps (eq 4) with InfoNCE (eq 3) through ``train/loop.fit``.

Data is a set of paired representations: row n of ``src`` [N, d_i] (modality i, at some site)
and row n of ``tgt`` [N, d_j] (modality j) come from semantically equivalent inputs, e.g. one
ToyWorld sample rendered as an image and as a caption. Batches are drawn by a permutation that is
a pure function of (seed, epoch), so a killed run resumed from its orbax checkpoint ends with the
parameters of an uninterrupted one.

    cfg = MapTrainConfig(kind="mrepe", epochs=50)
    fitted = train_map(cfg, src, tgt, source_site="text.proj", target_site="vision.proj")
    mapped = fitted(src)                                   # [N, d_j]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.align.mapped import FittedMap
from mrepe_jax.align.maps import ANCHOR_MODES, MAP_KINDS, TRAINED_KINDS, init_variables, make_map
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.train import contrastive
from mrepe_jax.train.loop import EXECUTION_KEYS, fit


@dataclasses.dataclass(frozen=True)
class MapTrainConfig:
    """Everything that defines a map and its training. Defaults are the paper's §4.1.3 (AdamW,
    learning rate 1e-4, 50 epochs).

    Attributes:
      kind: ``"mrepe"`` (eq 4), ``"linear"`` or ``"procrustes"`` (closed form, not trained).
      hidden, num_anchors, anchors: eq 4's width, anchor count and anchor mode (``ANCHOR_MODES``).
      temperature: InfoNCE's tau; symmetric: also the target->source term.
      memory_size: extra negatives per step, drawn from the training targets (0: in-batch only;
        a multiple of ``batch_size``, like a MoCo queue). Targets are frozen representations, so
        a random draw of them is distributed as a queue of past batches would be, without state.
      seed: initialisation, data anchors and batch order.
      steps_per_call: training steps per compiled call (``loop.fit``); how a run executes, not
        what it computes, so it is left out of the resume check.
    """

    kind: str = "mrepe"
    hidden: int = 128
    num_anchors: int = 32
    anchors: str = "data+learned"
    temperature: float = 0.07
    symmetric: bool = True
    memory_size: int = 0
    batch_size: int = 128
    epochs: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 1000
    steps_per_call: int = 1

    def __post_init__(self):
        if self.kind not in MAP_KINDS:
            raise ValueError(f"unknown alignment map kind {self.kind!r}; expected one of {tuple(MAP_KINDS)}")
        if self.anchors not in ANCHOR_MODES:
            raise ValueError(f"unknown anchor mode {self.anchors!r}; expected one of {ANCHOR_MODES}")
        for name in ("hidden", "num_anchors", "batch_size", "epochs", "checkpoint_every",
                     "steps_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"MapTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_size % self.batch_size:
            raise ValueError(f"MapTrainConfig.memory_size ({self.memory_size}) must be a multiple of "
                             f"batch_size ({self.batch_size}): the memory travels with the batch's rows")
        if self.temperature <= 0 or self.learning_rate <= 0 or self.memory_size < 0:
            raise ValueError(f"MapTrainConfig needs temperature > 0, learning_rate > 0 and "
                             f"memory_size >= 0, got {self.temperature}, {self.learning_rate}, "
                             f"{self.memory_size}")

    def module(self, target_dim: int) -> nn.Module:
        options = {"mrepe": dict(hidden=self.hidden, num_anchors=self.num_anchors, anchors=self.anchors)}
        return make_map(self.kind, target_dim, **options.get(self.kind, {}))

    def steps(self, num_pairs: int) -> int:
        return self.epochs * (num_pairs // self.batch_size)


class MapState(TrainState):
    """A ``TrainState`` of K stacked maps (every leaf ``[K, ...]``; AdamW is elementwise, so one
    optimiser over the stack is K independent ones) plus their frozen variables (data anchors)."""

    constants: Any = flax.struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MapStep:
    """One AdamW step on eq 3's loss for K maps at once (``jax.vmap`` over the stack; batches are
    ``[B, K, d]``, rows first, so a mesh splits the rows). Frozen and hashable: equal steps (same
    module, loss settings, mesh) reuse one compiled program across pairs, seeds and resumes."""

    module: nn.Module
    temperature: float
    symmetric: bool
    mesh: Any = None

    def __call__(self, state: MapState, batch):
        loss_fn = contrastive.info_nce if self.mesh is None else _sharded_loss(self.mesh)

        def loss(params, constants, src, tgt, memory):
            mapped = self.module.apply({"params": params, **constants}, src)
            return loss_fn(mapped, tgt, self.temperature, memory, symmetric=self.symmetric)

        memory = batch.get("memory")
        if memory is not None:  # [B, M/B, K, d] (rows with the batch, see batch_fn) -> [M, K, d]
            memory = memory.reshape((-1,) + memory.shape[2:])
        grad_fn = jax.vmap(jax.value_and_grad(loss), in_axes=(0, 0, 1, 1, None if memory is None else 1))
        values, grads = grad_fn(state.params, state.constants, batch["src"], batch["tgt"], memory)
        return state.apply_gradients(grads=grads), {"loss": values.mean(), "losses": values}


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float, weight_decay: float):
    """AdamW, cached: the optimizer is part of the state's structure, so an equal one lets ``fit``
    reuse its compiled step across fits (seeds, pairs, map kinds of one shape)."""
    return optax.adamw(learning_rate, weight_decay=weight_decay)


@functools.lru_cache(maxsize=8)
def _sharded_loss(mesh):
    return contrastive.sharded_info_nce(mesh)


def data_hash(src, tgt) -> str:
    """The paired training arrays' identity: ``params_hash`` of them (shapes, dtypes, bytes)."""
    return params_hash({"src": np.asarray(src, np.float32), "tgt": np.asarray(tgt, np.float32)})


def batch_fn(src, tgt, batch_size: int, memory_size: int, seeds, rows: slice = slice(None)):
    """``step -> {"src" [B, K, d_i], "tgt" [B, K, d_j][, "memory" [B, M/B, K, d_j]]}`` for K
    stacked maps (``src`` [K, N, d_i]), each drawing its own permutation from its seed: a pure
    function of the step (resumable). ``rows``: this process's rows of the global batch. The
    memory is laid out with a leading batch axis so that it shards (and splits over processes)
    with the batch; the sharded loss gathers it whole."""
    n = src.shape[1]
    per_epoch = n // batch_size
    maps = np.arange(len(seeds))[:, None]

    @functools.lru_cache(maxsize=2)
    def orders(epoch: int) -> np.ndarray:  # [K, N]; cached: every step of an epoch reads it
        return np.stack([np.random.default_rng([s, epoch]).permutation(n) for s in seeds])

    def take(arrays, idx):  # arrays [K, N, d], idx [K, b] -> [b, K, d]
        return np.swapaxes(arrays[maps, idx], 0, 1)

    def get(step: int):
        epoch, i = divmod(step, per_epoch)
        idx = orders(epoch)[:, i * batch_size:(i + 1) * batch_size][:, rows]
        batch = {"src": take(src, idx), "tgt": take(tgt, idx)}
        if memory_size:
            draws = np.stack([np.random.default_rng([s, epoch, i, 2]).integers(0, n, memory_size)
                              for s in seeds])
            memory = take(tgt, draws)  # [M, K, d]
            batch["memory"] = memory.reshape((batch_size, -1) + memory.shape[1:])[rows]
        return batch

    return get


def train_map(cfg: MapTrainConfig, src, tgt, **kw) -> FittedMap:
    """Fits one map ``phi: source_site -> target_site`` on paired rows ``src`` [N, d_i], ``tgt``
    [N, d_j]; see ``train_maps`` for the keywords."""
    return train_maps(cfg, np.asarray(src)[None], np.asarray(tgt)[None], seeds=(cfg.seed,), **kw)[0]


def train_maps(cfg: MapTrainConfig, src, tgt, *, seeds, source_site, target_site,
               checkpoint_dir=None, stop_after=None, progress: bool = True, mesh=None,
               provenance: dict | None = None) -> list[FittedMap]:
    """Fits K maps of one configuration at once: map k on ``src[k]`` [N, d_i] / ``tgt[k]`` [N, d_j]
    with seed ``seeds[k]`` (initialisation, data anchors, batch order). Training K maps as one
    stack runs one compiled program for all of them (seeds, modality pairs of equal widths).

    ``source_site``/``target_site``: one site name, or K of them. Trained kinds run
    ``cfg.steps(N)`` AdamW steps of eq 3 through ``loop.fit`` (orbax checkpoints in
    ``checkpoint_dir``, resumed when present; data-parallel over ``mesh``'s ``data`` axis with the
    sharded loss). ``provenance`` (model id, params hash, data name) is stored with each map.
    """
    src, tgt = _check_pairs(src, tgt, cfg)
    k = len(src)
    seeds = [int(s) for s in seeds]
    sources, targets = (_per_map(x, k, name) for x, name in ((source_site, "source_site"),
                                                              (target_site, "target_site")))
    if len(seeds) != k:
        raise ValueError(f"train_maps got {k} paired sets but {len(seeds)} seeds")
    module = cfg.module(tgt.shape[2])
    inits = [init_variables(module, s, t, seed) for s, t, seed in zip(src, tgt, seeds)]
    infos = [{"config": {**dataclasses.asdict(cfg), "seed": seed}, "source_site": a,
              "target_site": b, "data_sha256": data_hash(s, t), "num_pairs": src.shape[1],
              "seed": seed, **(provenance or {})}
             for s, t, seed, a, b in zip(src, tgt, seeds, sources, targets)]

    def fitted(variables, info):
        return [FittedMap(module, jax.tree.map(lambda x, i=i: x[i], variables), sources[i], src.shape[2],
                          targets[i], tgt.shape[2], {**info, **infos[i]}) for i in range(k)]

    stacked = jax.tree.map(lambda *x: np.stack([np.asarray(a) for a in x]), *inits)
    if cfg.kind not in TRAINED_KINDS:
        return fitted(stacked, {"steps": 0, "losses": []})
    steps = cfg.steps(src.shape[1])
    # One key per setting, so that a refused resume names the setting that changed.
    run = {**{key: v for key, v in infos[0].items() if key not in ("config", "seed")},
           **{key: v for key, v in dataclasses.asdict(cfg).items() if key not in EXECUTION_KEYS + ("seed",)},
           "seeds": seeds, "data_sha256": data_hash(src, tgt), "sites": [sources, targets]}
    tx = _optimizer(cfg.learning_rate, cfg.weight_decay)
    constants = {key: v for key, v in stacked.items() if key != "params"}
    result = fit(lambda: MapState.create(apply_fn=None, params=stacked["params"], tx=tx,
                                         constants=constants),
                 MapStep(module, cfg.temperature, cfg.symmetric, mesh),
                 batch_fn(src, tgt, cfg.batch_size, cfg.memory_size, seeds,
                          parallel.process_rows(cfg.batch_size)),
                 steps, checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                 stop_after=stop_after, run_config=run, progress=progress, mesh=mesh,
                 steps_per_call=cfg.steps_per_call,
                 desc=f"{k} map(s) {sources[0]}->{targets[0]}" + (" ..." if k > 1 else ""))
    state = parallel.to_host(result.state)
    curves = result.metrics.get("losses", np.zeros((0, k)))
    return [dataclasses.replace(m, info={**m.info, "losses": [round(float(x), 5) for x in curves[:, i]]})
            for i, m in enumerate(fitted({"params": state.params, **state.constants},
                                         {"steps": int(state.step), "resumed_from": result.resumed_from}))]


def _per_map(value, k: int, name: str) -> list[str]:
    values = [value] * k if isinstance(value, str) else list(value)
    if len(values) != k:
        raise ValueError(f"{name} must be one site or {k} of them, got {len(values)}")
    return values


def _check_pairs(src, tgt, cfg: MapTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    src, tgt = np.asarray(src, np.float32), np.asarray(tgt, np.float32)
    if src.ndim != 3 or tgt.ndim != 3 or src.shape[:2] != tgt.shape[:2]:
        raise ValueError(f"paired representations must be [N, d_i] and [N, d_j] with the same N "
                         f"(stacked: [K, N, d]), got {src.shape[-2:]} and {tgt.shape[-2:]}")
    if cfg.kind in TRAINED_KINDS and src.shape[1] < cfg.batch_size:
        raise ValueError(f"{src.shape[1]} pairs are fewer than one batch of {cfg.batch_size} "
                         "(MapTrainConfig.batch_size): lower the batch size or pass more pairs")
    for name, a in (("source", src), ("target", tgt)):
        bad = ~np.isfinite(a).all(-1)
        if bad.any():
            k, row = np.argwhere(bad)[0]
            where = f"first bad row {row}" + (f" of set {k}" if len(a) > 1 else "")
            raise ValueError(f"{name} representations hold non-finite values ({where})")
    return src, tgt
