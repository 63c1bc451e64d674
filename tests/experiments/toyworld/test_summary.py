"""What ``launch.run`` prints at the end of a ToyWorld run (``pipeline.summary``) and the stages
its progress bar announces."""

from mrepe_jax.experiments.toyworld import pipeline

METHODS = ("none", "ap", "direct", "attention", "combined", "ft")


def _world(worst: float, table1: tuple, cmc: tuple, alphas=("0.1", "1.0")) -> dict:
    """One world's stage results, as results.json holds them, with only what the summary reads."""
    def tower(shift):
        # Success per seed: method k at alpha a is (k + 1) / 10 + shift, mean over two seeds.
        return {m: {"success": {a: [(k + 1) / 10 + shift - 0.01, (k + 1) / 10 + shift + 0.01]
                                for a in alphas}} for k, m in enumerate(METHODS)}

    return {
        "zero_shot": {"vision": {"colour": 0.99, "shape": worst}, "text": {"colour": 1.0, "shape": 0.9}},
        "identification": {"baseline": {"vision": {"colour": table1[0]}, "text": {"colour": table1[0]}},
                           "mrepe": {"vision": {"colour": table1[1] - 0.1}, "text": {"colour": table1[1] + 0.1}}},
        "alignment": {"cmc": {"Text-Image": {"baseline": cmc[0], "mrepe": [cmc[1], cmc[1]], "p_value": 0.5},
                              "Text-Audio": {"baseline": cmc[0], "mrepe": [cmc[1] - 0.02, cmc[1] + 0.02]}}},
        # The text tower steers best, by 0.05.
        "control": {"alphas": [float(a) for a in alphas], "towers": {"vision": tower(0.0), "text": tower(0.05)}},
    }


def test_summary_is_a_short_table_per_world():
    results = {"config": {"world": {"spurious": 0.0, "caption_noise": 0.0, "distractors": 0}},
               **_world(0.5, (0.8, 0.85), (0.9, 0.95)),
               "hard": _world(0.25, (0.6, 0.7), (0.7, 0.8))}
    lines = pipeline.summary(results, "runs/demo").splitlines()
    assert len(lines) <= 15
    assert lines[0].split() == ["ToyWorld", "default", "world", "hard", "world"]
    cells = {line[:line.index("  ")]: line.split("  ")[1:] for line in lines[1:-1]}
    cells = {k: [c.strip() for c in v if c.strip()] for k, v in cells.items()}
    assert cells["worst zero-shot accuracy"] == ["0.500 (vision shape)", "0.250 (vision shape)"]
    assert cells["Table 1 Baseline (mean AUROC)"] == ["0.800", "0.600"]
    assert cells["Table 1 MRepE (mean AUROC)"] == ["0.850", "0.700"]
    assert cells["Table 2 CMC Baseline"] == ["0.900", "0.700"]
    assert cells["Table 2 CMC MRepE"] == ["0.950", "0.800"]
    # Per method the best tower's mean over seeds at alpha 1.0, named as in the report's Table 3.
    assert cells["Table 3 Baseline (none) success @ alpha 1.0"] == ["0.150 (text)", "0.150 (text)"]
    assert cells["Table 3 FT success @ alpha 1.0"] == ["0.650 (text)", "0.650 (text)"]
    assert sum(k.startswith("Table 3") for k in cells) == len(METHODS)
    assert lines[-1] == "report: runs/demo/report.md"


def test_summary_without_alpha_1_or_a_hard_world_leaves_those_rows_out():
    results = {"config": {"world": {"spurious": 0.7}}, **_world(0.5, (0.8, 0.85), (0.9, 0.95), ("0.3",))}
    lines = pipeline.summary(results, "w").splitlines()
    assert lines[0].split() == ["ToyWorld", "hard", "world"]  # a `:hard` run's main world
    assert not any(line.startswith("Table 3") for line in lines)
    assert len(lines) == 7 and lines[-1] == "report: w/report.md"


def test_the_stage_bar_announces_every_stage_that_runs():
    assert pipeline.stage_names(pipeline.COSTS + pipeline.STUDIES) == [
        "reading", "zero_shot", "identification", "causal", "alignment", "control", "safety",
        "features", "decomposition", "efficiency", "captioner", "architectures", "gallery"]
    # The hard world and later CLIP seeds run only the shared stages.
    assert pipeline.stage_names(()) == ["reading", "zero_shot", "identification", "alignment",
                                        "control", "safety", "features", "decomposition"]
    # The transfer study needs the captioner, which then runs (and is announced) too.
    assert "captioner" in pipeline.stage_names(("architectures",))
