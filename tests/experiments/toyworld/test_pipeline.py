"""The ToyWorld pipeline end to end on the tiny config: files written, resumed on a re-run, and
the same figures from BUILD.md's multi-host command run as two local processes, and on a
(data, model) mesh of 8 virtual devices with the CLIP sharded over model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.multiprocess import finish, launch_two
from tests.tiny_run import run_tiny_toyworld
from tests.xla_flags import with_compile_flags

ROOT = Path(__file__).resolve().parents[3]


def run(workdir, *flags):
    return run_tiny_toyworld(workdir, *flags, timeout=600)


@pytest.fixture(scope="module")
def single(tiny_toyworld):
    """The single-process run's workdir and its process (the session's shared tiny run)."""
    return tiny_toyworld.workdir, tiny_toyworld


def test_pipeline_writes_results_and_report(single):
    workdir, proc = single
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["training"]["steps"] == 4 and results["training"]["steps_run"] == 4
    # Run seed 0: every seed as the config writes it (experiments/toyworld/seeds.py).
    assert results["seeds"] == {"run": 0, "offset": 0, "world": 0, "clip": 0, "align": [0, 1],
                                "control": [0], "captioner": 0, "transfer_clip": 1, "causal": 0,
                                "permutation_tests": 0, "features": 0, "decomposition": 0}
    # Each stage announces itself on the stage bar; the launcher prints the summary table.
    for stage in ("identification", "causal", "alignment", "control", "safety", "captioner",
                  "architectures"):
        assert f"default world: {stage}" in proc.stderr, stage
    assert "worst zero-shot accuracy" in proc.stdout and f"report: {workdir}/report.md" in proc.stdout
    assert len(list((workdir.parent / "compile_cache").glob("*-cache"))) > 50  # the run's programs
    assert set(results["zero_shot"]) == {"vision", "text", "audio"}
    for modality in results["zero_shot"].values():
        assert set(modality) == {"colour", "shape", "size", "position", "emblem"}
        assert all(0.0 <= a <= 1.0 for a in modality.values())
    for key in ("baseline", "mrepe", "direction_auroc"):
        assert set(results["identification"][key]) == {"vision", "text", "audio"}
    report = (workdir / "report.md").read_text()
    assert "Table 1: representation identification" in report and "| ToyWorld CLIP + MRepE |" in report
    assert (workdir / "patching_vision_colour_layer_position.png").stat().st_size > 1000
    alignment = results["alignment"]
    assert set(alignment["cmc"]) == set(alignment["transfer"]) == {"Text-Image", "Text-Audio", "Image-Audio"}
    for row in alignment["cmc"].values():
        assert 0.0 <= row["baseline"] <= 1.0 and len(row["mrepe"]) == 2 and 0 < row["p_value"] <= 1
        assert {"linear", "procrustes", "anchors_data"} <= set(row)
    for row in alignment["transfer"].values():
        assert {"native", "mrepe", "linear", "procrustes", "no map", "random"} == set(row)
    for title in ("Table 2: cross-modal consistency (CMC, eq 8) — default world",
                  "Transfer: a concept found in modality i, used in modality j — default world"):
        assert f"## {title}" in report
    assert "| Text-Image |" in report and "| Image-Audio |" in report
    assert (workdir / "align_learning_curves.png").stat().st_size > 1000
    control = results["control"]
    assert set(control["towers"]) == {"vision"} and control["alphas"] == [1.0]
    for tower in control["towers"].values():
        assert set(tower) == {"none", "ap", "direct", "attention", "combined", "ft", "member_fraction",
                              "seconds"}
        assert 0.0 <= tower["member_fraction"] <= 1.0
        for method in ("none", "ap", "direct", "attention", "combined", "ft"):
            for key in ("success", "collateral"):
                assert len(tower[method][key]["1.0"]) == 1 and 0 <= tower[method][key]["1.0"][0] <= 1
    assert "## Table 3: intervention success rates — default world" in report
    feats = results["features"]
    assert feats["site"] == "vision.layers.0.resid_post" and set(feats["architectures"]) == {"topk", "jumprelu"}
    for r in feats["architectures"].values():
        assert 0 <= r["recovery"] <= 1 and 0 <= r["purity"] <= 1 and 0 <= r["fvu"] and r["l0"] > 0
        assert set(r["per_value"]) == set(results["zero_shot"]["vision"])  # every family
        assert r["spurious"] is None  # the default world has no shortcut
        assert set(r["spliced_accuracy"]) == set(feats["baseline_accuracy"]) and 0 <= r["spliced_mean_accuracy"] <= 1
    assert feats["baseline_accuracy"] == pytest.approx(results["zero_shot"]["vision"])
    assert feats["architectures"]["topk"]["l0"] <= 4  # k
    assert set(feats["steering"]["add"]["success"]) == {"1.0"} and 0 <= feats["steering"]["clamp"]["success"] <= 1
    assert "## Sparse-autoencoder features — default world" in report
    assert "| FT | SAE feature |" in report  # Table 3's column
    # The feature pages' data (report.html, issue 28): per architecture, each value's best feature
    # with its top test images (PNGs in the workdir, activation-sorted, CLS + 4 x 4 patches), a
    # histogram of every test image, words both ways; each target's own steering in Table 3's mean.
    for r in feats["architectures"].values():
        pages = {c["feature"]: c for c in r["feature_pages"]}
        assert set(pages) == {b["feature"] for fam in r["per_value"].values() for b in fam.values()}
        for c in pages.values():
            acts = [e["activation"] for e in c["top_examples"]]
            assert len(acts) == 6 and acts == sorted(acts, reverse=True)
            assert all(np.shape(e["heat"]) == (4, 4) for e in c["top_examples"])
            assert all((workdir / e["image"]).is_file() for e in c["top_examples"])
            assert sum(c["histogram"]["counts"]) == c["histogram"]["n"] == 64  # eval.num_test
            assert len(c["words"]["top"]) == len(c["words"]["bottom"]) == 8
    own = feats["steering"]["per_value"]
    assert np.mean([v["add"]["success"]["1.0"] for fam in own.values() for v in fam.values()]) == pytest.approx(
        feats["steering"]["add"]["success"]["1.0"][0])
    assert np.mean([v["clamp"]["collateral"] for fam in own.values() for v in fam.values()]) == pytest.approx(
        feats["steering"]["clamp"]["collateral"])
    dec = results["decomposition"]
    assert dec["sum_error"] <= 1e-5 * max(1.0, dec["embedding_scale"])
    assert [(h["layer"], h["head"]) for h in dec["heads"]] == [(0, 0), (0, 1)]
    assert all(len(h["texts"]) == 3 and h["family"] == h["texts"][0].split("=")[0] for h in dec["heads"])
    assert set(dec["ablation"]) >= {"none", "head 0.0", "head 0.1", "attention 0", "mlp 0"}
    assert dec["ablation"]["none"] == results["zero_shot"]["vision"]  # nothing ablated: the model
    assert "## Where the image embedding comes from — default world" in report
    seg = dec["segmentation"]
    assert set(seg) == {"decomposition (TextSpan)", "last-layer tokens", "attention rollout",
                        "all background (reference)"}
    assert all(0 <= v["pixel_accuracy"] <= 1 and 0 <= v["miou"] <= 1 for v in seg.values())
    assert seg["all background (reference)"]["pixel_accuracy"] > 0.5  # objects are small
    safety = results["safety"]["towers"]
    assert set(safety) == {"vision"} and "ar" in safety["vision"]
    for tower in safety.values():
        for metric in ("scr", "vas", "harmful"):
            assert 0 <= tower[metric]["baseline"] <= 1 and len(tower[metric]["mrepe"]) == 1
            assert 0 < tower[metric]["p_value"] <= 1
    assert (workdir / "steering_dose_response.png").stat().st_size > 1000
    assert "## Table 4: safety and alignment metrics — default world" in report
    for title in ("Table 5: computational efficiency", "Table 6: ablation", "Claims"):
        assert f"## {title} — default world" in report
    assert "| Overall Safety Score |" in report and "| w/o Representation ID |" in report
    costs = results["efficiency"]["towers"]["vision"]
    for method in ("mrepe", "ap", "ft"):
        assert costs["inference_ratio"][method] > 0 and costs["memory_ratio"][method] > 0
    # eq 5 + 7 edits add to the forward's program; AP's readout mask is an argument, so the
    # encoder below it still runs and its program holds at least the plain forward's buffers.
    assert costs["peak_bytes"]["mrepe"] > costs["peak_bytes"]["none"]
    assert costs["peak_bytes"]["ap"] >= costs["peak_bytes"]["none"]
    assert "hard" not in results  # the tiny config leaves it out; see the slow test below
    # The saved eq 4 maps load back and know where they belong.
    from mrepe_jax.align.mapped import load_map

    phi = load_map(workdir / "maps" / "text_to_vision_proj_seed1")
    assert (phi.source_site, phi.target_site, phi.info["seed"]) == ("text.proj", "vision.proj", 1)

    # The captioner: trained, scored, steered (Table 3 row) and made safe (Table 4 rows).
    cap = results["captioner"]
    assert cap["training"]["steps"] == 4 and cap["site"] == "qformer.layers.0.resid_post"
    assert set(cap["caption_accuracy"]) == {"colour", "shape", "size", "position", "emblem"}
    assert all(0 <= a <= 1 for a in cap["caption_accuracy"].values()) and len(cap["examples"]) == 5
    for method in ("none", "direct"):
        for key in ("success", "collateral"):
            assert len(cap["steering"][method][key]["1.0"]) == 1
            assert 0 <= cap["steering"][method][key]["1.0"][0] <= 1
    for metric in ("scr", "harmful"):
        assert 0 <= cap["safety"][metric]["baseline"] <= 1 and len(cap["safety"][metric]["mrepe"]) == 1
    assert (workdir / "checkpoints" / "captioner").is_dir()
    assert "## The ToyWorld captioner: held-out caption accuracy" in report
    assert "| ToyWorld captioner, Q-Former (captions) |" in report
    # Transfer across architectures: the CLIP, a second CLIP of another width, the captioner.
    arch = results["architectures"]
    # (the tiny config's second CLIP has the first one's shapes and another seed: all 16 wide)
    assert arch["models"]["clip_b"]["hidden_size"] == arch["models"]["clip"]["hidden_size"] == 16
    assert arch["models"]["clip_b"]["weights_sha256"] != arch["models"]["clip"]["weights_sha256"]
    assert (workdir / "checkpoints" / "toyclip_b").is_dir()
    assert set(arch["pairs"]) == {"clip->clip_b", "clip_b->clip", "clip->captioner", "captioner->clip"}
    for scores in arch["pairs"].values():
        assert set(scores) == {"native", "procrustes", "mrepe", "random", "no map"}
        assert len(scores["mrepe"]["auroc"]) == 2 and len(scores["mrepe"]["success"]["1.0"]) == 2
        assert all(0 <= a <= 1 for r in scores.values() for a in r["auroc"] + r["success"]["1.0"])
    assert "## Transfer across architectures" in report and "| CLIP → Captioner | eq 4 map |" in report
    assert "At alpha 1.0, the eq 4 map against Procrustes: CLIP → CLIP-B: " in report

    assert "reused_stages" not in results


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _cmc_by_hand(e_i, e_j, prompts: dict, scale: float) -> float:
    """Eq 8 transcribed in numpy (float64): ``1 - JSD`` in bits between the zero-shot softmaxes
    at ``scale`` of paired embeddings, averaged over the families and the pairs."""
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def kl_bits(a, m):  # sum of a log2(a / m), with 0 log 0 = 0
        return np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / m), 0), -1)

    sims = []
    for p in prompts.values():
        p = unit(np.asarray(p, np.float64))
        f_i, f_j = (_softmax(scale * unit(np.asarray(e, np.float64)) @ p.T) for e in (e_i, e_j))
        m = (f_i + f_j) / 2
        sims.append(1 - (kl_bits(f_i, m) + kl_bits(f_j, m)) / 2)
    return float(np.mean(sims))


def test_saved_clip_and_maps_give_back_the_reported_cmc_and_zero_shot_accuracy(single, tmp_path):
    """Figures recomputed from the run's artifacts, outside the stages: the CLIP restored from its
    checkpoint (copied: the shared workdir stays as the run left it), the test split encoded
    afresh, eq 8 by hand, the saved Text-Image eq 4 maps applied; against results.json."""
    import shutil

    import jax

    from configs.toyworld import get_config
    from mrepe_jax.align.mapped import load_map
    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.experiments.toyworld import pipeline
    from mrepe_jax.experiments.toyworld import seeds as run_seeds
    from mrepe_jax.train.toyclip import MAX_LOGIT_SCALE
    from mrepe_jax.train.zero_shot import prompt_embeddings

    workdir = single[0]
    results = json.loads((workdir / "results.json").read_text())
    assert json.loads(json.dumps(get_config("tiny").to_dict())) == results["config"]
    config = run_seeds.apply(get_config("tiny"))
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    shutil.copytree(workdir / "checkpoints" / "toyclip", tmp_path / "checkpoints" / "toyclip")
    model, params, info = pipeline.load_or_train(world, config, tmp_path, progress=False)
    assert info["steps_run"] == 0 and info["steps"] == results["training"]["steps"]  # restored, not retrained
    n = config.eval.num_test
    batch, labels = world.batch(range(n), split="test"), world.labels(range(n), "test")
    encode = jax.jit(lambda tower, *x: model.apply({"params": params}, tower, *x, method="encode")[0],
                     static_argnums=0)  # the {tower}.proj sites: jit'd, seconds faster than eager
    emb = {"vision": np.asarray(encode("vision", batch["image"])),
           "text": np.asarray(encode("text", batch["input_ids"], batch["attention_mask"]))}
    prompts = prompt_embeddings(model, params, world)
    for family in ("colour", "shape"):
        pred = np.argmax(emb["vision"] @ prompts[family].T, -1)
        assert results["zero_shot"]["vision"][family] == pytest.approx(np.mean(pred == labels[family]), abs=1e-9)
    scale = min(float(np.exp(params["logit_scale"])), MAX_LOGIT_SCALE)
    row = results["alignment"]["cmc"]["Text-Image"]
    assert row["baseline"] == pytest.approx(_cmc_by_hand(emb["text"], emb["vision"], prompts, scale), abs=1e-5)
    for k, seed in enumerate(results["alignment"]["seeds"]):
        phi = load_map(workdir / "maps" / f"text_to_vision_proj_seed{seed}")
        mapped = np.asarray(phi(emb["text"], site="text.proj"))
        assert row["mrepe"][k] == pytest.approx(_cmc_by_hand(mapped, emb["vision"], prompts, scale), abs=1e-5)


@pytest.mark.slow
def test_a_rerun_resumes_and_reuses_the_figures(single):
    """Slow (~20 s on top of the shared run): ``make test-slow``. The hard-world test below
    resumes too; this is the default world's every stage."""
    workdir, _ = single
    results = json.loads((workdir / "results.json").read_text())
    again = run(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((workdir / "results.json").read_text())
    assert resumed["training"]["steps_run"] == 0 and resumed["training"]["resumed_from_step"] == 4
    assert resumed["training"]["trained_in_seconds"] == results["training"]["trained_in_seconds"]
    # Same config, same model: the stages' figures are reused, not recomputed.
    stages = ["zero_shot", "identification", "alignment", "control", "safety", "features", "decomposition"]
    assert resumed["reused_stages"] == stages + ["efficiency", "causal", "captioner", "architectures", "gallery"]
    assert resumed["identification"] == results["identification"]
    assert resumed["alignment"] == results["alignment"]
    assert resumed["architectures"] == results["architectures"]


HARD_TITLES = ("ToyWorld CLIP: held-out zero-shot accuracy — hard world",
               "Table 1: representation identification — hard world",
               "Table 2: cross-modal consistency (CMC, eq 8) — hard world",
               "Transfer: a concept found in modality i, used in modality j — hard world",
               "Table 3: intervention success rates — hard world",
               "Table 4: safety and alignment metrics — hard world",
               "Table 5: computational efficiency — hard world", "Table 6: ablation — hard world",
               "Claims — hard world", "Default vs hard world")


def report_section(report: str, title: str) -> str:
    """The text of the report's section ``## {title}``, up to the next ``## `` heading."""
    start = report.index(f"## {title}\n")
    end = report.find("\n## ", start + 1)
    return report[start:] if end < 0 else report[start:end]


def test_the_report_renders_the_hard_world_beside_the_default(single):
    """The hard world gets figures of its own (a perturbed copy of the default's), and each shows
    in the hard world's sections, not the default's, and the default's stay where they were."""
    import copy

    from mrepe_jax.experiments.toyworld.report import document as toyworld_report

    results = json.loads((single[0] / "results.json").read_text())
    hard = copy.deepcopy({k: results[k] for k in ("training", "zero_shot", "identification", "alignment",
                                                  "control", "safety", "efficiency")})
    hard["training"]["steps"] = 77
    hard["zero_shot"] = {m: {f: 0.111 for f in fam} for m, fam in hard["zero_shot"].items()}
    # A gap of 0.997: no other pair's can be larger, so it is the comparison's largest.
    hard["alignment"]["cmc"]["Text-Image"]["baseline"] = 0.999
    hard["alignment"]["cmc"]["Text-Image"]["mrepe"] = [0.001, 0.003]
    default_base = f"{results['alignment']['cmc']['Text-Image']['baseline']:.3f}"
    default_worst = min(min(v.values()) for v in results["zero_shot"].values())
    assert default_base != "0.999" and results["training"]["steps"] != 77 and f"{default_worst:.3f}" != "0.111"
    report = toyworld_report.render({**results, "hard": {**hard, "world": {"distractors": 2}}})
    for title in HARD_TITLES:
        assert f"## {title}" in report
    zs_default = report_section(report, "ToyWorld CLIP: held-out zero-shot accuracy")
    zs_hard = report_section(report, "ToyWorld CLIP: held-out zero-shot accuracy — hard world")
    assert "trained 77 steps" in zs_hard and "trained 4 steps" in zs_default
    assert "| colour | 0.111 | 0.111 | 0.111 |" in zs_hard and "| minimum | 0.111 | 0.111 | 0.111 |" in zs_hard
    assert "0.111" not in zs_default
    t2_default = report_section(report, "Table 2: cross-modal consistency (CMC, eq 8) — default world")
    t2_hard = report_section(report, "Table 2: cross-modal consistency (CMC, eq 8) — hard world")
    assert f"| Text-Image | {default_base} |" in t2_default and "| Text-Image | 0.999 |" not in t2_default
    assert "| Text-Image | 0.999 | 0.002 ± 0.001 | -99.8% |" in t2_hard, t2_hard
    versus = report_section(report, "Default vs hard world")
    assert f"Worst zero-shot accuracy: default {default_worst:.3f}, hard 0.111." in versus
    assert ("- hard world: Table 2's largest |MRepE - Baseline| is 0.997 (Text-Image), more than the "
            "seed std there (0.001)") in versus
    assert "- default world: Table 2's largest |MRepE - Baseline| is 0.997" not in versus


def test_claims_follow_the_figures_they_quote(single):
    import copy

    from mrepe_jax.experiments.toyworld.report import claims

    results = json.loads((single[0] / "results.json").read_text())
    r = copy.deepcopy(results)
    tower = r["control"]["towers"]["vision"]
    for m in claims.STEERING_METHODS:
        tower[m]["success"]["1.0"] = [0.9 if m == "combined" else 0.5]
    assert claims.combined_best(r)[1] == "confirmed"
    tower["ft"]["success"]["1.0"] = [0.95]
    figure, verdict = claims.combined_best(r)
    assert verdict == "not confirmed" and "best ft 95.0% (combined 90.0%)" in figure
    r["training"]["trained_in_seconds"] = 1e6  # the fits vanish beside it
    assert claims.training_overhead(r)[1] == "confirmed"
    r["training"]["trained_in_seconds"] = 1e-3
    assert claims.training_overhead(r)[1] == "not confirmed"
    safety = r["safety"]["towers"]["vision"]
    safety["harmful"].update(baseline=0.5, mrepe=[0.25], p_value=0.001)
    figure, verdict = claims.harmful(r)
    assert verdict == "confirmed" and figure.startswith("-50.0% on the tower-averaged rate")
    safety["harmful"]["p_value"] = 0.2  # as large, but not significant
    assert claims.harmful(r)[1] == "not confirmed"
    safety["harmful"].update(mrepe=[0.4], p_value=0.001)  # significant, but smaller than -34.2%
    assert claims.harmful(r)[1] == "not confirmed"
    safety["harmful"]["baseline"] = 0.0
    assert claims.harmful(r) == ("undefined: the Baseline outputs no harm on any tower", "not confirmed")
    report = (single[0] / "report.md").read_text()
    assert "GPT-4V reaches a 94.8% success rate — not testable here" in report
    assert report.count("**confirmed**") + report.count("**not confirmed**") == len(claims.CLAIMS) - 1


@pytest.mark.slow
def test_pipeline_with_the_hard_world(tmp_path):
    """Slow (~1 min): ``make test-slow``. The demo's two worlds end to end on the tiny config."""
    proc = run(tmp_path / "w", "--config.compare_hard=True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    hard = results["hard"]
    assert hard["world"]["distractors"] > 0 and "alignment" in hard and "causal" not in hard
    assert (tmp_path / "w" / "hard" / "checkpoints" / "toyclip").is_dir()
    report = (tmp_path / "w" / "report.md").read_text()
    for title in HARD_TITLES:
        assert f"## {title}" in report
    again = run(tmp_path / "w", "--config.compare_hard=True")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "w" / "results.json").read_text())
    assert resumed["hard"]["reused_stages"] == ["zero_shot", "identification", "alignment", "control",
                                                "safety", "features", "decomposition"]
    assert hard["features"]["architectures"]["topk"]["spurious"]["source"] == "colour"
    assert resumed["hard"]["efficiency"]["measured_on"] == "default world"
    assert resumed["hard"]["alignment"] == hard["alignment"]


@pytest.mark.slow
def test_pipeline_retraining_the_clip_per_seed(tmp_path):
    """Slow (~1 min): ``make test-slow``. The `:paper` protocol's mechanics on the tiny config."""
    workdir = tmp_path / "w"
    proc = run(workdir, "--config.clip_seeds=(0, 1)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["clip_seeds"] == [0, 1] and set(results["per_clip_seed"]) == {"0", "1"}
    per = results["per_clip_seed"]
    assert per["0"]["training"]["final_loss"] != per["1"]["training"]["final_loss"]  # two CLIPs
    assert results["control"]["seeds"] == [0, 1] and results["safety"]["seeds"] == [0, 1]
    assert results["control"]["clip_retrained"] and "causal" not in per["1"]
    pooled = results["safety"]["towers"]["vision"]["scr"]
    assert pooled["mrepe"] == per["0"]["safety"]["towers"]["vision"]["scr"]["mrepe"] + \
        per["1"]["safety"]["towers"]["vision"]["scr"]["mrepe"]
    assert pooled["p_value"] == max(per[s]["safety"]["towers"]["vision"]["scr"]["p_value"] for s in "01")
    report = (workdir / "report.md").read_text()
    assert "Each seed also retrains the CLIP" in report
    assert "](clip_seed0/steering_dose_response.png)" in report
    assert (workdir / "clip_seed0" / "steering_dose_response.png").is_file()
    assert (workdir / "clip_seed1" / "checkpoints" / "toyclip").is_dir()


def test_bad_config_argument_is_named():
    proc = subprocess.run([sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:huge",
                           "--workdir=/tmp/unused"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown config argument 'huge'" in proc.stderr


FIGURE_KEYS = ("zero_shot", "identification", "causal", "alignment", "control", "safety")


def world_figures(results):
    """The stage figures of the (default) world; the two-process run leaves out the hard one."""
    return dict(figures({k: results[k] for k in FIGURE_KEYS}))


def figures(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k != "seconds":
                yield from figures(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from figures(v, f"{path}[{i}]")
    else:
        yield path, tree


def assert_same_figures(a: dict, b: dict) -> None:
    """Every stage figure of run ``b`` is run ``a``'s, to the float noise of another device layout."""
    fa, fb = world_figures(a), world_figures(b)
    assert fa.keys() == fb.keys() and len(fa) > 50
    for path, x in fa.items():
        if isinstance(x, float):
            # Two devices sum gradients in another order, and Adam turns rounding differences in
            # near-zero gradients into ~lr changes of a weight: the figures agree to float noise,
            # except that a rank statistic may flip one pair (1 / (n+ n-) ~ 2e-4 at this size).
            rank = ("/identification/", "/alignment/transfer/")
            # A success rate moves by ~0.004 when one near-tied prediction flips.
            rates = ("/control/", "/safety/")
            tol = 5e-4 if path.startswith(rank) else 1e-2 if path.startswith(rates) else 1e-6
            assert abs(fb[path] - x) <= tol, (path, x, fb[path])
        else:
            assert fb[path] == x, path


@pytest.mark.slow
def test_the_tiny_config_on_a_2x4_mesh_with_the_clip_sharded_over_model(single, tmp_path):
    """The tiny pipeline on 8 virtual devices as a (data 2, model 4) mesh: the CLIP's params and
    Adam's moments sharded over model by its rule table, every stage run on them. The figures of
    the one-device run. Slow (~3 min on 2 cores): ``make test-slow``."""
    env = dict(os.environ, XLA_FLAGS=with_compile_flags("--xla_force_host_platform_device_count=8"),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:tiny", "--config.mesh.shape=(2,4)",
         f"--workdir={tmp_path / 'mesh'}"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single[0] / "results.json").read_text())
    b = json.loads((tmp_path / "mesh" / "results.json").read_text())
    assert b["mesh"] == {"processes": 1, "shape": {"data": 2, "model": 4}}
    assert_same_figures(a, b)
    assert a["training"]["final_loss"] == pytest.approx(b["training"]["final_loss"], abs=1e-5)


@pytest.mark.slow
def test_build_md_multi_host_command_with_the_tiny_config(single, tmp_path):
    """Train the ToyWorld CLIP data-parallel, then stream activations, run exact and attribution
    patching sweeps, the alignment, steering and safety stages, the captioner and the transfer
    across architectures and the report, in two processes: the figures of one process. Slow
    (~2.5 min, two processes on two cores): ``make test-slow``."""
    for rc, out in finish(launch_two(tmp_path / "two")):
        assert rc == 0, out[-3000:]
    a = json.loads((single[0] / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["mesh"] == {"processes": 2, "shape": {"data": 2, "model": 1}}
    assert_same_figures(a, b)
    assert a["training"]["final_loss"] == pytest.approx(b["training"]["final_loss"], abs=1e-6)
    # The captioner and the second CLIP train data-parallel too (checkpoints written collectively);
    # greedy captions of a 4-step captioner sit on near-ties, so only its loss is compared.
    assert b["captioner"]["training"]["steps"] == 4 and b["architectures"]["models"]["clip_b"]["steps"] == 4
    assert b["captioner"]["training"]["final_loss"] == pytest.approx(
        a["captioner"]["training"]["final_loss"], abs=1e-5)
    assert set(b["architectures"]["pairs"]) == set(a["architectures"]["pairs"])


