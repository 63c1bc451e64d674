"""The ToyWorld pipeline (DESIGN.md §1, §5): train or load the tri-modal CLIP, then run each stage
and write ``results.json`` and ``report.md`` into the workdir. Re-running with the same workdir
resumes: a finished training run is restored from its orbax checkpoint instead of retrained, and
when the config and the trained model are those of the previous run its stage figures are reused
(``reused_stages`` in results.json; delete results.json to recompute them). ``config.seed`` seeds
every random choice (``seeds``; the effective seeds are results.json's ``seeds``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.experiments.toyworld import (
    align,
    captioning,
    control,
    decomposition,
    efficiency,
    features,
    gallery,
    identify,
    paper_protocol,
    safety,
    transfer,
)
from mrepe_jax.experiments.toyworld import seeds as run_seeds
from mrepe_jax.experiments.toyworld.report import document as report
from mrepe_jax.experiments.toyworld.report.control import COLUMNS
from mrepe_jax.models.layers import normalize
from mrepe_jax.models.trimodal.sharding import TRIMODAL_RULES
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.report import html as report_html
from mrepe_jax.report import workdir as workdir_lib
from mrepe_jax.report.progress import StageBar
from mrepe_jax.stages import runtime
from mrepe_jax.train import toyclip, zero_shot
from mrepe_jax.train.toyclip import MAX_LOGIT_SCALE


def train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**config.model.to_dict(), **config.train.to_dict()})


def clip_layout(config, mesh):
    """The CLIP's parameter layout on ``mesh`` from ``config.mesh`` (``stages.runtime.layout``), or
    None where it would split nothing (the params then stay replicated host arrays)."""
    layout = runtime.layout(config.mesh, TRIMODAL_RULES)
    return layout if mesh is not None and layout.splits(mesh) else None


def load_or_train(world: ToyWorld, config, workdir, progress: bool = True, mesh=None):
    """(model, params, info): the cached model when the workdir has a finished run. On a mesh
    that splits the params (``clip_layout``), they come back sharded over it, as trained."""
    t0 = time.perf_counter()
    layout = clip_layout(config, mesh)
    model, fit = toyclip.train(world, train_config(config), workdir / "checkpoints" / "toyclip",
                               progress=progress, mesh=mesh, state_rules=layout)
    seconds = time.perf_counter() - t0
    info = {
        "steps": int(fit.state.step),
        "resumed_from_step": fit.resumed_from,
        "steps_run": len(fit.losses),
        "seconds_this_run": round(seconds, 1),
        "final_loss": float(fit.losses[-20:].mean()) if len(fit.losses) else None,
    }
    return model, parallel.to_host(fit.state.params) if layout is None else fit.state.params, info


def _can_reuse(same_config: bool, previous: dict, results: dict, stages) -> bool:
    same_model = previous.get("training", {}).get("steps") == results["training"]["steps"]
    return (results["training"]["steps_run"] == 0 and same_config and same_model
            and all(k in previous for k in stages))


#: Stages every world and CLIP seed runs.
STAGES = ("zero_shot", "identification", "alignment", "control", "safety", "features", "decomposition")
#: The rest run only where they mean something new. Costs (Table 5): on the main world (the same
#: programs on the hard world's data cost the same); per-model pictures and studies (the patching
#: sweeps, the captioner, transfer across architectures, the concept pages' gallery): on the main
#: world's first CLIP.
COSTS = ("efficiency",)
STUDIES = ("causal", "captioner", "architectures", "gallery")


def stage_names(extra: tuple) -> list[str]:
    """The stages ``_stages`` runs with ``extra``, in order (``reading``: every split's sites)."""
    order = ("reading", "zero_shot", "identification", "causal", "alignment", "control", "safety",
             "features", "decomposition", "efficiency", "captioner", "architectures", "gallery")
    runs = set(STAGES) | set(extra) | {"reading"}
    if "architectures" in extra:  # the transfer study reads the captioner
        runs.add("captioner")
    return [name for name in order if name in runs]


def _stages(model, params, world: ToyWorld, config, workdir, mesh, extra: tuple = COSTS + STUDIES,
            progress: bool = True, label: str = "") -> dict:
    """Zero-shot evaluation, identification (Table 1, directions), alignment (Table 2, transfer),
    steering (Table 3) and safety (Tables 4 and 6); and those of ``COSTS`` and ``STUDIES`` named in
    ``extra``: costs (Table 5), causal effects, the captioner, transfer across architectures.
    ``config``: the seeded config (``run_seeds.apply``); ``label`` prefixes the stage bar."""
    with StageBar(stage_names(extra), label, progress) as bar:
        return _run_stages(model, params, world, config, workdir, mesh, extra, progress, bar.start)


def _run_stages(model, params, world: ToyWorld, config, workdir, mesh, extra: tuple, progress: bool,
                announce) -> dict:
    # The seed of the stages that have no seed field (contrast pairs, bootstrap, permutation tests).
    run_seed = run_seeds.offset(config)
    announce("reading")
    sizes = {"train": config.identify.num_train, "validation": config.identify.num_validation,
             "test": config.eval.num_test}
    # Each process renders (reads) only its rows of each split; labels are cheap and global.
    splits = {s: world.batch(range(n)[parallel.process_rows(n)], split=s) for s, n in sizes.items()}
    labels = {s: world.labels(range(n), s) for s, n in sizes.items()}
    reps = identify.split_reps(model, params, splits, mesh)

    out = {}
    announce("zero_shot")
    embeddings = {t: np.asarray(normalize(r[f"{t}.proj"])) for t, r in reps["test"].items()}
    prompts = zero_shot.prompt_embeddings(model, params, world)
    out["zero_shot"] = zero_shot.zero_shot_accuracy(embeddings, prompts, labels["test"])

    announce("identification")
    t0 = time.perf_counter()
    out["identification"] = identify.identify(model, world, reps, labels)
    if "causal" in extra:
        announce("causal")
        out["causal"] = identify.causal_analysis(
            model, params, world, config.identify.num_pairs, workdir, seed=run_seed,
            towers=config.identify.causal_towers, families=config.identify.causal_families, mesh=mesh,
            n_resamples=config.identify.bootstrap_resamples, progress=progress)
    out["identification"]["seconds"] = round(time.perf_counter() - t0, 1)

    provenance = {"model": "toyworld-clip", "weights_sha256": params_hash(parallel.to_host(params)),
                  "data": f"ToyWorld {dataclasses.asdict(world.config)}, train split rows "
                          f"0..{sizes['train'] - 1}"}
    scale = min(float(np.exp(parallel.to_host(params["logit_scale"]))), MAX_LOGIT_SCALE)
    announce("alignment")
    out["alignment"] = align.run(model, params, world, reps, labels, prompts, scale,
                                          config.align, workdir, mesh, provenance, progress)
    announce("control")
    out["control"] = control.run(model, params, world, reps, splits["train"],
                                          labels["train"], prompts, scale, config.control, workdir)
    announce("safety")
    out["safety"] = safety.run(model, params, world, reps, splits["train"],
                                        labels["train"], prompts, scale, config.control, run_seed)
    announce("features")
    every_row = {s: _all_rows(world, splits, s, n) for s, n in sizes.items()}
    out["features"] = features.run(
        model, params, world, every_row, labels, {s: r["vision"] for s, r in reps.items()}, prompts,
        config.features, config.control, progress, workdir=workdir)
    announce("decomposition")
    out["decomposition"] = decomposition.run(model, params, world, every_row, labels, prompts,
                                             config.decomposition, world.masks(range(sizes["test"]), "test"))
    if "efficiency" in extra:
        announce("efficiency")
        out["efficiency"] = efficiency.run(model, params, world, reps, config.control)
    if "captioner" in extra or "architectures" in extra:  # the transfer study reads the captioner
        announce("captioner")
        pixels = {s: _all_rows(world, splits, s, sizes[s])["image"] for s in ("train", "test")}
        out["captioner"], caption_model = captioning.run(
            world, model, params, pixels["train"], labels["train"], config.captioner, config.control,
            workdir, progress, mesh, test_seed=run_seed)
    if "architectures" in extra:
        announce("architectures")
        out["architectures"] = transfer.run(
            world, model, params, prompts, reps, pixels, labels, caption_model, config,
            train_config(config), workdir, mesh, progress)
    if "gallery" in extra:  # the concept pages' examples (after the captioner, whose captions it shows)
        announce("gallery")
        test = _all_rows(world, splits, "test", sizes["test"])
        out["gallery"] = gallery.run(model, params, world, reps, labels, test, out["identification"], prompts,
                                     config.control, workdir, caption_model if "captioner" in out else None)
    return out


def _all_rows(world: ToyWorld, splits: dict, split: str, n: int) -> dict:
    """Every row of ``split`` (``splits`` hold only this process's rows in a multi-process run)."""
    return splits[split] if jax.process_count() == 1 else world.batch(range(n), split=split)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """The whole pipeline into ``workdir`` (see the module docstring); ``progress``: bars on stderr
    (process 0 only: every process computes the same figures)."""
    workdir = workdir_lib.prepare(workdir)
    progress = progress and parallel.is_primary()
    # results.json keeps the config as written (resuming compares it); the stages run the seeded one.
    results: dict = {"machine": workdir_lib.machine(), "config": config.to_dict(),
                     "seeds": run_seeds.effective(config)}
    config = run_seeds.apply(config)

    mesh = parallel.mesh_from_config(config.mesh)
    results["mesh"] = {"shape": dict(mesh.shape), "processes": jax.process_count()}
    # The mesh is passed to each stage explicitly: under jax.set_mesh (jax 0.10.2), shard_map over
    # this Auto-axis mesh fails ("Context mesh ... should match the mesh of sharding").
    previous = workdir_lib.read_json(workdir / "results.json")
    same_config = previous.get("config") == json.loads(json.dumps(results["config"]))
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    name = report.world_name(config.world.to_dict())
    results.update(_seeded_stages(config, world, workdir, mesh, progress, True, same_config, previous,
                                  f"{name} world"))
    if config.compare_hard:
        # The same stages on the hard world (its own CLIP, in workdir/hard), for Tables 1-2 there.
        hard = ToyWorld(ToyWorldConfig(**{**config.world.to_dict(), **config.hard_world.to_dict()}))
        results["hard"] = _seeded_stages(config, hard, workdir_lib.prepare(workdir / "hard"), mesh,
                                         progress, False, same_config, previous.get("hard", {}),
                                         "hard world")
        results["hard"]["world"] = dataclasses.asdict(hard.config)
        # Inference time and memory are those of the same programs on other data: measured once.
        results["hard"]["efficiency"] = {**results["efficiency"], "measured_on": "default world"}
    workdir_lib.write_json(workdir / "results.json", results)
    markdown = report.render(results)
    workdir_lib.write_text(workdir / "report.md", markdown)
    report_html.write(workdir, markdown, results)  # the same report, interactive, one file
    return results


def _seeded_stages(config, world: ToyWorld, workdir, mesh, progress: bool, main: bool,
                   same_config: bool, previous: dict, label: str = "") -> dict:
    """``_world_stages`` once, or, with ``config.clip_seeds`` (the `:paper` protocol), once per
    retrained CLIP in ``workdir/clip_seed{s}``, pooled by ``paper_protocol.merge``. Plots are the first
    seed's (``plot_dir``); each seed's own figures stay in ``per_clip_seed``. ``main``: the main
    world (``COSTS`` on every seed, ``STUDIES`` on the first)."""
    seeds = [int(s) for s in config.clip_seeds]
    costs = COSTS if main else ()
    if not seeds:
        return _world_stages(config, world, workdir, mesh, progress, costs + (STUDIES if main else ()),
                             same_config, previous, label)
    per_seed = {}
    for i, seed in enumerate(seeds):
        per_seed[str(seed)] = _world_stages(
            paper_protocol.seed_config(config, seed), world,
            workdir_lib.prepare(workdir / f"clip_seed{seed}"), mesh, progress,
            costs + (STUDIES if main and i == 0 else ()),
            same_config, previous.get("per_clip_seed", {}).get(str(seed), {}),
            f"{label}, CLIP seed {seed}")
    out = paper_protocol.merge(list(per_seed.values()))
    for stage in ("alignment", "control", "safety"):
        out[stage] = {**out[stage], "clip_retrained": True}
    return {**out, "clip_seeds": seeds, "plot_dir": f"clip_seed{seeds[0]}/", "per_clip_seed": per_seed}


def _world_stages(config, world: ToyWorld, workdir, mesh, progress: bool, extra: tuple,
                  same_config: bool, previous: dict, label: str = "") -> dict:
    """Training (or its checkpoint), then every stage, or their figures from the ``previous`` run
    when the config and the trained model are unchanged."""
    results: dict = {}
    model, params, results["training"] = load_or_train(world, config, workdir, progress, mesh)
    if results["training"]["steps_run"] == 0 and previous.get("training"):
        # Keep the figures of the run that actually trained the cached model.
        for key in ("trained_in_seconds", "final_loss"):
            results["training"][key] = previous["training"].get(key)
    else:
        results["training"]["trained_in_seconds"] = results["training"]["seconds_this_run"]

    stages = STAGES + extra
    if _can_reuse(same_config, previous, results, stages):
        # Same config, same trained model: the stages' figures (and plots) are already here.
        results.update({k: previous[k] for k in stages}, reused_stages=list(stages))
    else:
        results.update(_stages(model, params, world, config, workdir, mesh, extra, progress, label))
    return results


def _mean(values) -> float:
    return float(np.mean(values))


def summary(results: dict, workdir) -> str:
    """What ``launch.run`` prints at the end: a few headline figures per world (one column each)
    and where the report is. Table 3: per method the best tower's success (mean over seeds) at
    alpha 1.0, when the sweep has it."""
    worlds = [(report.world_name(results["config"]["world"]), results)]
    if "hard" in results:
        worlds.append(("hard", results["hard"]))
    rows: list = []

    def row(label: str, cell):
        rows.append([label] + [cell(r) for _, r in worlds])

    def worst_zero_shot(r):
        acc, tower, family = min((a, t, f) for t, fams in r["zero_shot"].items() for f, a in fams.items())
        return f"{acc:.3f} ({tower} {family})"

    def ident(method):
        return lambda r: f"{_mean([v for t in r['identification'][method].values() for v in t.values()]):.3f}"

    def cmc(method):
        def cell(r):
            table2 = r.get("alignment", {}).get("cmc", {})
            return f"{_mean([_mean(row[method]) for row in table2.values()]):.3f}" if table2 else "-"
        return cell

    row("worst zero-shot accuracy", worst_zero_shot)
    row("Table 1 Baseline (mean AUROC)", ident("baseline"))
    row("Table 1 MRepE (mean AUROC)", ident("mrepe"))
    row("Table 2 CMC Baseline", cmc("baseline"))
    row("Table 2 CMC MRepE", cmc("mrepe"))
    towers = [t for _, r in worlds for t in r.get("control", {}).get("towers", {}).values()]
    if any("1.0" in t[m]["success"] for t in towers for m, _ in COLUMNS):
        for method, name in COLUMNS:
            def best(r, method=method):
                cells = [(_mean(t[method]["success"]["1.0"]), tower)
                         for tower, t in r.get("control", {}).get("towers", {}).items()
                         if "1.0" in t[method]["success"]]
                return "{:.3f} ({})".format(*max(cells)) if cells else "-"
            row(f"Table 3 {name} success @ alpha 1.0", best)
    header = ["ToyWorld"] + [f"{name} world" for name, _ in worlds]
    widths = [max(len(str(x[k])) for x in [header] + rows) for k in range(len(header))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header] + rows]
    return "\n".join(lines + [f"report: {os.path.join(os.fspath(workdir), 'report.md')}"])
