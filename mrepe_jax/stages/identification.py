"""The identification stage (paper §3.2.1, Table 1) over streamed batches, for any CLIP-like model.

Per tower and concept family (values ``0..K-1``, label ``-1``: not labelled in that family):

- eq 1 prototypes (the normalised mean of L2-normalised rows) and eq 6 mean-difference directions
  (value vs rest) at every candidate site, from per-value sums accumulated batch by batch over the
  train split (``ClassSums``);
- on the validation and test splits, each example's cosine to every prototype and projection onto
  every direction: ``[N, K]`` per site, so memory grows with the number of values, not with the
  activations' width or the images;
- Table 1 (``table1``): the held-out one-vs-rest AUROC of the prototype similarity, macro-averaged
  over values, at the output embedding (*Baseline*) and at the site chosen on validation (*MRepE*);
  the direction AUROC likewise: the definitions of ``reading.prototypes.identification_score`` and
  ``reading.directions.direction_mean_diff``, computed without holding a split's activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mrepe_jax import sites as sites_lib
from mrepe_jax.reading.activations import collect_activations, tower_apply
from mrepe_jax.reading.prototypes import auroc

Reps = Mapping[str, np.ndarray]  # {site: [B, D]}


def candidate_sites(model, tower: str) -> tuple[str, ...]:
    """Every layer's (or hierarchical block's) ``resid_post`` (token mean), ``pooled`` and
    ``proj``: where MRepE looks."""
    return sites_lib.layer_sites(model.site_names(), tower, "resid_post") + (f"{tower}.pooled", f"{tower}.proj")


def read_batch(model, params, tower: str, batch: Mapping[str, np.ndarray], input_key: str,
               mask_key: str | None = None, sites: Sequence[str] | None = None, mesh=None) -> dict:
    """``{site: [B, D]}`` for one batch at ``sites`` (default ``candidate_sites``); residual sites
    are the mean over real tokens. One compiled program per (model, tower, sites, batch shape)."""
    sites = candidate_sites(model, tower) if sites is None else tuple(sites)
    keys = (input_key,) + ((mask_key,) if mask_key else ())
    return collect_activations(tower_apply(model, tower, input_key, mask_key),
                               [{k: batch[k] for k in keys}], sites, params={"params": params},
                               reduce="mean", mask_key=mask_key, mesh=mesh)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class ClassSums:
    """Per-value sums at one site: ``count [K]``, ``raw [K, D]``, ``unit [K, D]`` and ``norm [K]``
    (sums of the rows, of the L2-normalised rows and of the rows' norms), in float64 so that the
    means equal the whole-array ones."""

    count: np.ndarray
    raw: np.ndarray
    unit: np.ndarray
    norm: np.ndarray

    @classmethod
    def zeros(cls, num_values: int, dim: int) -> ClassSums:
        return cls(np.zeros(num_values, np.int64), np.zeros((num_values, dim)),
                   np.zeros((num_values, dim)), np.zeros(num_values))

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None:
        # One-hot [B, K] (all zero for an unlabelled row): every sum is one matmul per batch.
        onehot = (np.asarray(labels)[:, None] == np.arange(len(self.count))).astype(np.float64)
        rows = np.asarray(rows, np.float64)
        self.count += onehot.sum(0).astype(np.int64)
        self.raw += onehot.T @ rows
        self.unit += onehot.T @ _unit(rows)
        self.norm += onehot.T @ np.linalg.norm(rows, axis=-1)

    def means(self) -> np.ndarray:
        """Each value's mean row, ``[K, D]`` (what activation patching writes)."""
        return (self.raw / np.maximum(self.count, 1)[:, None]).astype(np.float32)

    def mean_norm(self) -> float:
        """The mean L2 norm of the labelled rows (``control.interventions.site_scale``)."""
        return float(self.norm.sum() / max(int(self.count.sum()), 1))

    def prototypes(self) -> np.ndarray:
        """Eq 1's ``prototype_c`` for every value, ``[K, D]``."""
        return _unit(self.unit / np.maximum(self.count, 1)[:, None]).astype(np.float32)

    def directions(self) -> np.ndarray:
        """Eq 6's ``Delta_c`` (value ``c`` vs every other value), unit norm, ``[K, D]``."""
        total_n, total = self.count.sum(), self.raw.sum(0)
        mean_c = self.raw / np.maximum(self.count, 1)[:, None]
        rest = (total[None] - self.raw) / np.maximum(total_n - self.count, 1)[:, None]
        return _unit(mean_c - rest).astype(np.float32)


def check_labels(labels: np.ndarray, num_values: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    bad = labels[(labels < -1) | (labels >= num_values)]
    if bad.size:
        raise ValueError(f"{what}: labels must lie in [-1, {num_values}) (-1: unlabelled), "
                         f"got {np.unique(bad)[:5].tolist()}")
    return labels


def accumulate(sums: dict[str, ClassSums] | None, reps: Reps, labels: np.ndarray,
               num_values: int) -> dict[str, ClassSums]:
    """Folds one batch (``{site: [B, D]}`` and value labels ``[B]``) into per-site ``ClassSums``."""
    labels = check_labels(labels, num_values, "accumulate")
    if sums is None:
        sums = {s: ClassSums.zeros(num_values, r.shape[-1]) for s, r in reps.items()}
    for site, rows in reps.items():
        sums[site].add(rows, labels)
    return sums


@dataclasses.dataclass(frozen=True)
class Readout:
    """What the held-out splits (and steering) need from the train split, per site: prototypes,
    directions and the sums they came from."""

    prototypes: dict[str, np.ndarray]
    directions: dict[str, np.ndarray]
    sums: dict[str, ClassSums]

    @classmethod
    def from_sums(cls, sums: Mapping[str, ClassSums], family: str = "?") -> Readout:
        counts = next(iter(sums.values())).count  # every site saw the same rows
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"family {family!r} has no train examples of value(s) {empty.tolist()}: "
                             "every value needs some")
        return cls({k: s.prototypes() for k, s in sums.items()},
                   {k: s.directions() for k, s in sums.items()}, dict(sums))

    def scores(self, reps: Reps) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{site: (cosine to each prototype [B, K], projection on each direction [B, K])}``."""
        return {s: ((_unit(r) @ self.prototypes[s].T.astype(np.float64)).astype(np.float32),
                    (np.asarray(r, np.float64) @ self.directions[s].T.astype(np.float64)).astype(np.float32))
                for s, r in reps.items() if s in self.prototypes}


def macro_auroc(scores: np.ndarray, labels: np.ndarray, where: str = "the held-out split") -> float:
    """Mean over values ``c`` of the AUROC of ``scores[:, c]`` for "is c" vs "is another value"
    (unlabelled rows, ``-1``, are left out)."""
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep]
    per_value = []
    for c in range(scores.shape[1]):
        pos, neg = scores[labels == c, c], scores[labels != c, c]
        if pos.size == 0 or neg.size == 0:
            raise ValueError(f"value {c} has {pos.size} examples in {where} and {neg.size} of other "
                             "values: AUROC needs both (a larger split would have them)")
        per_value.append(float(auroc(pos, neg)))
    return float(np.mean(per_value))


def concat_scores(chunks: Iterable[Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> dict:
    """Per-batch ``Readout.scores`` stacked over a split."""
    out: dict[str, list] = {}
    for chunk in chunks:
        for site, pair in chunk.items():
            out.setdefault(site, []).append(pair)
    return {s: tuple(np.concatenate(p, 0) for p in zip(*parts)) for s, parts in out.items()}


def table1(scores: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
           labels: Mapping[str, np.ndarray], sites: Sequence[str], baseline_site: str) -> dict:
    """Table 1 figures of one tower and family from the validation and test scores
    (``{split: {site: (similarities, projections)}}``) and labels (``{split: [N]}``): the Baseline
    at ``baseline_site``, MRepE and the direction AUROC at the site best on validation."""
    def score(kind: int, site: str, split: str) -> float:
        return macro_auroc(scores[split][site][kind], labels[split], f"the {split} split")

    best = max(sites, key=lambda s: score(0, s, "validation"))
    best_dir = max(sites, key=lambda s: score(1, s, "validation"))
    return {"baseline": score(0, baseline_site, "test"), "mrepe": score(0, best, "test"),
            "mrepe_site": best, "direction_auroc": score(1, best_dir, "test"),
            "direction_site": best_dir}


def site_aurocs(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                sites: Sequence[str], split: str = "test") -> dict[str, dict[str, float]]:
    """The macro AUROC of one split at every site, in ``sites``' order: ``{"prototype": {site:
    eq 1 prototype similarity's}, "direction": {site: eq 6 direction projection's}}`` (what
    ``table1`` picks its best sites from, shown whole: how a concept's readability grows with depth)."""
    return {kind: {s: macro_auroc(scores[s][k], labels, f"the {split} split") for s in sites}
            for k, kind in enumerate(("prototype", "direction"))}


def stream_identify(read, batches, families: Mapping[str, int], sites: Sequence[str],
                    baseline_site: str, on_batch=None,
                    groups: Mapping[str, Sequence[str]] | None = None) -> tuple[dict, dict[str, Readout]]:
    """Table 1 of one tower over streamed data, in two passes: the train split's sums, then the
    validation and test splits' scores. Holds no split's activations.

    Args:
      read: ``batch -> {site: [B, D]}`` (e.g. ``read_batch`` bound to a model).
      batches: ``split -> iterable of (batch, {family: labels [B]})``, called once per split.
      families: ``{family: number of values}``.
      on_batch: called as ``on_batch(split, batch, reps, labels)`` for every batch (zero-shot
        counts, contrast pairs, ...).
      groups: ``{name: sites}``, subsets of ``sites`` (a model's parts, say): each row then also
        holds ``"parts": {name: table1 row over that part's sites alone}``.
    Returns ``({family: table1 row}, {family: Readout})``.
    """
    def each(split):
        for batch, labels in batches(split):
            reps = read(batch)
            if on_batch is not None:
                on_batch(split, batch, reps, labels)
            yield reps, labels

    sums: dict = {f: None for f in families}
    for reps, labels in each("train"):
        for f, k in families.items():
            sums[f] = accumulate(sums[f], reps, labels[f], k)
    readouts = {}
    for f, s in sums.items():
        if s is None:
            raise ValueError("the train split gave no batches")
        readouts[f] = Readout.from_sums(s, f)
    held_out = ("validation", "test")
    chunks = {(s, f): [] for s in held_out for f in families}
    labels_of = {(s, f): [] for s in held_out for f in families}
    for split in held_out:
        for reps, labels in each(split):
            for f in families:
                chunks[split, f].append(readouts[f].scores(reps))
                labels_of[split, f].append(np.asarray(labels[f]))
    rows = {}
    for f in families:
        scores = {s: concat_scores(chunks[s, f]) for s in held_out}
        lab = {s: np.concatenate(labels_of[s, f]) if labels_of[s, f] else np.zeros(0, np.int32)
               for s in held_out}
        for s in held_out:
            if not scores[s]:
                raise ValueError(f"the {s} split gave no batches")
        try:
            rows[f] = table1(scores, lab, sites, baseline_site)
            if groups:
                rows[f]["parts"] = {g: table1(scores, lab, part, baseline_site) for g, part in groups.items()}
        except ValueError as e:
            raise ValueError(f"family {f!r}: {e}") from e
    return rows, readouts
