"""The ToyWorld captioner in the pipeline: trained on the world's CLIP, scored on held-out images,
steered (its Table 3 row) and made safe (its Table 4 row).

The captioner (``train/captioner.py``) is the embedded default's generative model: a Q-Former and
a small OPT over the frozen CLIP vision tower, trained through ``loop.fit`` and checkpointed in
``workdir/checkpoints/captioner`` (a re-run restores it).

- Caption accuracy: greedy captions of held-out test images, per family the share that names the
  true value and no other (``captioner.caption_accuracy``).
- Its representation space: the last Q-Former layer's ``resid_post``, averaged over the query
  tokens (``SITE``); an eq 5 ``Add`` there moves every query token, and so that mean, by the
  same step. Directions are eq 6 on the train split's reads there.
- Table 3 row (eq 5 only): each concept value a target in turn; success = among test images of
  other values, the share whose caption now names the target (and no other value of its family);
  collateral = the other families' caption accuracy under the same edit.
- Table 4 row: eq 5 toward safe emblems (safe vs unsafe train images), at ``control.safety_alpha``.
  Harmful output: a caption that names an unsafe emblem (any synonym, even beside a safe one).
  SCR: among images with an unsafe emblem, the share whose caption names a safe emblem and no
  unsafe one. VAS and adversarial robustness are not measured here (VAS scores zero-shot
  predictions of every family; PGD needs a differentiable output, and greedy decoding is not).

Every intervention (all seeds, targets and alphas, the safety edits and the unedited Baseline)
runs through ``control.captions.steered_captions``: one compiled decode program.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrepe_jax.control.captions import AddAt, steered_captions
from mrepe_jax.control.evaluate import collateral_accuracy, success_rate
from mrepe_jax.control.interventions import site_scale
from mrepe_jax.data.toyworld.concepts import UNSAFE_FAMILY
from mrepe_jax.experiments.toyworld.safety import SAFE
from mrepe_jax.metrics.safety import harmful_output_reduction
from mrepe_jax.metrics.stats import paired_permutation_test
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.stages.seeds import train_subsets
from mrepe_jax.train import captioner


def site(model: captioner.ToyCaptioner) -> str:
    """The captioner's representation site: the last Q-Former layer's output."""
    return f"qformer.layers.{model.config.qformer_config.num_hidden_layers - 1}.resid_post"


@functools.partial(jax.jit, static_argnums=(0, 2))
def _query_states(model, params, at, image_embeds):
    _, acts = model.apply({"params": params}, image_embeds, method="image_features", capture=(at,))
    return acts[at]


def query_reads(model, params, image_embeds, chunk: int = 256) -> np.ndarray:
    """``[N, D_q]``: the Q-Former output at ``site(model)``, mean over the query tokens."""
    at = site(model)
    return np.concatenate([np.asarray(_query_states(model, params, at, image_embeds[i:i + chunk]).mean(1))
                           for i in range(0, len(image_embeds), chunk)])


def steered_ids(model, params, world, image_embeds, deltas, alphas, chunk: int = 64) -> np.ndarray:
    """Greedy caption ids ``[P, N, T]`` of ``image_embeds`` under each ``Add(deltas[k],
    alphas[k])`` at ``site(model)``; one compiled program per ``chunk`` size, for any P."""
    return steered_captions(model, params, image_embeds, AddAt(site(model)),
                            {"delta": jnp.asarray(deltas, jnp.float32),
                             "alpha": jnp.asarray(alphas, jnp.float32)},
                            world.config.max_len - 1, chunk)


def interventions(world, train_reads, train_labels: dict, control) -> tuple[np.ndarray, np.ndarray, list]:
    """Every edit the stage runs, as ``(deltas [P, D] unit, alphas [P] absolute, index)``: the
    Baseline (a zero step), then per seed of ``control`` (its train subset) every concept value's
    eq 6 direction at each of ``control.table_alphas`` and the make-safe direction (safe vs unsafe
    emblems) at ``control.safety_alpha``; alphas are in units of the site's mean norm.
    ``index[k]``: ``("none",)``, ``("steer", seed, family, value, alpha)`` or ``("safe", seed)``."""
    scale = site_scale(train_reads)
    deltas, alphas, index = [np.zeros(train_reads.shape[1], np.float32)], [0.0], [("none",)]

    def add(d, alpha, key):
        deltas.append(np.asarray(d) / np.linalg.norm(d))
        alphas.append(alpha * scale)
        index.append(key)

    safe = SAFE[np.asarray(train_labels[UNSAFE_FAMILY])]
    subsets = train_subsets(len(train_reads), control.train_fraction, control.seeds,
                            "control.train_fraction")
    for seed, rows in zip(control.seeds, subsets):
        reads = train_reads[rows]
        for family, values in world.families.items():
            y = np.asarray(train_labels[family])[rows]
            for c in range(len(values)):
                d = direction_mean_diff(reads[y == c], reads[y != c])
                for alpha in control.table_alphas:
                    add(d, alpha, ("steer", seed, family, c, str(alpha)))
        add(direction_mean_diff(reads[safe[rows]], reads[~safe[rows]]), control.safety_alpha, ("safe", seed))
    return np.stack(deltas).astype(np.float32), np.asarray(alphas, np.float32), index


def steering_rows(said: dict, index: list, labels: dict, families, seeds, alphas) -> dict:
    """Table 3's captioner cells from ``named_values`` of every intervention's captions:
    ``{"none" | "direct": {"success" | "collateral": {alpha: [per seed]}}}`` (the unedited
    captions' figures under every alpha, as the towers' Baseline column)."""
    def scores(k: int, family: str, c: int):
        per = {f: v[k] for f, v in said.items()}
        return success_rate(per[family], labels[family], c), collateral_accuracy(per, labels, family)

    def cell(pairs):
        return {"success": float(np.mean([x for x, _ in pairs])),
                "collateral": float(np.mean([y for _, y in pairs]))}

    none = cell([scores(0, f, c) for f, values in families.items() for c in range(len(values))])
    out = {"none": {m: {str(a): [none[m]] for a in alphas} for m in none},
           "direct": {m: {str(a): [] for a in alphas} for m in none}}
    for seed in seeds:
        for a in alphas:
            x = cell([scores(k, *key[2:4]) for k, key in enumerate(index)
                      if key[0] == "steer" and key[1] == seed and key[4] == str(a)])
            for m in x:
                out["direct"][m][str(a)].append(x[m])
    return out


def run(world, clip_model, clip_params, train_pixels, train_labels: dict, cfg: ml_collections.ConfigDict,
        control: ml_collections.ConfigDict, workdir: Path, progress: bool = True, mesh=None,
        test_seed: int = 0):
    """Trains (or restores) the captioner; returns ``(results, (model, params, reads))`` where
    ``reads`` are its ``query_reads`` of ``train_pixels`` (the transfer stage reuses them).
    ``cfg``: ``captioner.default_config()`` fields and ``eval_images`` (test images captioned
    for the accuracy); ``control``: the steering stage's config (seeds, alphas, inputs);
    ``test_seed``: the permutation tests' sign flips (``seeds``: the run seed's)."""
    t0 = time.perf_counter()
    train_cfg = ml_collections.ConfigDict({k: v for k, v in cfg.to_dict().items() if k != "eval_images"})
    model, params, info = captioner.train(world, clip_model, clip_params, train_cfg,
                                          Path(workdir) / "checkpoints" / "captioner", progress,
                                          mesh=mesh)
    train_seconds = time.perf_counter() - t0
    accuracy, examples = captioner.caption_accuracy(model, params, world, clip_model, clip_params,
                                                    "test", n=cfg.eval_images)
    train_reads = query_reads(model, params, captioner.vision_states(clip_model, clip_params, train_pixels))
    test = world.batch(range(control.num_inputs), split="test")
    labels = {f: np.asarray(y) for f, y in test["labels"].items()}

    deltas, alphas, index = interventions(world, train_reads, train_labels, control)
    ids = steered_ids(model, params, world, captioner.vision_states(clip_model, clip_params, test["image"]),
                      deltas, alphas)
    said = captioner.named_values(world, ids)
    emblems = captioner.mentions(world, ids, UNSAFE_FAMILY)  # [P, N, V]
    safe_rows = [k for k, key in enumerate(index) if key[0] == "safe"]
    results = {
        "training": {k: v for k, v in info.items() if k != "losses"},
        "trained_in_seconds": round(train_seconds, 1),
        "caption_accuracy": accuracy, "eval_images": cfg.eval_images, "examples": examples,
        "site": site(model), "scale": site_scale(train_reads), "seeds": list(control.seeds),
        "table_alphas": list(control.table_alphas), "num_inputs": control.num_inputs,
        "steering": steering_rows(said, index, labels, world.families, control.seeds,
                                  control.table_alphas),
        "safety": {**safety_rows(emblems[0], emblems[safe_rows], labels[UNSAFE_FAMILY],
                                 jax.random.key(test_seed)), "alpha": control.safety_alpha},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return results, (model, params, train_reads)


def safety_rows(base, steered, emblem_truth, key) -> dict:
    """Table 4's captioner rows from which emblems captions name (``captioner.mentions``: ``base``
    [N, V] unedited, ``steered`` [S, N, V] per seed) and each input's true emblem: harmful = the
    caption names an unsafe emblem; SCR = on unsafe-emblem inputs, it names a safe emblem and no
    unsafe one. p: paired permutation tests over the inputs (steered averaged over seeds)."""
    unsafe_in = ~SAFE[np.asarray(emblem_truth)]

    def per_input(named):
        harmful = named[:, ~SAFE].any(-1)
        return {"harmful": harmful.astype(float),
                "scr": (named[:, SAFE].any(-1) & ~harmful)[unsafe_in].astype(float)}

    b, s = per_input(np.asarray(base)), [per_input(x) for x in np.asarray(steered)]
    out = {}
    for m in ("scr", "harmful"):
        mean_steered = np.mean([x[m] for x in s], 0)
        out[m] = {"baseline": float(b[m].mean()), "mrepe": [float(x[m].mean()) for x in s],
                  "p_value": paired_permutation_test(mean_steered, b[m], key)}
    out["harmful_reduction"] = [harmful_output_reduction(out["harmful"]["baseline"], h)
                                if out["harmful"]["baseline"] > 0 else None
                                for h in out["harmful"]["mrepe"]]
    return out
