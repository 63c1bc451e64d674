"""The ToyWorld pipeline end to end on the tiny config: files written, resumed on a re-run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(workdir):
    return subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:tiny", f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_pipeline_writes_results_and_report_and_resumes(tmp_path):
    proc = run(tmp_path / "w")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["training"]["steps"] == 4 and results["training"]["steps_run"] == 4
    assert set(results["zero_shot"]) == {"vision", "text", "audio"}
    for modality in results["zero_shot"].values():
        assert set(modality) == {"colour", "shape", "size", "position", "emblem"}
        assert all(0.0 <= a <= 1.0 for a in modality.values())
    for key in ("baseline", "mrepe", "direction_auroc"):
        assert set(results["identification"][key]) == {"vision", "text", "audio"}
    report = (tmp_path / "w" / "report.md").read_text()
    assert "Table 1: representation identification" in report and "| ToyWorld CLIP + MRepE |" in report
    assert (tmp_path / "w" / "patching_vision_colour_layer_position.png").stat().st_size > 1000

    again = run(tmp_path / "w")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "w" / "results.json").read_text())
    assert resumed["training"]["steps_run"] == 0 and resumed["training"]["resumed_from_step"] == 4
    assert resumed["training"]["trained_in_seconds"] == results["training"]["trained_in_seconds"]
    # Same config, same model: the stages' figures are reused, not recomputed.
    assert resumed["reused_stages"] == ["zero_shot", "identification", "causal"]
    assert resumed["identification"] == results["identification"]
    assert "reused_stages" not in results


def test_bad_config_argument_is_named():
    proc = subprocess.run([sys.executable, "-m", "launch.run", "--config=configs/toyworld.py:huge",
                           "--workdir=/tmp/unused"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown config argument 'huge'" in proc.stderr
