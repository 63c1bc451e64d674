"""Concept galleries for report.html's concept pages (issue 28), main world only: what a concept's
eq 6 direction picks out, and what adding it (eq 5) changes, example by example.

- Extremes: per tower, family and value, the test examples whose token-mean
  representation projects highest and lowest onto the value's eq 6 direction (value vs the
  family's other values, train split) at the family's best direction site (Table 1's
  ``direction_site``), and per example each token's projection onto the eq 6 direction at
  ``heat_site``: that site when it is a layer's residual stream, else the tower's last layer's
  (``pooled`` and ``proj`` have no tokens). The vision and audio towers' tokens are CLS, then the
  patches row-major (``patch_matmul``), so the heat is a ``[rows, cols]`` grid over the image (or
  the log-mel spectrogram the audio tower reads: time frames down, mel bands across) plus the CLS
  token's value; its token-mean projection is ``(cls + sum(grid)) / (1 + rows * cols)``. The text
  tower's heat is one value per real token.
- Steering (eq 5): per value, ``Add`` of ``alpha x site_scale x unit(Delta_c)`` on every token at
  Table 3's site (the tower's last ``resid_post``), on the test inputs Table 3 steers: the inputs
  whose zero-shot prediction of the family moves to the value (label before -> after), and the
  share that moves (Table 3's success). With the captioner (``captioning``), the greedy captions
  of a few test images before and after the same step at its Q-Former site.

Thumbnails are written with ``report.images.save_png`` under ``workdir/gallery/concepts/``
(process 0 only), one per tower and test row shown: the image, or the clip's spectrogram in grey
on one scale for every clip (so loudness shows); results hold paths relative to ``workdir``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from mrepe_jax import sites as sites_lib
from mrepe_jax.control.captions import AddAt, steered_captions
from mrepe_jax.control.evaluate import DirectEdits, steered_predictions, success_rate
from mrepe_jax.control.interventions import site_scale
from mrepe_jax.experiments.toyworld import captioning
from mrepe_jax.experiments.toyworld.identify import TOWERS
from mrepe_jax.models.trimodal.model import log_mel_features
from mrepe_jax.reading.activations import collect_activations, tower_apply
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.report.images import save_png
from mrepe_jax.stages import identification
from mrepe_jax.stages.reads import every_token
from mrepe_jax.stages.steering import last_resid
from mrepe_jax.train import captioner

#: Examples per side (top, bottom) of each value; inputs shown per steering target; captioned images.
PER_SIDE, STEERED, CAPTIONED = 4, 3, 2
#: The towers shown, and those whose inputs are drawn as thumbnails with a patch grid.
SHOWN, GRIDDED = ("vision", "text", "audio"), ("vision", "audio")
FOLDER = "gallery/concepts"
# Module level, the config static: one compiled program per process.
_log_mel = jax.jit(log_mel_features, static_argnums=(1, 2, 3))


def value_directions(reps: np.ndarray, labels: np.ndarray, num_values: int) -> np.ndarray:
    """Eq 6's ``Delta_c`` of every value (vs the family's other values), unit norm, ``[K, D]``:
    identification's own (``ClassSums.directions``), so the AUROCs on the page are of these."""
    sums = identification.accumulate(None, {"site": reps}, labels, num_values)
    return identification.Readout.from_sums(sums).directions["site"]


def heat_site(model, tower: str, site: str) -> str:
    """``site`` if it is a layer's residual stream (it has tokens), else the tower's last layer's."""
    layers = sites_lib.layer_sites(model.site_names(), tower, "resid_post")
    return site if site in layers else layers[-1]


def extremes(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``n`` highest ``scores`` (highest first) and the ``n`` lowest (lowest first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[:n], order[::-1][:n]


def patch_grid(token_proj: np.ndarray, grid: tuple[int, int]) -> tuple[float, np.ndarray]:
    """A vision input's per-token projections ``[1 + rows * cols]`` (CLS first, then patches
    row-major) as ``(cls, [rows, cols])``."""
    rows, cols = grid
    token_proj = np.asarray(token_proj)
    if token_proj.shape != (1 + rows * cols,):
        raise ValueError(f"patch_grid: expected 1 + {rows} x {cols} token projections (CLS first), "
                         f"got shape {token_proj.shape}")
    return float(token_proj[0]), token_proj[1:].reshape(rows, cols)


def moved_rows(before: np.ndarray, after: np.ndarray, truth: np.ndarray, target: int, n: int) -> np.ndarray:
    """The first ``n`` inputs of another true value whose prediction was not ``target`` and is
    now: the examples of a steering success."""
    hit = (np.asarray(truth) != target) & (np.asarray(before) != target) & (np.asarray(after) == target)
    return np.flatnonzero(hit)[:n]


def read_tokens(model, params, tower: str, batch: dict, rows, site: str, chunk: int = 64) -> np.ndarray:
    """``site`` at every token of ``batch``'s ``rows``, ``[len(rows), T, D]``, ``chunk`` rows at a
    time (the rows padded with copies of the first: one program for any number of rows)."""
    input_key, mask_key = TOWERS[tower]
    keys = [input_key] + ([mask_key] if mask_key else [])
    rows = np.asarray(rows, np.int64)
    padded = np.concatenate([rows, np.full(-len(rows) % chunk, rows[0])])
    batches = ({k: np.asarray(batch[k])[padded[s:s + chunk]] for k in keys} for s in range(0, len(padded), chunk))
    return collect_activations(tower_apply(model, tower, input_key, mask_key), batches, (site,),
                               params={"params": params}, reduce=every_token,
                               mask_key=mask_key)[site][:len(rows)]


def _r(x) -> float:
    return round(float(x), 4)


class Thumbnails:
    """Test inputs written once each as PNGs, ``gallery/concepts/{tower}_{row}.png`` (relative to
    ``workdir``): images as they are, audio clips as the tower's log-mel input ``[frames, mels]``
    in grey, one scale for every clip (the 1st to 99th percentile of the split's values)."""

    def __init__(self, workdir, model, test: dict, chunk: int = 256):
        self.workdir, self.model, self.test, self.chunk = Path(workdir), model, test, chunk
        self.written: set = set()
        self.spectra: np.ndarray | None = None

    def _spectrogram(self, row: int) -> np.ndarray:
        if self.spectra is None:  # every clip once, in chunks of one shape (the last padded): one program
            c, waves = self.model.config, np.asarray(self.test["audio"])
            n = len(waves)
            rows = np.concatenate([np.arange(n), np.zeros(-n % self.chunk, np.int64)])
            spectra = np.concatenate([np.asarray(_log_mel(waves[rows[s:s + self.chunk]], c.log_mel, c.log_mel_shift,
                                                          c.log_mel_scale))[..., 0]
                                      for s in range(0, len(rows), self.chunk)])[:n]
            lo, hi = np.percentile(spectra, [1, 99])
            # uint8 here: save_png would stretch a float spectrogram to its own range.
            scaled = np.clip((spectra - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
            self.spectra = (scaled * 255 + 0.5).astype(np.uint8)
        return self.spectra[row]

    def __call__(self, tower: str, row: int) -> str:
        rel = f"{FOLDER}/{tower}_{int(row):05d}.png"
        if (tower, row) not in self.written:
            picture = self._spectrogram(row) if tower == "audio" else np.asarray(self.test["image"])[row]
            save_png(self.workdir / rel, picture)
            self.written.add((tower, row))
        return rel


def _tokens(world, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    vocab = world.tokenizer.vocabulary
    return [vocab[int(i)] for i, m in zip(ids, mask) if m]


def tower_extremes(model, params, world, tower: str, reps: dict, labels: dict, test: dict, family: str,
                   site: str, thumbs: Thumbnails, per_side: int = PER_SIDE) -> dict:
    """One tower and family's extremes (module docstring): ``{"site", "heat_site", ["grid"],
    "values": {value: {"top" | "bottom": [example]}}}``; an example holds its test ``index``,
    ``truth`` (the family's true value), ``score`` (projection at ``site``), ``token_mean`` (the
    token-mean's projection at ``heat_site``) and ``heat``: a vision or audio ``[rows, cols]`` grid
    (with ``cls`` and ``image``, a thumbnail's workdir path) or a caption's per-token list (with
    ``tokens``)."""
    values = world.families[family]
    hsite = heat_site(model, tower, site)
    y_train, truth = np.asarray(labels["train"][family]), np.asarray(labels["test"][family])
    rank = value_directions(reps["train"][tower][site], y_train, len(values))
    heat = value_directions(reps["train"][tower][hsite], y_train, len(values))
    scores = np.asarray(reps["test"][tower][site], np.float64) @ rank.T.astype(np.float64)  # [N, K]
    picks = {c: extremes(scores[:, c], per_side) for c in range(len(values))}
    rows = np.unique(np.concatenate([np.concatenate(p) for p in picks.values()]))
    tokens = dict(zip(rows.tolist(), read_tokens(model, params, tower, test, rows, hsite)))
    _, mask_key = TOWERS[tower]
    out: dict = {"site": site, "heat_site": hsite, "values": {}}
    if tower in GRIDDED:
        grid = tuple(getattr(model.config, f"{tower}_config").grid)
        out["grid"] = list(grid)
    for c, value in enumerate(values):
        sides = {}
        for side, chosen in zip(("top", "bottom"), picks[c]):
            examples = []
            for row in chosen.tolist():
                proj = tokens[row].astype(np.float64) @ heat[c].astype(np.float64)  # [T]
                ex = {"index": row, "truth": values[truth[row]] if truth[row] >= 0 else None,
                      "score": _r(scores[row, c])}
                if tower in GRIDDED:
                    cls, cells = patch_grid(proj, grid)
                    ex.update(image=thumbs(tower, row), cls=_r(cls), token_mean=_r(proj.mean()),
                              heat=[[_r(v) for v in r] for r in cells])
                else:
                    real = np.asarray(test[mask_key][row]).astype(bool)
                    ex.update(tokens=_tokens(world, test[TOWERS[tower][0]][row], real),
                              heat=[_r(v) for v in proj[real]], token_mean=_r(proj[real].mean()))
                examples.append(ex)
            sides[side] = examples
        out["values"][value] = sides
    return out


def steering_examples(model, params, world, tower: str, reps: dict, labels: dict, test: dict,
                      prompts: dict, alpha: float, thumbs: Thumbnails, n: int = STEERED) -> dict:
    """Eq 5 at Table 3's site of ``tower`` toward every value, on ``test``'s inputs:
    ``{"site", "scale", "families": {family: {value: {"success", "unedited", "examples": [{"index",
    "truth", "before", "after", "image" | "tokens"}]}}}}``; ``success``: Table 3's (among inputs
    of other values, the share now predicted as the value), ``unedited``: that share unedited,
    ``examples``: inputs whose label moved to the value (before -> after)."""
    site = last_resid(model, tower)
    train = reps["train"][tower][site]
    targets = [(f, c) for f, values in world.families.items() for c in range(len(values))]
    deltas = [np.zeros(train.shape[1], np.float32)]
    for family, values in world.families.items():
        deltas += list(value_directions(train, np.asarray(labels["train"][family]), len(values)))
    scale = site_scale(train)
    eq5 = {"delta": np.stack(deltas).astype(np.float32),
           "alpha": np.asarray([0.0] + [alpha] * len(targets), np.float32),
           "scale": np.full(len(deltas), scale, np.float32)}
    input_key, mask_key = TOWERS[tower]
    preds = steered_predictions(model, {"params": params}, tower, test[input_key],
                                test[mask_key] if mask_key else None, DirectEdits(site), eq5, prompts)
    out: dict = {"site": site, "scale": _r(scale), "families": {}}
    for k, (family, c) in enumerate(targets, start=1):
        values, truth = world.families[family], np.asarray(test["labels"][family])
        before, after = preds[family][0], preds[family][k]
        examples = []
        for row in moved_rows(before, after, truth, c, n).tolist():
            ex = {"index": row, "truth": values[truth[row]], "before": values[before[row]],
                  "after": values[after[row]]}
            if tower in GRIDDED:
                ex["image"] = thumbs(tower, row)
            else:
                ex["tokens"] = _tokens(world, test[input_key][row], np.asarray(test[mask_key][row]).astype(bool))
            examples.append(ex)
        out["families"].setdefault(family, {})[values[c]] = {
            "success": _r(success_rate(after, truth, c)), "unedited": _r(success_rate(before, truth, c)),
            "examples": examples}
    return out


def caption_examples(world, caption_model, clip_model, clip_params, train_labels: dict, test: dict,
                     alpha: float, thumbs: Thumbnails, n: int = CAPTIONED) -> dict:
    """The captioner's greedy captions of ``test``'s images before and after eq 5 toward every
    value at its Q-Former site (``captioning.site``; ``alpha`` in units of the site's mean norm),
    as ``{"site", "families": {family: {value: {"success", "unedited", "examples": [{"index",
    "image", "truth", "before", "after"}]}}}}``: ``success`` / ``unedited``: the share of other-value
    images whose caption names the value (and no other of its family) after / before; examples:
    images whose caption moved to it (else the first ones of other values).
    ``caption_model``: the captioning stage's ``(model, params, train reads)``."""
    model, params, reads = caption_model
    scale = site_scale(reads)
    deltas, targets = [np.zeros(reads.shape[1], np.float32)], []
    for family, values in world.families.items():
        y = np.asarray(train_labels[family])
        for c in range(len(values)):
            d = np.asarray(direction_mean_diff(reads[y == c], reads[y != c]))
            deltas.append(d / np.linalg.norm(d))
            targets.append((family, c))
    steps = np.asarray([0.0] + [alpha * scale] * len(targets), np.float32)
    # The captioning stage's images, edit and chunk: its compiled decode program serves these too.
    ids = steered_captions(model, params, captioner.vision_states(clip_model, clip_params, test["image"]),
                           AddAt(captioning.site(model)), {"delta": np.stack(deltas).astype(np.float32),
                                                           "alpha": steps}, world.config.max_len - 1)
    said = captioner.named_values(world, ids)
    out: dict = {"site": captioning.site(model), "families": {}}
    for k, (family, c) in enumerate(targets, start=1):
        values, truth = world.families[family], np.asarray(test["labels"][family])
        rows = moved_rows(said[family][0], said[family][k], truth, c, n)
        others = np.flatnonzero(truth != c)
        rows = rows if len(rows) else others[:n]
        examples = [{"index": int(r), "image": thumbs("vision", int(r)), "truth": values[truth[r]],
                     "before": captioner.decode(world, ids[0, r]), "after": captioner.decode(world, ids[k, r])}
                    for r in rows]
        out["families"].setdefault(family, {})[values[c]] = {
            "success": _r(success_rate(said[family][k], truth, c)),
            "unedited": _r(success_rate(said[family][0], truth, c)), "examples": examples}
    return out


def run(model, params, world, reps: dict, labels: dict, test: dict, identification_results: dict,
        prompts: dict, control, workdir, caption_model=None) -> dict:
    """The gallery (module docstring) into ``results["gallery"]``.

    Args:
      reps: ``identify.split_reps`` (every row of every split); ``labels``: ``{split: {family: [N]}}``.
      test: every row of the test split (``world.batch``), as ``reps["test"]`` holds them.
      identification_results: ``identify.identify``'s (its ``direction_site``).
      control: the steering config (``num_inputs``: the inputs steered, ``table_alphas``: the
        largest is the step).
      caption_model: the captioning stage's ``(model, params, train reads)``, or None (no captions).
    """
    t0 = time.perf_counter()
    thumbs = Thumbnails(workdir, model, test)
    alpha = float(max(control.table_alphas))
    steered = {k: (v[:control.num_inputs] if k != "labels" else {f: y[:control.num_inputs] for f, y in v.items()})
               for k, v in test.items() if k in ("image", "input_ids", "attention_mask", "audio", "labels")}
    out: dict = {"per_side": PER_SIDE, "towers": {}}
    for tower in SHOWN:
        out["towers"][tower] = {
            family: tower_extremes(model, params, world, tower, reps, labels, test, family,
                                   identification_results["direction_site"][tower][family], thumbs)
            for family in world.families}
    out["steering"] = {"alpha": alpha, "num_inputs": int(control.num_inputs), "towers": {
        tower: steering_examples(model, params, world, tower, reps, labels, steered, prompts, alpha, thumbs)
        for tower in SHOWN}}
    if caption_model is not None:
        out["steering"]["captions"] = caption_examples(world, caption_model, model, params,
                                                       labels["train"], steered, alpha, thumbs)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
