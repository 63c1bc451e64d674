"""Table 3 for captions: what counts as naming a target and as keeping the rest of a caption."""

import numpy as np
import pytest

from mrepe_jax.experiments.blip2 import steering


def test_a_caption_names_a_word_as_a_whole_word_in_any_case():
    assert steering.names("A Red bus.", "red") and steering.names("a fire hydrant", "fire hydrant")
    assert not steering.names("a reddish bus", "red") and not steering.names("a bus", "red")


def test_kept_counts_content_words_but_stop_words_and_the_family():
    values = ("red", "blue")
    assert steering.kept("a red bus on the street", "a blue bus on the street", values) == 1.0
    assert steering.kept("a red bus on the street", "a blue car on a road", values) == 0.0
    assert steering.kept("a red bus near a tree", "the bus", values) == pytest.approx(0.5)
    assert steering.kept("a red one", "anything", values) == pytest.approx(0.0)
    assert steering.kept("a red", "a blue", values) is None  # nothing but stop words and values


def test_cells_average_over_targets_and_skip_captions_without_content():
    base = ["a red bus", "a red", "a blue car"]
    steered = ["a blue bus", "a blue", "a blue car"]
    cell = steering._cell(steered, base, np.array([0, 1]), "blue", ("red", "blue"))
    assert cell == {"success": 1.0, "kept": 1.0}
    mean = steering._mean_cells([cell, {"success": 0.0, "kept": None}])
    assert mean == {"success": 0.5, "kept": 1.0}
