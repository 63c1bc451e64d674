"""The fine-tuning (FT) steering baseline of Table 3: a small head tuned with optax, through
``train/loop.fit``, to move a concept's zero-shot prediction to a target value.

Each head is a residual linear map on a tower's ``pooled`` representation,
``h(r) = r + r @ W + b`` with ``W, b`` starting at zero (so a fresh head is the unsteered model),
followed by the tower's own projection (``ContrastiveTowers.from_pooled``). Head ``k`` minimises

    mean_{rows of other values} CE(logits_{f_k}(h(r)), c_k)       (steer toward the target)
  + mean_{rows} mean_{f != f_k} CE(logits_f(h(r)), y_f)           (keep every other family)

on its own rows (``weights[k]``: a seed's train subset). FT thus sees more labels than the eq 6
directions (the other families' labels, for its keep term): it is the strong, supervised
baseline a steering method has to be compared with. K heads (targets x seeds) train as one
vmapped stack: one compiled step for all of them.

    heads = finetune_heads(model, variables, "vision", pooled, labels, targets, weights, prompts,
                           scale, FinetuneConfig())
    preds = head_predictions(model, variables, "vision", heads, test_pooled, prompts)  # {f: [K, N]}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax.models.layers import normalize
from mrepe_jax.train.loop import fit


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 50  # full-batch Adam steps (configs/toyworld.py says what was measured)
    learning_rate: float = 2e-2
    keep_weight: float = 1.0  # weight of the keep-every-other-family term


def _prompt_table(prompts: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[F, Vmax, P]`` prompt embeddings (zero rows for padding) and ``[F, Vmax]`` validity."""
    vmax = max(len(p) for p in prompts.values())
    table = np.zeros((len(prompts), vmax, np.shape(next(iter(prompts.values())))[1]), np.float32)
    valid = np.zeros((len(prompts), vmax), bool)
    for i, p in enumerate(prompts.values()):
        table[i, :len(p)], valid[i, :len(p)] = p, True
    return jnp.asarray(table), jnp.asarray(valid)


def _log_probs(model, variables, tower, head, pooled, table, valid, scale):
    """``[N, F, Vmax]`` log-probabilities of every family's values under one head."""
    h = pooled + pooled @ head["w"] + head["b"]
    emb, _ = model.apply(variables, tower, h, method="from_pooled")
    emb = normalize(emb)
    logits = scale * jnp.einsum("np,fvp->nfv", emb, table)
    return jax.nn.log_softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)


def _loss(head, batch, *, model, variables, tower, scale, keep_weight):
    lp = _log_probs(model, variables, tower, head, batch["pooled"], batch["table"], batch["valid"],
                    scale)
    labels = batch["labels"]  # [N, F]
    family, target, weight = batch["family"], batch["target"], batch["weight"]  # [], [], [N]
    steer_rows = weight * (labels[:, family] != target)
    steer = -jnp.sum(steer_rows * lp[:, family, target]) / jnp.maximum(steer_rows.sum(), 1.0)
    true_lp = jnp.take_along_axis(lp, labels[:, :, None], axis=2)[:, :, 0]  # [N, F]
    others = jnp.arange(labels.shape[1]) != family
    keep = -jnp.sum(weight[:, None] * others * true_lp) / jnp.maximum(weight.sum() * others.sum(), 1.0)
    return steer + keep_weight * keep


#: The batch entries each head has its own of (vmapped); every other entry is shared.
_PER_HEAD = ("family", "target", "weight")


@dataclasses.dataclass(frozen=True)
class HeadStep:
    """One Adam step of every head (``jax.vmap`` over the stack). The model's variables and the
    logit scale come in the batch, so equal steps hash alike: one compiled program per model and
    tower serves every call (targets, seeds, worlds of one shape)."""

    model: Any
    tower: str
    keep_weight: float

    def __call__(self, state: TrainState, batch):
        loss = functools.partial(_loss, model=self.model, variables=batch["variables"],
                                 tower=self.tower, scale=batch["scale"], keep_weight=self.keep_weight)
        axes = {k: 0 if k in _PER_HEAD else None for k in batch}
        values, grads = jax.vmap(jax.value_and_grad(loss), in_axes=(0, axes))(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": values.mean()}


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float):
    """Adam, cached: the optimizer is part of the state's structure, so an equal one lets ``fit``
    reuse the compiled step."""
    return optax.adam(learning_rate)


def finetune_heads(model, variables, tower: str, pooled, labels: dict, targets, weights, prompts: dict,
                   scale: float, cfg: FinetuneConfig = FinetuneConfig(), progress: bool = False):
    """Tunes K heads (see the module docstring); returns ``({"w": [K, D, D], "b": [K, D]}, losses)``.

    ``pooled`` [N, D]: the tower's ``pooled`` representations of the train rows; ``labels``:
    ``{family: [N]}`` in the order of ``prompts`` (``{family: [V, P]}``, unit norm); ``targets``:
    K ``(family, value)`` pairs; ``weights`` [K, N]: 1 on the rows head k trains on.
    """
    pooled = np.asarray(pooled, np.float32)
    weights = np.asarray(weights, np.float32)
    families = list(prompts)
    n, d = pooled.shape
    missing = [f for f in families if f not in labels]
    if missing:
        raise ValueError(f"finetune_heads: no labels for families {missing}")
    if weights.shape != (len(targets), n):
        raise ValueError(f"finetune_heads: weights must be [K={len(targets)}, N={n}], got {weights.shape}")
    bad = [(f, c) for f, c in targets if f not in prompts or not 0 <= c < len(prompts[f])]
    if bad:
        raise ValueError(f"finetune_heads: unknown targets {bad}; families and value counts: "
                         f"{ {f: len(p) for f, p in prompts.items()} }")
    table, valid = _prompt_table(prompts)
    batch = {"pooled": pooled, "table": table, "valid": valid,
             "labels": np.stack([np.asarray(labels[f]) for f in families], 1).astype(np.int32),
             "family": np.asarray([families.index(f) for f, _ in targets], np.int32),
             "target": np.asarray([c for _, c in targets], np.int32), "weight": weights}
    k = len(targets)
    init = {"w": np.zeros((k, d, d), np.float32), "b": np.zeros((k, d), np.float32)}
    state = TrainState.create(apply_fn=None, params=init, tx=_adam(cfg.learning_rate))
    # The model's variables ride in the batch, not the state: fit donates the state's buffers,
    # and these are the caller's.
    batch = {**batch, "variables": variables, "scale": np.float32(scale)}
    result = fit(state, HeadStep(model, tower, cfg.keep_weight), lambda _: batch, cfg.steps,
                 progress=progress, desc=f"{k} FT head(s), {tower}")
    return jax.tree.map(np.asarray, result.state.params), result.losses


@functools.partial(jax.jit, static_argnums=(0, 2))
def _head_predictions(model, variables, tower, heads, pooled, table, valid):
    def one(head):
        return jnp.argmax(_log_probs(model, variables, tower, head, pooled, table, valid, 1.0), -1)
    return jax.lax.map(one, heads)  # [K, N, F]


def head_predictions(model, variables, tower: str, heads, pooled, prompts: dict) -> dict[str, np.ndarray]:
    """Zero-shot predictions ``{family: [K, N]}`` of each head on ``pooled`` [N, D]."""
    table, valid = _prompt_table(prompts)
    preds = np.asarray(_head_predictions(model, variables, tower, heads,
                                         jnp.asarray(pooled, jnp.float32), table, valid))
    return {f: preds[:, :, i] for i, f in enumerate(prompts)}
