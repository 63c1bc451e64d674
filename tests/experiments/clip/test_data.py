"""The CLIP experiment's data checks (``stages.dual_encoder.data`` with ``experiments.clip.data``'s
images), without a model."""

import numpy as np
import pytest
from PIL import Image

from configs import clip as clip_config
from mrepe_jax.experiments.clip.data import IMAGES
from mrepe_jax.stages.dual_encoder import data as data_lib


def _folder(root, classes=("nature", "person", "vehicle"), n=4):
    for split in ("train", "val", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _config(root, **images):
    c = clip_config.get_config()
    c.images.source, c.images.path = "folder", str(root)
    for k, v in images.items():
        setattr(c.images, k, v)
    return c


def test_a_folder_without_classes_suggests_the_flag_and_empty_classes_take_the_folders(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match=r"images.classes \['airplane', .*\] are not class subfolders "
                                         r".*whose classes are \['nature', 'person', 'vehicle'\]: pass "
                                         r"--config.images.classes=\"\('nature', 'person', 'vehicle'\)\""):
        data_lib.resolve(_config(root), IMAGES)  # CIFAR-10's list: the TFDS default
    resolved = data_lib.resolve(_config(root, classes=()), IMAGES)
    assert tuple(resolved.images.classes) == ("nature", "person", "vehicle")
    chosen = _config(root, classes=("person", "vehicle"))
    assert data_lib.resolve(chosen, IMAGES) is chosen


def test_check_counts_and_fingerprints_the_images_a_run_reads(tmp_path):
    root = _folder(tmp_path)
    c = data_lib.resolve(_config(root, classes=()), IMAGES)
    c.captions.source, c.captions.path = "file", str(tmp_path / "captions.txt")
    words = [f"a {colour} {animal}." for colour in c.captions.families.colour
             for animal in c.captions.families.animal]
    (tmp_path / "captions.txt").write_text("\n".join(words * 2) + "\n")
    c.align.map.batch_size, c.images.num.train = 8, 9
    data = data_lib.check(c, IMAGES)
    assert data.counts == {"train": 9, "validation": 12, "test": 12}
    again = data_lib.check(c, IMAGES)
    assert again.fingerprint == data.fingerprint
    # Another pixel in a file the run reads changes the fingerprint; one it does not read does not.
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "train" / "nature" / "3.png")
    assert data_lib.check(c, IMAGES).fingerprint == data.fingerprint  # past images.num.train: not read
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "test" / "person" / "0.png")
    assert data_lib.check(c, IMAGES).fingerprint != data.fingerprint


def test_map_settings_are_checked_up_front_naming_align_map(tmp_path):
    c = data_lib.resolve(_config(_folder(tmp_path), classes=()), IMAGES)
    c.align.map.batch_size = 3  # 128 memory rows are no multiple of 3
    with pytest.raises(ValueError, match=r"align.map \(align.map_kinds 'mrepe'\): MapTrainConfig.memory_size "
                                         r"\(128\) must be a multiple of batch_size \(3\)"):
        data_lib.check(c, IMAGES)
