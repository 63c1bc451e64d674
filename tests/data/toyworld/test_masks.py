"""ToyWorld's object masks (``ToyWorld.masks``): the pixels the main object covers in the images
``batch`` renders, for segmentation's ground truth."""

import numpy as np

from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.data.toyworld.image import _RGB


def test_masks_cover_the_object_in_its_colour_and_follow_its_size_and_position():
    world = ToyWorld(ToyWorldConfig(distractors=2))
    batch, masks = world.batch(range(40), "test"), world.masks(range(40), "test")
    assert masks.shape == (40, 32, 32) and masks.dtype == bool
    labels = batch["labels"]
    palette = np.asarray([_RGB[c] for c in world.families["colour"]])
    for i in range(40):
        inside = batch["image"][i][masks[i]].mean(0)
        # Inside the mask the pixels are the object's colour (up to tint, brightness and noise).
        assert np.argmin(np.abs(palette - inside).sum(1)) == labels["colour"][i]
    area = masks.mean((1, 2))
    for small, large in [(0, 2)]:
        assert area[labels["size"] == small].mean() < area[labels["size"] == large].mean()
    # The object's horizontal centre follows its position (left, centre, right).
    cx = np.array([np.nonzero(m)[1].mean() for m in masks])
    means = [cx[labels["position"] == p].mean() for p in range(3)]
    assert means[0] < means[1] < means[2]
    # Rendering masks leaves the images as they were.
    np.testing.assert_array_equal(world.batch(range(40), "test")["image"], batch["image"])
