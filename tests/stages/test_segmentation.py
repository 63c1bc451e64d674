"""Segmentation scores (``stages.segmentation``) on hand-made maps."""

import numpy as np

from mrepe_jax.stages.segmentation import binary_scores, pixels, scores


def test_a_perfect_map_scores_one_an_inverted_one_zero_and_a_constant_one_is_all_background():
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True  # a quarter of each image
    perfect = masks.astype(float)
    assert binary_scores(perfect, masks) == {"pixel_accuracy": 1.0, "miou": 1.0}
    assert binary_scores(1 - perfect, masks) == {"pixel_accuracy": 0.0, "miou": 0.0}
    background = binary_scores(np.zeros((2, 4, 4)), masks)
    assert background["pixel_accuracy"] == 0.75 and background["miou"] == 0.5 * (0 + 0.75)


def test_patch_scores_upsample_to_pixels_without_the_cls_token():
    tokens = np.array([[9.0, 1.0, 0.0, 0.0, 0.0]])  # CLS, then a 2 x 2 grid
    up = pixels(tokens, 4)
    assert up.shape == (1, 4, 4) and up[0, :2, :2].tolist() == [[1, 1], [1, 1]] and up[0, 2:, :].sum() == 0
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :2] = True
    assert scores(tokens, masks)["miou"] == 1.0
