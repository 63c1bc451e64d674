"""The streamed identification stage equals the whole-array definitions (eq 1, eq 6, Table 1)."""

import numpy as np
import pytest

from mrepe_jax.control.interventions import site_scale
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.reading.prototypes import auroc, identification_score
from mrepe_jax.stages import identification as ident


def _data(n, k=3, d=6, seed=0, signal=1.0):
    means = np.random.default_rng(100).normal(size=(k, d)) * signal  # the same world in every split
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return (rng.normal(size=(n, d)) + means[labels] + 2.0).astype(np.float32), labels


def test_batched_sums_give_the_whole_array_prototypes_directions_and_scores():
    train_x, train_y = _data(300, seed=0)
    test_x, test_y = _data(200, seed=1)
    sums = None
    for lo in range(0, 300, 64):  # uneven last batch
        sums = ident.accumulate(sums, {"s": train_x[lo:lo + 64]}, train_y[lo:lo + 64], 3)
    readout = ident.Readout.from_sums(sums)
    whole = identification_score(train_x, train_y, test_x, test_y, num_values=3)
    np.testing.assert_allclose(readout.prototypes["s"], whole.prototypes, atol=1e-6)
    np.testing.assert_allclose(readout.sums["s"].means(), [train_x[train_y == c].mean(0) for c in range(3)],
                               atol=1e-5)
    assert readout.sums["s"].mean_norm() == pytest.approx(site_scale(train_x), rel=1e-6)
    sims, projs = ident.concat_scores(readout.scores({"s": test_x[lo:lo + 50]})
                                      for lo in range(0, 200, 50))["s"]
    assert ident.macro_auroc(sims, test_y) == pytest.approx(whole.score, abs=1e-6)
    for c in range(3):
        d = np.asarray(direction_mean_diff(train_x[train_y == c], train_x[train_y != c]))
        np.testing.assert_allclose(readout.directions["s"][c], d, atol=1e-6)
        proj = test_x @ d
        assert ident.macro_auroc(projs, test_y) == pytest.approx(np.mean(
            [float(auroc((test_x @ readout.directions["s"][v])[test_y == v],
                         (test_x @ readout.directions["s"][v])[test_y != v])) for v in range(3)]), abs=1e-6)
        assert np.corrcoef(proj, projs[:, c])[0, 1] > 1 - 1e-6


def test_unlabelled_rows_are_left_out():
    x, y = _data(120, seed=2)
    y_masked = y.copy()
    y_masked[::3] = -1
    a = ident.Readout.from_sums(ident.accumulate(None, {"s": x}, y_masked, 3))
    b = ident.Readout.from_sums(ident.accumulate(None, {"s": x[y_masked >= 0]}, y[y_masked >= 0], 3))
    np.testing.assert_allclose(a.prototypes["s"], b.prototypes["s"], atol=1e-7)
    sims, _ = a.scores({"s": x})["s"]
    assert ident.macro_auroc(sims, y_masked) == ident.macro_auroc(sims[y_masked >= 0], y[y_masked >= 0])


def test_table1_picks_the_site_best_on_validation():
    val_x, val_y = _data(200, seed=3, signal=2.0)
    test_x, test_y = _data(200, seed=4, signal=2.0)
    noise = np.random.default_rng(5).normal(size=(200, 6)).astype(np.float32)
    train_x, train_y = _data(300, seed=6, signal=2.0)
    sums = ident.accumulate(None, {"good": train_x, "noise": train_x[::-1].copy()}, train_y, 3)
    readout = ident.Readout.from_sums(sums)
    scores = {"validation": readout.scores({"good": val_x, "noise": noise}),
              "test": readout.scores({"good": test_x, "noise": noise})}
    row = ident.table1(scores, {"validation": val_y, "test": test_y}, ("noise", "good"), "noise")
    assert row["mrepe_site"] == row["direction_site"] == "good"
    assert row["mrepe"] > 0.9 and abs(row["baseline"] - 0.5) < 0.1


def test_bad_labels_and_missing_values_are_named():
    x, y = _data(30)
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 3\).*\[7\]"):
        ident.accumulate(None, {"s": x}, np.where(y == 0, 7, y), 3)
    with pytest.raises(ValueError, match=r"family 'colour' has no train examples of value\(s\) \[2\]"):
        ident.Readout.from_sums(ident.accumulate(None, {"s": x}, np.where(y == 2, 0, y), 3), "colour")
    with pytest.raises(ValueError, match="value 1 has 0 examples in the held-out split"):
        ident.macro_auroc(np.zeros((4, 3)), np.array([0, 0, 2, 2]))


def test_stream_identify_rows_per_part_pick_within_the_part():
    """With ``groups``, each part's row picks its best site among the part's own sites, and the
    overall row is the best of all."""
    splits = {"train": _data(300, seed=7, signal=2.0), "validation": _data(150, seed=8, signal=2.0),
              "test": _data(150, seed=9, signal=2.0)}
    noise = {s: np.random.default_rng(10 + i).normal(size=(len(y), 6)).astype(np.float32)
             for i, (s, (_, y)) in enumerate(splits.items())}

    def batches(split):
        x, y = splits[split]
        for lo in range(0, len(y), 64):
            yield {"good": x[lo:lo + 64], "noise": noise[split][lo:lo + 64]}, {"f": y[lo:lo + 64]}

    rows, _ = ident.stream_identify(lambda b: b, batches, {"f": 3}, ("noise", "good"), "noise",
                                    groups={"A": ("noise",), "B": ("good",)})
    row = rows["f"]
    assert row["mrepe_site"] == "good" and row["parts"]["A"]["mrepe_site"] == "noise"
    assert row["parts"]["B"]["mrepe"] == row["mrepe"] > 0.9 > row["parts"]["A"]["mrepe"]
    assert row["parts"]["A"]["baseline"] == row["baseline"]
