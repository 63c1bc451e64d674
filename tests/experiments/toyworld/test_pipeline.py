"""The ToyWorld pipeline end to end on the tiny config: files written, resumed on a re-run, and
the same figures from BUILD.md's multi-host command run as two local processes, and on a
(data, model) mesh of 8 virtual devices with the CLIP sharded over model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiprocess import finish, launch_two
from tests.xla_flags import with_compile_flags

ROOT = Path(__file__).resolve().parents[3]


def run(workdir, *flags):
    return subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:tiny", *flags,
         f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run's workdir and its results (shared by the tests below)."""
    workdir = tmp_path_factory.mktemp("single") / "w"
    # --progress: the stage bar is asked for (stderr is a pipe here, where it is off by default).
    proc = run(workdir, f"--compile_cache={workdir.parent / 'compile_cache'}", "--progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_pipeline_writes_results_and_report(single):
    workdir, proc = single
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["training"]["steps"] == 4 and results["training"]["steps_run"] == 4
    # Run seed 0: every seed as the config writes it (experiments/toyworld/seeds.py).
    assert results["seeds"] == {"run": 0, "offset": 0, "world": 0, "clip": 0, "align": [0, 1],
                                "control": [0], "captioner": 0, "transfer_clip": 1, "causal": 0,
                                "permutation_tests": 0}
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
    stages = ["zero_shot", "identification", "alignment", "control", "safety", "efficiency"]
    assert resumed["reused_stages"] == stages + ["causal", "captioner", "architectures"]
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


def test_the_report_renders_the_hard_world_beside_the_default(single):
    from mrepe_jax.experiments.toyworld.report import document as toyworld_report

    results = json.loads((single[0] / "results.json").read_text())
    hard = {k: results[k] for k in ("training", "zero_shot", "identification", "alignment", "control",
                                    "safety", "efficiency")}
    report = toyworld_report.render({**results, "hard": {**hard, "world": {"distractors": 2}}})
    for title in HARD_TITLES:
        assert f"## {title}" in report


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
                                                "safety"]
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


