"""``bench/train_step.py --tiny`` runs end to end and ends with its one-line JSON record."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow  # a subprocess run of a bench script (~10-20 s): `make test-slow`
def test_bench_train_step_tiny_runs():
    record, _ = run_tiny("train_step", timeout=300)
    assert record["bench"] == "train_step" and record["config"] == "tiny" and record["batch"] == 16
    for key in ("forward_ms", "train_step_ms", "step_over_forward", "train_step_first_call_s"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
    assert abs(record["step_over_forward"] - record["train_step_ms"] / record["forward_ms"]) < 0.05
    # Timed as fit runs it (the tiny config: 2 steps per call), and one per call beside it.
    assert record["steps_per_call"] == 2 and record["one_per_call"]["train_step_ms"] > 0
