"""Sparse-autoencoder features on ToyWorld, scored against its ground truth (issue 26, items 5-6).

At the vision tower's steering site ``S`` (the last layer's ``resid_post``, Table 3's), SAEs of each
architecture in ``features.architectures`` are trained on token activations streamed from the
CLIP (``features.stream``: a fresh draw of train images every step, nothing stored), one SAE per
architecture with ``features.latents`` latents: TopK and BatchTopK at ``k``, JumpReLU and ReLU at
the sparsity coefficients the config names (chosen so their L0 lands near ``k``: the comparison is
at matched L0, and the table prints each one's L0 so a mismatch shows).

An image's feature activation is its tokens' mean (what identification's token-mean reads), and
against the world's labels:

- *recovery*: per concept value, the feature with the best validation AUROC (value vs rest), its
  test AUROC; the share of values whose feature reaches ``recovery_auroc`` (0.95). Beside it the
  eq 6 direction's (mean difference at ``S``, the same splits) and a ``probe_k``-sparse probe on
  the features (the ``probe_k`` features of best validation AUROC, a logistic probe on them,
  ``reading.directions.direction_probe``);
- *purity*: the share of alive features (firing on some test image) whose ``top_examples`` most
  activating test images are at least ``purity`` one value of one family;
- *spurious* (a world with ``spurious > 0``): per value of the spurious pair's target family, the
  feature that best detects it on the *train* split (where the source family predicts it), and
  that feature's test AUROC for the value and for the source values that predicted it in training.
  A feature that learnt the shortcut detects the source better than the target on test.
- *steering* (Table 3's "SAE feature" column): each value's recovered feature steers held-out
  test images two ways: its decoder direction added at ``S`` (eq 5 with ``Delta`` that row, alpha in
  units of the site's mean norm, as Direct), and the latent clamped on every token to
  ``clamp_scale`` times its largest train activation with the SAE's error term kept
  (``features.edits.SAEClamp``). Success and collateral as in Table 3 (``control.evaluate``),
  averaged over targets for Table 3 and kept per target value (``per_value``) for its page;
- *feature pages* (``report.html``, issue 28): per architecture, for each feature that is some
  value's best, its top test images with per-patch heatmaps, its activation histogram and its
  decoder row's top words through the text tower (``feature_cards``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import ml_collections
import numpy as np
import scipy.stats

from mrepe_jax.control.evaluate import DirectEdits, collateral_accuracy, steered_predictions, success_rate
from mrepe_jax.control.interventions import site_scale
from mrepe_jax.experiments.toyworld import feature_cards as cards
from mrepe_jax.features.edits import SAEClamp, SAESplice
from mrepe_jax.features.evaluate import evaluate_sae
from mrepe_jax.features.sae import SAEConfig
from mrepe_jax.features.stream import site_batches
from mrepe_jax.features.train import train_saes
from mrepe_jax.reading.directions import direction_mean_diff, direction_probe
from mrepe_jax.stages.reads import token_reps
from mrepe_jax.stages.steering import steering_sites
from mrepe_jax.train.zero_shot import predict

KEYS = ("image", None)


def auroc_columns(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``[M]``: the AUROC of each column of ``scores [N, M]`` for ``positive [N]`` (ties count
    half: average ranks, so a feature that is zero on most images is scored fairly)."""
    ranks = scipy.stats.rankdata(scores, axis=0)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _image_features(sae, tokens: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``[N, m]``: each image's mean latent activation over its tokens."""
    return np.concatenate([np.asarray(sae.encode(tokens[i:i + chunk])).mean(1)
                           for i in range(0, len(tokens), chunk)])


def _token_features(sae, tokens: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``[N, T, m]``: each token's latent activations."""
    return np.concatenate([np.asarray(sae.encode(tokens[i:i + chunk])) for i in range(0, len(tokens), chunk)])


def _recovery(features: dict, labels: dict, world, cfg) -> dict:
    """Per value: the best validation feature's test AUROC, and the sparse probe's."""
    per_value: dict = {}
    for family, values in world.families.items():
        per_value[family] = {}
        for v, name in enumerate(values):
            y = {s: np.asarray(labels[s][family]) == v for s in ("train", "validation", "test")}
            val = auroc_columns(features["validation"], y["validation"])
            best = int(np.argmax(val))
            chosen = np.argsort(-val)[:cfg.probe_k]
            w = np.asarray(direction_probe(features["train"][:, chosen], y["train"]))
            probe = auroc_columns((features["test"][:, chosen] @ w)[:, None], y["test"])[0]
            per_value[family][name] = {
                "feature": best, "auroc": float(auroc_columns(features["test"][:, [best]], y["test"])[0]),
                "probe_auroc": float(probe), "probe_features": chosen.tolist()}
    cells = [c for fam in per_value.values() for c in fam.values()]
    return {"per_value": per_value,
            "recovery": float(np.mean([c["auroc"] >= cfg.recovery_auroc for c in cells])),
            "probe_recovery": float(np.mean([c["probe_auroc"] >= cfg.recovery_auroc for c in cells])),
            "mean_best_auroc": float(np.mean([c["auroc"] for c in cells]))}


def _purity(test_features: np.ndarray, test_labels: dict, cfg) -> dict:
    """The share of alive features whose top test images are ``purity`` one value of one family."""
    alive = np.flatnonzero(test_features.max(0) > 0)
    pure = 0
    for j in alive:
        top = np.argsort(-test_features[:, j], kind="stable")[:cfg.top_examples]
        share = max(np.bincount(np.asarray(y)[top]).max() / len(top) for y in test_labels.values())
        pure += share >= cfg.purity
    return {"alive": int(len(alive)), "purity": float(pure / max(len(alive), 1))}


def _spurious(features: dict, labels: dict, world) -> dict | None:
    """The shortcut check of the hard world (module docstring); None when the world has none."""
    if world.config.spurious <= 0:
        return None
    source, target = world.config.spurious_pair
    n_target = len(world.families[target])
    out = {}
    for t, name in enumerate(world.families[target]):
        sources = [s for s in range(len(world.families[source])) if s % n_target == t]
        train_y = np.asarray(labels["train"][target]) == t
        j = int(np.argmax(auroc_columns(features["train"], train_y)))
        test_t = np.asarray(labels["test"][target]) == t
        test_s = np.isin(np.asarray(labels["test"][source]), sources)
        out[name] = {"feature": j, "sources": [world.families[source][s] for s in sources],
                     "test_auroc_target": float(auroc_columns(features["test"][:, [j]], test_t)[0]),
                     "test_auroc_source": float(auroc_columns(features["test"][:, [j]], test_s)[0])}
    shortcut = [n for n, r in out.items() if r["test_auroc_source"] > r["test_auroc_target"]]
    return {"source": source, "target": target, "per_value": out, "shortcut_values": shortcut}


def _directions(reps: dict, labels: dict, world, site: str, cfg) -> dict:
    """Eq 6's mean-difference direction at ``site`` per value: test AUROC and recovery share."""
    aucs = {}
    for family, values in world.families.items():
        for v, name in enumerate(values):
            y_train = np.asarray(labels["train"][family]) == v
            d = np.asarray(direction_mean_diff(reps["train"][site][y_train], reps["train"][site][~y_train]))
            y = np.asarray(labels["test"][family]) == v
            aucs[f"{family}={name}"] = float(auroc_columns((reps["test"][site] @ d)[:, None], y)[0])
    return {"recovery": float(np.mean([a >= cfg.recovery_auroc for a in aucs.values()])),
            "mean_auroc": float(np.mean(list(aucs.values()))), "per_value": aucs}


@dataclasses.dataclass(frozen=True)
class SpliceEdits:
    """``edits_fn`` splicing one SAE's reconstruction in at ``site`` (its error term dropped)."""

    site: str
    cfg: SAEConfig

    def __call__(self, p):
        return {self.site: SAESplice(p["params"], p["k"], cfg=self.cfg)}


def _splice_accuracy(model, params, world, sae, site: str, test_x, test_labels: dict, prompts: dict) -> dict:
    """Zero-shot accuracy per family on test images with the SAE's reconstruction spliced in at
    ``site`` on every token, and without (the downstream cost of the SAE's error)."""
    arrays = {"params": {name: np.asarray(v)[None] for name, v in sae.params.items()},
              "k": np.full(1, sae.info["k"], np.int32)}
    spliced = steered_predictions(model, {"params": params}, "vision", test_x, None, SpliceEdits(site, sae.cfg),
                                  arrays, prompts)
    return {f: float(np.mean(np.asarray(spliced[f][0]) == np.asarray(test_labels[f]))) for f in world.families}


@dataclasses.dataclass(frozen=True)
class ClampEdits:
    """``edits_fn`` of a clamp sweep: one SAE's latent ``p["latent"]`` clamped to ``p["value"]`` on
    every token at ``site`` (a frozen dataclass: one compiled program per site and SAE shape)."""

    site: str
    cfg: SAEConfig

    def __call__(self, p):
        return {self.site: SAEClamp(p["params"], p["latent"], p["value"], p["k"], cfg=self.cfg)}


def _steering(model, params, world, sae, recovery: dict, tokens_train: np.ndarray, scale: float, site: str,
              test, prompts: dict, alphas, cfg) -> dict:
    """Table 3's "SAE feature" column (decoder direction added, eq 5) and the clamp (module docstring)."""
    labels = {f: np.asarray(y) for f, y in test["labels"].items()}
    targets = [(f, v, recovery["per_value"][f][name]["feature"])
               for f, values in world.families.items() for v, name in enumerate(values)]
    rows = [(f, v, j, a) for f, v, j in targets for a in alphas]
    w_dec = np.asarray(sae.params["W_dec"])
    arrays = {"delta": np.stack([w_dec[j] for _, _, j, _ in rows]).astype(np.float32),
              "alpha": np.asarray([a for *_, a in rows], np.float32),
              "scale": np.full(len(rows), scale, np.float32)}
    x = test["image"]
    preds = steered_predictions(model, {"params": params}, "vision", x, None, DirectEdits(site), arrays, prompts)
    add = {"success": {str(a): [] for a in alphas}, "collateral": {str(a): [] for a in alphas}}
    for k, (f, v, _, a) in enumerate(rows):
        pk = {fam: p[k] for fam, p in preds.items()}
        add["success"][str(a)].append(success_rate(pk[f], labels[f], v))
        add["collateral"][str(a)].append(collateral_accuracy(pk, labels, f))
    # The clamp value: clamp_scale x the latent's largest activation on train tokens.
    peak = np.concatenate([np.asarray(sae.encode(tokens_train[i:i + 256])).reshape(-1, w_dec.shape[0]).max(0)[None]
                           for i in range(0, len(tokens_train), 256)]).max(0)
    n = len(targets)
    clamp = {"params": {name: np.broadcast_to(np.asarray(v), (n,) + np.shape(v)) for name, v in sae.params.items()},
             "latent": np.asarray([j for *_, j in targets], np.int32),
             "value": np.asarray([cfg.clamp_scale * peak[j] for *_, j in targets], np.float32),
             "k": np.full(n, sae.info["k"], np.int32)}
    cpreds = steered_predictions(model, {"params": params}, "vision", x, None, ClampEdits(site, sae.cfg), clamp,
                                 prompts)
    success, collateral = [], []
    for k, (f, v, _) in enumerate(targets):
        pk = {fam: p[k] for fam, p in cpreds.items()}
        success.append(success_rate(pk[f], labels[f], v))
        collateral.append(collateral_accuracy(pk, labels, f))
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    per_value: dict = {}
    for k, (f, v, j) in enumerate(targets):
        # add[key][alpha] holds one entry per target, in the order of ``targets``.
        per_value.setdefault(f, {})[world.families[f][v]] = {
            "feature": int(j),
            "add": {key: {str(a): add[key][str(a)][k] for a in alphas} for key in ("success", "collateral")},
            "clamp": {"success": success[k], "collateral": collateral[k]}}
    return {"architecture": sae.cfg.architecture,
            "add": {key: {a: [mean(v)] for a, v in d.items()} for key, d in add.items()},
            "clamp": {"success": mean(success), "collateral": mean(collateral),
                      "clamp_scale": float(cfg.clamp_scale)},
            "per_value": per_value}


def _sae_config(cfg: ml_collections.ConfigDict, arch: str, d_in: int) -> SAEConfig:
    extra = dict(cfg.coefficients.get(arch, {}))
    return SAEConfig(d_in=d_in, d_sae=cfg.latents, architecture=arch, num_steps=cfg.steps,
                     batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, aux_k=cfg.aux_k,
                     dead_steps=cfg.dead_steps, seed=cfg.seed, **extra)


def page_features(arch_out: dict) -> list[int]:
    """The features of one architecture that get a page: each concept value's best (``per_value``)
    and, in a world with a shortcut, each target value's best train feature (``spurious``), whose
    top images show what it reads."""
    best = {int(b["feature"]) for fam in arch_out["per_value"].values() for b in fam.values()}
    shortcut = {int(e["feature"]) for e in ((arch_out.get("spurious") or {}).get("per_value") or {}).values()}
    return sorted(best | shortcut)


def _pages(model, params, world, saes: dict, out: dict, test_tokens: np.ndarray, test_x: np.ndarray,
           test_labels: dict, scale: float, workdir) -> dict:
    """What each feature page shows (``feature_cards``) for every ``page_features`` feature, per
    architecture: ``{arch: [{feature, top_examples, histogram, words}]}`` (a list, so
    that the ``:paper`` protocol's pooling concatenates seeds instead of mixing their features)."""
    chunk = len(world.families) * max(len(v) for v in world.families.values())
    words, word_emb = cards.word_embeddings(model, params, world, chunk)
    picked = {arch: page_features(out[arch]) for arch in saes}
    rows = np.concatenate([np.asarray(saes[a].params["W_dec"])[picked[a]] for a in saes])
    pad = -len(rows) % 16  # a few row counts, so a few compiled readouts serve every world
    shifts = cards.embedding_shift(model, params, test_tokens[:, 0], np.pad(rows, ((0, pad), (0, 0))),
                                   cards.WORDS_ALPHA, scale)
    grid = tuple(model.config.vision_config.grid)
    pages, at, shown = {}, 0, set()
    for arch, sae in saes.items():
        acts = _token_features(sae, test_tokens)  # [N, T, m]
        pages[arch] = []
        for j in picked[arch]:
            top = cards.top_examples(acts[:, :, j], cards.EXAMPLES, test_labels, world.families, grid)
            shown.update(e["index"] for e in top)
            pages[arch].append({"feature": j, "top_examples": top,
                                "histogram": cards.histogram(acts[:, :, j].mean(1), cards.BINS),
                                "words": cards.rank_words(shifts[at], word_emb, words, cards.WORDS)})
            at += 1
    if workdir is not None:
        cards.write_images(Path(workdir), test_x, shown)
    return pages


def run(model, params, world, splits: dict, labels: dict, reps: dict, prompts: dict,
        cfg: ml_collections.ConfigDict, control_cfg: ml_collections.ConfigDict, progress: bool = True,
        workdir=None) -> dict:
    """Every part of the module docstring. ``splits``: ``{split: batch}`` (images under ``image``);
    ``labels``: ``{split: {family: [N]}}``; ``reps``: ``{split: {site: [N, D]}}`` of the vision
    tower (token means, for the eq 6 comparison and the site's scale); ``workdir``: the stage's
    workdir, where the feature pages' example images go (None: computed, not written)."""
    t0 = time.perf_counter()
    site = steering_sites(model, "vision")[0]
    pixels = np.asarray(splits["train"]["image"])
    if cfg.images_per_step > len(pixels):
        raise ValueError(f"features.images_per_step={cfg.images_per_step} exceeds the {len(pixels)} train "
                         "images (identify.num_train)")

    def images(step):
        pick = np.random.default_rng([cfg.seed, step]).choice(len(pixels), cfg.images_per_step, replace=False)
        return {"image": pixels[np.sort(pick)]}

    test_x = np.asarray(splits["test"]["image"])
    batches = site_batches(model, params, "vision", images, (site,), cfg.batch_size, input_key="image",
                           seed=cfg.seed)
    tokens = {s: token_reps(model, params, "vision", KEYS, {"image": np.asarray(b["image"])}, site)
              for s, b in splits.items()}
    d_in = tokens["train"].shape[-1]
    proj = reps["test"]["vision.proj"]
    baseline = {f: float(np.mean(predict(proj, np.asarray(prompts[f])) == np.asarray(labels["test"][f])))
                for f in world.families}
    out: dict = {"site": site, "latents": int(cfg.latents), "k": int(cfg.k), "steps": int(cfg.steps),
                 "baseline_accuracy": baseline, "baseline_mean_accuracy": float(np.mean(list(baseline.values()))),
                 "architectures": {}, "directions": _directions(reps, labels, world, site, cfg)}
    saes = {}
    for arch in cfg.architectures:
        t1 = time.perf_counter()
        (sae,) = train_saes(_sae_config(cfg, arch, d_in), batches, members=[(cfg.latents, cfg.k)],
                            seeds=[cfg.seed], sites=[site], progress=progress)
        trained = time.perf_counter() - t1
        features = {s: _image_features(sae, t) for s, t in tokens.items()}
        test_tokens = tokens["test"].reshape(-1, d_in)
        metrics = evaluate_sae(sae, (test_tokens[i:i + 4096] for i in range(0, len(test_tokens), 4096)))
        spliced = _splice_accuracy(model, params, world, sae, site, test_x, labels["test"], prompts)
        out["architectures"][arch] = {
            **metrics.summary(), **_recovery(features, labels, world, cfg), "spliced_accuracy": spliced,
            "spliced_mean_accuracy": float(np.mean(list(spliced.values()))),
            **_purity(features["test"], labels["test"], cfg), "spurious": _spurious(features, labels, world),
            "train_seconds": round(trained, 1), "final_loss": sae.info["losses"][-1] if sae.info["losses"] else None}
        saes[arch] = sae
    main = cfg.architectures[0]
    test = world.batch(range(control_cfg.num_inputs), split="test")
    scale = site_scale(reps["train"][site])
    out["steering"] = _steering(model, params, world, saes[main], out["architectures"][main], tokens["train"],
                                scale, site, test, prompts, [float(a) for a in control_cfg.table_alphas], cfg)
    t1 = time.perf_counter()
    pages = _pages(model, params, world, saes, out["architectures"], tokens["test"], test_x, labels["test"],
                   scale, workdir)
    for arch, p in pages.items():
        out["architectures"][arch]["feature_pages"] = p
    out["feature_pages"] = {"examples": cards.EXAMPLES, "bins": cards.BINS, "words": cards.WORDS,
                            "prompt": cards.PROMPT, "alpha": cards.WORDS_ALPHA, "scale": float(scale),
                            "seconds": round(time.perf_counter() - t1, 1)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
