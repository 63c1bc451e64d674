"""Steering on ToyWorld (paper §3.2.3, Table 3): each concept value is a target; held-out inputs of
other values are steered toward it at each tower's last layer, and scored against ground truth.

Per tower, at ``S = {tower}.layers.{L-1}.resid_post`` (every token) and its layer's logits:

- *Direct* (eq 5): ``Add`` of ``alpha x site_scale(S) x unit(Delta_c)``, ``Delta_c`` the eq 6 mean
  difference (target value vs the rest) of token-mean representations at S on the train split.
- *Attention* (eq 7): ``M_c`` adds ``attention_strength x sqrt(d_head)`` to the logits of keys
  whose representation (``{tower}.layers.{L-1}.resid_pre``) is an eq 1 member of the target's
  prototype (tau fitted on train, ``fit_threshold``): a shift of ``attention_strength`` in the
  softmax input, since eq 7 adds ``M_c`` before the ``1/sqrt(d_k)`` scaling.
- *Combined*: both in one edit dict.
- *AP* (activation patching without alignment): the readout token of S (CLS for images and
  audio, EOS for text: what the tower pools) replaced by the target's mean activation of that
  token on the train split (``stages.steering.EditAP``).
- *None*: no intervention (how often inputs are already predicted as the target).
- *FT* (fine-tuning): a residual linear head on ``{tower}.pooled`` tuned per target with optax
  through ``loop.fit`` (``control.finetune``: toward the target, keeping the other families).

Success: the zero-shot prediction of the target's family becomes the target, among inputs whose
true value differs. Collateral: accuracy on the other families under the same intervention.
Seeds vary the train subset the directions, prototypes, means and FT heads are fitted on.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections
import numpy as np

from mrepe_jax.control.evaluate import collateral_accuracy, steered_predictions, success_rate
from mrepe_jax.control.finetune import FinetuneConfig, finetune_heads, head_predictions
from mrepe_jax.control.interventions import concept_bias, site_scale
from mrepe_jax.experiments.toyworld.identify import TOWERS
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.report.plots import lines
from mrepe_jax.stages.reads import mean_reps, readout_mask, readout_reps, token_reps
from mrepe_jax.stages.seeds import train_subsets
from mrepe_jax.stages.steering import EditAP, EditEq5Eq7, attention_unit, steering_sites

METHODS = ("none", "direct", "attention", "combined", "ap", "ft")


def _ft_predictions(model, params, tower, train_reps, test_pooled, train_labels, targets, subsets,
                    prompts, scale, cfg) -> tuple[dict, float]:
    """FT heads for every (seed, target), one stack: ``({family: [S, T, N]}, seconds to tune)``."""
    pooled = train_reps[f"{tower}.pooled"]
    weights = np.zeros((len(subsets), len(targets), len(pooled)), np.float32)
    for s, subset in enumerate(subsets):
        weights[s, :, subset] = 1.0
    t0 = time.perf_counter()
    heads, _ = finetune_heads(model, {"params": params}, tower, pooled, train_labels,
                              targets * len(subsets), weights.reshape(-1, len(pooled)), prompts, scale,
                              FinetuneConfig(**cfg.ft.to_dict()))
    seconds = time.perf_counter() - t0
    preds = head_predictions(model, {"params": params}, tower, heads, test_pooled, prompts)
    return {f: p.reshape(len(subsets), len(targets), -1) for f, p in preds.items()}, seconds


def tower_table(model, params, world, tower: str, train_reps: dict, train_batch, train_labels,
                test_batch, test_labels, test_pooled, prompts: dict, scale: float,
                cfg: ml_collections.ConfigDict) -> dict:
    """``{method: {"success": {alpha: [per seed]}, "collateral": {alpha: [per seed]}}}`` for one
    tower, averaged over every (family, target value), with fitting times (``seconds``)."""
    site, logits, key_site = steering_sites(model, tower)
    input_key, mask_key = TOWERS[tower]
    x, mask = test_batch[input_key], test_batch[mask_key] if mask_key else None
    inputs = {input_key: x, **({mask_key: mask} if mask_key else {})}
    labels = {f: np.asarray(y) for f, y in test_labels.items()}
    keys = token_reps(model, params, tower, TOWERS[tower], inputs, key_site)  # [n, T, D]
    key_means = mean_reps(model, params, tower, TOWERS[tower], train_batch, (key_site,),
                          gather=True)[key_site]
    readouts = readout_reps(model, params, tower, TOWERS[tower], train_batch, site, gather=True)
    where = readout_mask(model, params, tower, x).value
    reps = train_reps[site]
    scale_site = site_scale(reps)
    bias_unit = attention_unit(model, tower, reps.shape[1], cfg.attention_strength)
    alphas = [float(a) for a in cfg.alphas]
    edit5, edit_ap = EditEq5Eq7(site, logits), EditAP(site)
    targets = [(f, c) for f, values in world.families.items() for c in range(len(values))]
    subsets = train_subsets(len(reps), cfg.train_fraction, cfg.seeds, "control.train_fraction")
    ft, ft_seconds = _ft_predictions(model, params, tower, train_reps, test_pooled, train_labels,
                                     targets, subsets, prompts, scale, cfg)

    out = {m: {"success": {str(a): [] for a in alphas}, "collateral": {str(a): [] for a in alphas}}
           for m in METHODS}
    fractions, fit_seconds = [], 0.0
    for seed_index, subset in enumerate(subsets):
        y_all = {f: np.asarray(y)[subset] for f, y in train_labels.items()}
        zero = np.zeros(keys.shape[:2], np.float32)
        # Row 0: no intervention, the same predictions for every target.
        arrays = {"delta": [np.zeros(reps.shape[1], np.float32)], "alpha": [0.0], "bias": [zero],
                  "mean": []}
        rows = [(None, None, "none", 0.0)]
        t0 = time.perf_counter()
        for family, c in targets:
            y = y_all[family]
            delta = np.asarray(direction_mean_diff(reps[subset][y == c], reps[subset][y != c]))
            bias = concept_bias(key_means[subset], y == c, keys, bias_unit)
            fractions.append(float(np.mean(bias != 0)))
            for method, alpha in [("attention", 0.0)] + [
                    (m, a) for m in ("direct", "combined") for a in alphas]:
                arrays["delta"].append(delta)
                arrays["alpha"].append(alpha)
                arrays["bias"].append(bias if method in ("attention", "combined") else zero)
                rows.append((family, c, method, alpha))
            arrays["mean"].append(readouts[subset][y == c].mean(0))
        fit_seconds += time.perf_counter() - t0
        eq57 = {"delta": np.stack(arrays["delta"]), "alpha": np.asarray(arrays["alpha"], np.float32),
                "bias": np.stack(arrays["bias"]),
                "scale": np.full(len(arrays["alpha"]), scale_site, np.float32)}
        preds = steered_predictions(model, {"params": params}, tower, x, mask, edit5, eq57, prompts)
        ap = steered_predictions(model, {"params": params}, tower, x, mask, edit_ap,
                                 {"mean": np.stack(arrays["mean"]).astype(np.float32),
                                  "where": np.stack([where] * len(arrays["mean"]))}, prompts)
        scores: dict = {}

        def score(method, pk, family, c, alpha_keys, scores=scores):
            s = (success_rate(pk[family], labels[family], c), collateral_accuracy(pk, labels, family))
            for a in alpha_keys:
                scores.setdefault((method, a), []).append(s)

        every = [str(a) for a in alphas]
        for k, (family, c, method, alpha) in enumerate(rows):
            pk = {f: p[k] for f, p in preds.items()}
            # Row 0 is scored against every target; alpha-free methods fill every alpha's table.
            for fam, val in ([(family, c)] if family is not None else targets):
                score(method, pk, fam, val, every if method in ("none", "attention") else [str(alpha)])
        for k, (family, c) in enumerate(targets):
            score("ap", {f: p[k] for f, p in ap.items()}, family, c, every)
            score("ft", {f: p[seed_index, k] for f, p in ft.items()}, family, c, every)
        for (method, a), values in scores.items():
            out[method]["success"][a].append(float(np.mean([v[0] for v in values])))
            out[method]["collateral"][a].append(float(np.mean([v[1] for v in values])))
    # How many key tokens eq 1 marks as members of a target (the tokens eq 7 boosts; 0 when the
    # strength is 0).
    out["member_fraction"] = float(np.mean(fractions))
    # Fitting time per seed, every target: eq 6 directions + eq 1 prototypes vs the FT heads.
    out["seconds"] = {"mrepe_fit": round(fit_seconds / len(subsets), 3),
                      "ft_fit": round(ft_seconds / len(subsets), 3)}
    return out


def dose_response(out: dict, path) -> None:
    """Success (solid) and collateral accuracy (dashed) against alpha, eq 5 and eq 5 + 7, per tower."""
    alphas = [str(a) for a in out["alphas"]]
    series = {}
    for tower, r in out["towers"].items():
        for method in ("direct", "combined"):
            for key, suffix in (("success", ""), ("collateral", " collateral (dashed)")):
                per_seed = np.asarray([r[method][key][a] for a in alphas])  # [alphas, seeds]
                series[f"{tower} {method}{suffix}"] = (out["alphas"], per_seed.mean(1), per_seed.std(1))
    lines(series, path, title="steering dose-response (mean ± std over seeds)",
          xlabel="alpha (x the site's mean norm)", ylabel="share of test inputs", logx=True)


def run(model, params, world, reps: dict, train_batch, train_labels, prompts: dict, scale: float,
        cfg: ml_collections.ConfigDict, workdir=None) -> dict:
    """Table 3 for every tower (see the module docstring), and its alpha sweep's plot
    ``steering_dose_response.png`` in ``workdir``. ``train_batch``: this process's rows of the
    train split (``reps["train"]`` holds every row's representations)."""
    num_test = len(reps["test"][cfg.towers[0]][f"{cfg.towers[0]}.pooled"])
    if cfg.num_inputs > num_test:
        raise ValueError(f"control.num_inputs={cfg.num_inputs} exceeds the {num_test} test rows "
                         "encoded (eval.num_test): raise eval.num_test or lower control.num_inputs")
    t0 = time.perf_counter()
    test = world.batch(range(cfg.num_inputs), split="test")  # every process: the same inputs
    missing = [a for a in cfg.table_alphas if a not in cfg.alphas]
    if missing:
        raise ValueError(f"control.table_alphas {missing} are not in the sweep control.alphas "
                         f"{tuple(cfg.alphas)}")
    out = {"towers": {}, "alphas": list(cfg.alphas), "table_alphas": list(cfg.table_alphas),
           "seeds": list(cfg.seeds),
           "num_inputs": cfg.num_inputs}
    for tower in cfg.towers:
        test_pooled = reps["test"][tower][f"{tower}.pooled"][:cfg.num_inputs]
        out["towers"][tower] = tower_table(model, params, world, tower, reps["train"][tower],
                                           train_batch, train_labels, test, test["labels"],
                                           test_pooled, prompts, scale, cfg)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if workdir is not None:
        dose_response(out, Path(workdir) / "steering_dose_response.png")
    return out
