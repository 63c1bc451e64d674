"""Report text: numbers laid out for reading."""

import numpy as np

from mrepe_jax.report.markdown import fmt, table


def test_fmt_rounds_floats_and_keeps_integers_whole():
    assert fmt(0.7771299481391907) == "0.777"
    assert fmt(np.float32(0.7771299481391907)) == "0.777" and fmt(np.asarray(0.25)) == "0.250"
    assert fmt(1000) == "1000" and fmt(np.int64(12)) == "12" and fmt(True) == "True"
    assert fmt((0.51234, 0.4, np.float64(0.6)), digits=2) == "0.51 [0.40, 0.60]"
    assert fmt(None) == "-" and fmt("L1 p2") == "L1 p2"
    assert table(["a", "b"], [["x", 0.123456]]).splitlines()[-1] == "| x | 0.123 |"


def test_report_prints_the_final_training_loss_rounded():
    from mrepe_jax.experiments.toyworld.report.document import zero_shot_section

    results = {"zero_shot": {m: {"colour": 0.9} for m in ("vision", "text", "audio")},
               "training": {"steps": 1000, "final_loss": 0.7771299481391907, "trained_in_seconds": 60.8},
               "config": {"eval": {"num_test": 64}}}
    text = zero_shot_section(results)
    assert "trained 1000 steps (final loss 0.777);" in text and "0.7771" not in text
