"""``bench/train_step.py --tiny`` runs end to end and ends with its one-line JSON record."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow  # a subprocess run of a bench script (~10-20 s): `make test-slow`
def test_bench_train_step_tiny_runs():
    """A train step is a forward, its backward and an AdamW update, so it costs more than the
    forward: ``step_over_forward`` > 1.5, as ``fit`` runs it and one per call (a tiny run gives
    3-4x; a step timed as a forward, or a forward timed as a step, gives ~1x and fails here).

    The bench's own target, "about three forwards" (BUILD.md: 2.76-2.79x at batch 128), is not
    asserted: at the tiny config a forward takes ~1 ms, so the step's fixed costs (the optimizer
    update over every leaf, fit's finiteness checks, dispatch) dominate and the ratio sits at 3-4x,
    and 2 timed iterations on a shared 2-core box are too noisy for a bound that tight."""
    record, _ = run_tiny("train_step", timeout=300)
    assert record["bench"] == "train_step" and record["config"] == "tiny" and record["batch"] == 16
    for key in ("forward_ms", "train_step_ms", "step_over_forward", "train_step_first_call_s"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
    assert abs(record["step_over_forward"] - record["train_step_ms"] / record["forward_ms"]) < 0.05
    # Timed as fit runs it (the tiny config: 2 steps per call), and one per call beside it.
    assert record["steps_per_call"] == 2 and record["one_per_call"]["train_step_ms"] > 0
    assert record["step_over_forward"] > 1.5, record
    assert record["one_per_call"]["step_over_forward"] > 1.5, record
