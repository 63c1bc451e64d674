"""Training a stack of sparse autoencoders (``features.sae``) through ``train/loop.fit``.

K SAEs of one input width train as one ``jax.vmap``-ed program: members may differ in their site
(each reads its own column of the batch), their number of latents and their ``k`` (``Member``),
and each has its own seed. Adam is elementwise and every member's loss is its own, so a member of a
stack ends with the params it would have trained to alone (``tests/features``).

Batches come from ``batches(step) -> [B, K, d_in]`` (rows first, so a mesh splits the rows), a
pure function of the step, so a killed run resumes into the trajectory of an uninterrupted one
(``loop.fit``). For activations streamed from a model, never written to disk, see
``features.stream.site_batches``.

    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", num_steps=2000)
    saes = train_saes(cfg, batches, members=[(512, 16), (256, 8)], seeds=[0, 1],
                      sites=["vision.layers.3.resid_post"] * 2)
    z = saes[0].encode(x)                     # [N, 512] on raw activations
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.features import sae as sae_lib
from mrepe_jax.features import saelens
from mrepe_jax.features.sae import Member, SAEConfig
from mrepe_jax.train.loop import fit

#: How many batches estimate the input scale (``SAEConfig.normalize``) and ``b_dec``'s start.
INIT_BATCHES = 4


class SAEState(TrainState):
    """A ``TrainState`` of K stacked SAEs (every leaf ``[K, ...]``) plus per-latent bookkeeping:
    ``since_fired [K, d_sae]`` (steps since each latent last fired: AuxK's dead latents),
    ``threshold [K, d_sae]`` (``batchtopk``'s running inference threshold), the members' ``k`` and
    live masks, and the fixed input ``scale [K]``."""

    since_fired: jax.Array = None
    threshold: jax.Array = None
    members: Member = None
    scale: jax.Array = None


@dataclasses.dataclass(frozen=True)
class SAEStep:
    """One Adam step for the stack; frozen and hashable, so equal configs share one program.
    ``k_max``: the members' largest ``k``, for ``topk``'s sparse kernels (``sae.loss``; 0: dense)."""

    cfg: SAEConfig
    k_max: int = 0

    def __call__(self, state: SAEState, batch):
        cfg = self.cfg
        x = batch["x"] * state.scale[None, :, None]  # [B, K, d]
        dead = state.since_fired >= cfg.dead_steps

        def one(params, x, member, dead):
            return jax.value_and_grad(sae_lib.loss, has_aux=True)(params, x, cfg, member, dead, self.k_max)

        (losses, stats), grads = jax.vmap(one, in_axes=(0, 1, 0, 0))(state.params, x, state.members, dead)
        new = state.apply_gradients(grads=grads)
        params = jax.vmap(sae_lib.unit_decoder)(new.params)
        since = jnp.where(stats["fired"], 0, state.since_fired + 1)
        kept = stats["min_kept"][:, None]
        first = state.step == 0
        threshold = jnp.where(first, kept, cfg.threshold_decay * state.threshold
                              + (1 - cfg.threshold_decay) * kept) * state.members.live
        new = new.replace(params=params, since_fired=since, threshold=threshold)
        return new, {"loss": losses.mean(), "losses": losses, "mse": stats["mse"], "l0": stats["l0"],
                     "dead": jnp.mean(dead, -1)}


@functools.partial(jax.jit, static_argnums=(2, 4))
def _encode(params, x, cfg: SAEConfig, member: Member, k_max: int):
    """``sae.encode`` compiled once per SAE config, ``k`` and input shape (``k_max``: TopK's
    ``k``, its faster selection; 0 otherwise)."""
    return sae_lib.encode(params, x, cfg, member, k_max=k_max)


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float):
    """Adam, cached: an equal optimizer keeps the state's structure, so ``fit`` reuses its program."""
    return optax.adam(learning_rate)


@dataclasses.dataclass(frozen=True)
class TrainedSAE:
    """One trained SAE of exactly its own size, reading raw activations (the input scale folded
    in), SAELens-named params (numpy), and what made it (``info``: site, seed, k, steps, losses)."""

    cfg: SAEConfig
    params: dict
    info: dict

    @property
    def member(self) -> Member:
        return Member.of(self.cfg.d_sae, k=int(self.info.get("k", 0)))

    def encode(self, x):
        k = int(self.info.get("k", 0)) if self.cfg.architecture == "topk" else 0
        return _encode(self.params, jnp.asarray(x, jnp.float32), self.cfg, self.member, k)

    def decode(self, z):
        return sae_lib.decode(self.params, z)

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def save(self, directory, *, model_name: str | None = None, frequency=None) -> Path:
        """SAELens' format (``features.saelens``): a SAELens user loads it with
        ``SAE.load_from_disk``. ``frequency [d_sae]``: each latent's firing rate
        (``features.evaluate``), saved as SAELens' log10 ``sparsity``."""
        sparsity = None if frequency is None else np.log10(np.asarray(frequency, np.float64) + 1e-10)
        kk = self.info.get("k") if self.cfg.architecture in ("topk", "batchtopk") else None
        return saelens.save_saelens(directory, sae_lib.saelens_params(self.params), architecture=self.cfg.architecture,
                                    hook_name=self.info["site"], model_name=model_name, k=kk, sparsity=sparsity)


def load_sae(directory, **kw) -> TrainedSAE:
    """An SAE saved in SAELens' format (ours or SAELens'; ``features.saelens.load_saelens``, whose
    keyword arguments ``kw`` takes) as a ``TrainedSAE``; ``info`` holds the file's metadata."""
    params, meta = saelens.load_saelens(directory, **kw)
    cfg = SAEConfig(d_in=meta["d_in"], d_sae=meta["d_sae"], architecture=meta["architecture"])
    info = {**{k: v for k, v in meta.items() if k not in ("cfg", "sparsity")},
            "site": meta["hook_name"], "k": int(meta.get("k") or 0), "latents": meta["d_sae"]}
    return TrainedSAE(cfg, params, info)


def _init(cfg: SAEConfig, members: list[Member], seeds: Sequence[int], sample: np.ndarray):
    """Stacked params and the fixed input scales from ``sample [N, K, d_in]``."""
    norms = np.linalg.norm(np.asarray(sample, np.float64), axis=-1).mean(0)  # [K]
    if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        raise ValueError(f"activation batches have non-finite or zero mean norms {norms.tolist()}: "
                         "an SAE cannot be scaled to them")
    scale = np.sqrt(cfg.d_in) / norms if cfg.normalize else np.ones_like(norms)
    params = [sae_lib.init_params(cfg, jax.random.key(int(s)), sample[:, i] * scale[i], m)
              for i, (s, m) in enumerate(zip(seeds, members))]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    return stacked, jnp.asarray(scale, jnp.float32)


def train_saes(cfg: SAEConfig, batches: Callable[[int], Any], *, members: Sequence[tuple[int, int]],
               seeds: Sequence[int], sites: Sequence[str], checkpoint_dir=None, stop_after: int | None = None,
               progress: bool = True, mesh=None, provenance: dict | None = None) -> list[TrainedSAE]:
    """Trains ``len(members)`` SAEs as one stack for ``cfg.num_steps`` steps.

    ``members``: ``(latents, k)`` per SAE (``latents <= cfg.d_sae``; ``k`` for the top-k kinds).
    ``batches(step)``: raw activations ``[cfg.batch_size, K, cfg.d_in]`` for every member (member
    ``i`` reads column ``i``). ``checkpoint_dir``: orbax checkpoints, resumed when present
    (``loop.fit``). ``mesh``: the rows split over its ``data`` axis. ``sites`` and ``provenance``
    go into each SAE's ``info``.
    """
    k = len(members)
    if not (k == len(seeds) == len(sites)) or k == 0:
        raise ValueError(f"train_saes needs one seed and one site per member: {k} members, "
                         f"{len(seeds)} seeds, {len(sites)} sites")
    stack = [Member.of(cfg.d_sae, size, kk) for size, kk in members]
    if cfg.architecture in ("topk", "batchtopk") and any(kk < 1 or kk > size for size, kk in members):
        raise ValueError(f"{cfg.architecture} needs 1 <= k <= latents for every member, got {list(members)}")
    first = np.asarray(batches(0), np.float32)
    if first.shape != (cfg.batch_size, k, cfg.d_in):
        raise ValueError(f"batches(0) has shape {first.shape}; expected [batch_size, members, d_in] = "
                         f"{(cfg.batch_size, k, cfg.d_in)}")
    sample = np.concatenate([first] + [np.asarray(batches(s), np.float32) for s in range(1, INIT_BATCHES)])
    params, scale = _init(cfg, stack, seeds, sample)
    members_arr = jax.tree.map(lambda *a: jnp.stack(a), *stack)
    run = {**dataclasses.asdict(cfg), "members": [list(m) for m in members], "seeds": [int(s) for s in seeds],
           "sites": list(sites)}

    def init_state():
        return SAEState.create(apply_fn=None, params=params, tx=_optimizer(cfg.learning_rate),
                               since_fired=jnp.zeros((k, cfg.d_sae), jnp.int32),
                               threshold=jnp.zeros((k, cfg.d_sae), jnp.float32),
                               members=members_arr, scale=scale)

    def batch_fn(step):
        return {"x": jnp.asarray(batches(step), jnp.float32)}

    k_max = max(kk for _, kk in members) if cfg.architecture == "topk" else 0
    result = fit(init_state, SAEStep(cfg, k_max), batch_fn, cfg.num_steps, checkpoint_dir=checkpoint_dir,
                 stop_after=stop_after, run_config=run, progress=progress, mesh=mesh,
                 desc=f"{k} SAE(s) at {sites[0]}" + (" ..." if k > 1 else ""))
    state = parallel.to_host(result.state)
    losses = result.metrics.get("losses", np.zeros((0, k)))
    out = []
    for i, ((size, kk), seed, site) in enumerate(zip(members, seeds, sites)):
        p = {name: np.asarray(v[i]) for name, v in state.params.items()}
        if cfg.architecture == "batchtopk":
            p["threshold"] = np.asarray(state.threshold[i])
        p = sae_lib.fold_scale(p, float(state.scale[i]))
        p = _trim(p, size)
        info = {"site": site, "seed": int(seed), "k": int(kk), "latents": int(size),
                "steps": int(state.step), "resumed_from": result.resumed_from,
                "input_scale": float(state.scale[i]),
                # Latents silent for dead_steps steps at the end (AuxK's dead set).
                "dead_fraction": float(np.mean(np.asarray(state.since_fired[i, :size]) >= cfg.dead_steps)),
                "losses": [round(float(x), 6) for x in np.asarray(losses)[:, i]], **(provenance or {})}
        out.append(TrainedSAE(dataclasses.replace(cfg, d_sae=int(size)), p, info))
    return out


def _trim(params: dict, size: int) -> dict:
    """The first ``size`` latents of a stack member's params."""
    latent_axis = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "log_threshold": 0, "threshold": 0}
    return {name: (np.take(v, np.arange(size), axis=latent_axis[name]) if name in latent_axis else v)
            for name, v in params.items()}

