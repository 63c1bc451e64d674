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
import hashlib
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.align import contrastive
from mrepe_jax.align.maps import ANCHOR_MODES, MAP_KINDS, TRAINED_KINDS, init_variables, make_map
from mrepe_jax.align.mapped import FittedMap
from mrepe_jax.train.loop import fit


@dataclasses.dataclass(frozen=True)
class MapTrainConfig:
    """Everything that defines a map and its training. Defaults are the paper's §4.1.3 (AdamW,
    learning rate 1e-4, 50 epochs).

    Attributes:
      kind: ``"mrepe"`` (eq 4), ``"linear"`` or ``"procrustes"`` (closed form, not trained).
      hidden, num_anchors, anchors: eq 4's width, anchor count and anchor mode (``ANCHOR_MODES``).
      temperature: InfoNCE's tau; symmetric: also the target->source term.
      memory_size: extra negatives per step, drawn from the training targets (0: in-batch only).
        Targets are frozen representations, so a random draw of them is distributed as a queue of
        past batches would be, without state to carry.
      seed: initialisation, data anchors and batch order.
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

    def __post_init__(self):
        if self.kind not in MAP_KINDS:
            raise ValueError(f"unknown alignment map kind {self.kind!r}; expected one of {tuple(MAP_KINDS)}")
        if self.anchors not in ANCHOR_MODES:
            raise ValueError(f"unknown anchor mode {self.anchors!r}; expected one of {ANCHOR_MODES}")
        for name in ("hidden", "num_anchors", "batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"MapTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
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
    """A ``TrainState`` plus the map's frozen variables (eq 4's data anchors)."""

    constants: Any = flax.struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MapStep:
    """One AdamW step on eq 3's loss. Frozen and hashable: equal steps (same module, loss
    settings, mesh) reuse one compiled program across seeds, pairs and resumed runs."""

    module: nn.Module
    temperature: float
    symmetric: bool
    mesh: Any = None

    def __call__(self, state: MapState, batch):
        loss_fn = (contrastive.info_nce if self.mesh is None
                   else _sharded_loss(self.mesh))

        def loss(params):
            mapped = self.module.apply({"params": params, **state.constants}, batch["src"])
            return loss_fn(mapped, batch["tgt"], self.temperature, batch.get("memory"),
                           symmetric=self.symmetric)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), {"loss": value}


@functools.lru_cache(maxsize=8)
def _sharded_loss(mesh):
    return contrastive.sharded_info_nce(mesh)


def data_hash(*arrays) -> str:
    """sha256 of the paired training arrays (shapes, dtypes and bytes): the map's data identity."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, np.float32))
        h.update(f"{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def batch_fn(src, tgt, batch_size: int, memory_size: int, seed: int, rows: slice = slice(None)):
    """``step -> {"src", "tgt"[, "memory"]}``, a pure function of the step (resumable)."""
    n = len(src)
    per_epoch = n // batch_size

    def get(step: int):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = order[i * batch_size:(i + 1) * batch_size][rows]
        batch = {"src": src[idx], "tgt": tgt[idx]}
        if memory_size:
            draw = np.random.default_rng([seed, epoch, i, 2]).integers(0, n, memory_size)
            batch["memory"] = tgt[draw[parallel.process_rows(memory_size)]]
        return batch

    return get


def train_map(cfg: MapTrainConfig, src, tgt, *, source_site: str, target_site: str,
              checkpoint_dir=None, stop_after=None, progress: bool = True, mesh=None,
              provenance: dict | None = None) -> FittedMap:
    """Fits ``phi: source_site -> target_site`` on paired rows ``src`` [N, d_i], ``tgt`` [N, d_j].

    Trained kinds run ``cfg.steps(N)`` AdamW steps of eq 3 through ``loop.fit`` (orbax checkpoints
    in ``checkpoint_dir``, resumed when present; data-parallel over ``mesh``'s ``data`` axis with
    the sharded loss). ``provenance`` (model id, params hash, data names...) is stored with the map.
    """
    src, tgt = _check_pairs(src, tgt, cfg)
    module = cfg.module(tgt.shape[1])
    variables = init_variables(module, src, tgt, cfg.seed)
    info = {"config": dataclasses.asdict(cfg), "source_site": source_site, "target_site": target_site,
            "data_sha256": data_hash(src, tgt), "num_pairs": len(src), "seed": cfg.seed,
            **(provenance or {})}
    if cfg.kind not in TRAINED_KINDS:
        return FittedMap(module, variables, source_site, src.shape[1], target_site, tgt.shape[1],
                         {**info, "steps": 0, "losses": []})
    steps = cfg.steps(len(src))
    # What defines the trajectory (compared on resume): all but how often it is saved.
    # One key per setting, so that a refused resume names the setting that changed.
    run = {**{k: v for k, v in info.items() if k != "config"},
           **{k: v for k, v in info["config"].items() if k != "checkpoint_every"}}
    tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    constants = {k: v for k, v in variables.items() if k != "params"}
    result = fit(lambda: MapState.create(apply_fn=None, params=variables["params"], tx=tx,
                                         constants=constants),
                 MapStep(module, cfg.temperature, cfg.symmetric, mesh),
                 batch_fn(src, tgt, cfg.batch_size, cfg.memory_size, cfg.seed,
                          parallel.process_rows(cfg.batch_size)),
                 steps, checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                 stop_after=stop_after, run_config=run, desc=f"map {source_site}->{target_site}", progress=progress, mesh=mesh)
    state = parallel.to_host(result.state)
    return FittedMap(module, {"params": state.params, **state.constants}, source_site, src.shape[1],
                     target_site, tgt.shape[1],
                     {**info, "steps": int(state.step), "resumed_from": result.resumed_from,
                      "losses": [round(float(x), 5) for x in result.losses]})


def _check_pairs(src, tgt, cfg: MapTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    src, tgt = np.asarray(src, np.float32), np.asarray(tgt, np.float32)
    if src.ndim != 2 or tgt.ndim != 2 or len(src) != len(tgt):
        raise ValueError(f"paired representations must be [N, d_i] and [N, d_j] with the same N, "
                         f"got {src.shape} and {tgt.shape}")
    if cfg.kind in TRAINED_KINDS and len(src) < cfg.batch_size:
        raise ValueError(f"{len(src)} pairs are fewer than one batch of {cfg.batch_size}")
    for name, a in (("source", src), ("target", tgt)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} representations hold non-finite values "
                             f"(first bad row {int(np.argmin(np.isfinite(a).all(1)))})")
    return src, tgt
