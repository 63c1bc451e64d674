"""Table 5 on ToyWorld: what an intervention costs on top of the trained CLIP, as ratios.

- Training time: ``(CLIP training + what the method fits) / CLIP training``. MRepE fits the eq 4
  maps of every modality pair (one seed's share of the stacked fit) and the eq 6 directions and
  eq 1 prototypes of every target in every tower; FT tunes its heads (every target, every tower).
- Inference time: one tower forward on the Table 3 inputs with the method in it, over the same
  forward without (median of interleaved timed calls, so that background load hits both alike).
- Memory: the peak bytes of the compiled program with the method over without
  (``metrics.cost.peak_bytes``: XLA's buffer assignment, not a load-dependent reading).

Edits are arguments of the timed programs, not constants folded into them: what is timed is
what a sweep over interventions runs.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrepe_jax.control.interventions import site_scale
from mrepe_jax.experiments.toyworld.identify import TOWERS
from mrepe_jax.metrics.cost import compiled_peak_bytes, time_interleaved
from mrepe_jax.stages.steering import EditAP, EditEq5Eq7, steering_sites

METHODS = ("mrepe", "ap", "ft")


def _encode(model, tower, edits_fn, params, inputs, mask, p):
    emb, _ = model.apply({"params": params}, tower, inputs, mask, edits=edits_fn(p), method="encode")
    return emb


def _encode_ft(model, tower, params, inputs, mask, head):
    _, acts = model.apply({"params": params}, tower, inputs, mask, method="encode",
                          capture=(f"{tower}.pooled",))
    pooled = acts[f"{tower}.pooled"]
    emb, _ = model.apply({"params": params}, tower, pooled + pooled @ head["w"] + head["b"],
                         method="from_pooled")
    return emb


def _programs(model, tower: str, site: str, logits: str, width: int, tokens: int, n: int, scale: float):
    """``{method: (fn(params, inputs, mask, arrays), arrays)}``: the forward with each method's
    edit (arrays of the right shapes; their values do not change the cost)."""
    rng = np.random.default_rng(0)
    unit = rng.normal(size=width).astype(np.float32)
    eq57 = {"delta": unit / np.linalg.norm(unit), "alpha": np.float32(1.0), "scale": np.float32(scale),
            "bias": np.where(rng.random((n, tokens)) < 0.2, 8.0, 0.0).astype(np.float32)}
    fns = {"none": (functools.partial(_encode, model, tower, lambda p: {}), {}),
           "mrepe": (functools.partial(_encode, model, tower,
                                       EditEq5Eq7(site, logits)), eq57),
           "ap": (functools.partial(_encode, model, tower, EditAP(site)),
                  {"mean": rng.normal(size=width).astype(np.float32),
                   "where": np.broadcast_to(np.arange(tokens) == 0, (n, tokens))}),
           "ft": (functools.partial(_encode_ft, model, tower),
                  {"w": np.zeros((width, width), np.float32), "b": np.zeros(width, np.float32)})}
    return fns


def tower_costs(model, params, tower: str, test, train_reps: dict, iters: int) -> dict:
    """Inference seconds and peak bytes of each method's forward, and their ratios to none."""
    site, logits, _ = steering_sites(model, tower)
    input_key, mask_key = TOWERS[tower]
    inputs = jnp.asarray(test[input_key])
    mask = jnp.asarray(test[mask_key]) if mask_key else None
    reps = train_reps[site]
    tokens = jax.eval_shape(lambda: model.apply({"params": params}, tower, inputs, mask, method="encode",
                                                capture=(site,))[1][site]).shape[1]
    programs = _programs(model, tower, site, logits, reps.shape[1], tokens, len(inputs), site_scale(reps))
    # One compile per method serves both the timing and the memory figure.
    compiled = {m: jax.jit(fn).lower(params, inputs, mask, arrays).compile()
                for m, (fn, arrays) in programs.items()}
    calls = {m: (lambda m=m: compiled[m](params, inputs, mask, programs[m][1]).block_until_ready())
             for m in programs}
    timed = time_interleaved(calls, iters=iters, warmup=2)
    memory = {m: compiled_peak_bytes(c) for m, c in compiled.items()}
    seconds = {m: timed[m][1] for m in programs}
    return {"seconds": seconds, "peak_bytes": memory,
            "inference_ratio": {m: seconds[m] / seconds["none"] for m in METHODS},
            "memory_ratio": {m: memory[m] / memory["none"] for m in METHODS}}


def run(model, params, world, reps: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Inference and memory costs per tower of the control stage (see the module docstring)."""
    t0 = time.perf_counter()
    test = world.batch(range(cfg.num_inputs), split="test")
    out = {"towers": {t: tower_costs(model, params, t, test, reps["train"][t], cfg.efficiency_iters)
                      for t in cfg.towers}, "num_inputs": cfg.num_inputs}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def training_ratios(results: dict) -> dict:
    """Table 5's training-time ratios from a world's stage results (see the module docstring):
    ``{"mrepe": ratio, "ft": ratio, "clip_seconds": s, "mrepe_seconds": s, "ft_seconds": s}``."""
    clip = results["training"]["trained_in_seconds"]
    align = results["alignment"]
    towers = results["control"]["towers"].values()
    mrepe = align["map_fit"]["seconds"] / len(align["seeds"]) + sum(t["seconds"]["mrepe_fit"] for t in towers)
    ft = sum(t["seconds"]["ft_fit"] for t in towers)
    return {"mrepe": (clip + mrepe) / clip, "ft": (clip + ft) / clip, "clip_seconds": clip,
            "mrepe_seconds": mrepe, "ft_seconds": ft, "maps_restored": align["map_fit"]["restored"]}
