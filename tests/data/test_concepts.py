"""Concept-labelled real data: class lists against a dataset's labels, image folders, caption words."""

import numpy as np
import pytest
from PIL import Image

from mrepe_jax.data import concepts


def test_class_index_maps_dataset_labels_and_names_what_is_missing():
    np.testing.assert_array_equal(concepts.class_index(("dog", "cat"), ["cat", "dog", "ship"], "d"),
                                  [1, 0, -1])
    with pytest.raises(ValueError, match=r"classes \['unicorn'\] are not labels of the set; its labels "
                                         r"are \['cat', 'dog'\]"):
        concepts.class_index(("cat", "unicorn"), ["cat", "dog"], "the set")
    with pytest.raises(ValueError, match="repeats a class"):
        concepts.class_index(("cat", "cat"), ["cat", "dog"], "the set")


def test_caption_words_label_and_swap_whole_words():
    caps = ["A Red car", "a redder car", "red and blue", "nothing", "blue."]
    np.testing.assert_array_equal(concepts.word_labels(caps, ("red", "blue")), [0, -1, -1, -1, 1])
    assert concepts.swap_word("A Red car, red!", "red", "blue") == "A blue car, blue!"
    assert concepts.swap_word("a redder car", "red", "blue") == "a redder car"


def test_folder_images_interleave_classes_and_skip_unlisted(tmp_path):
    for c, n in (("cat", 3), ("dog", 2), ("other", 2)):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((4, 5, 3), 10 * i, np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    batches = list(concepts.folder_images(tmp_path, "train", ("dog", "cat"), batch_size=2))
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 1])  # dog, cat, dog, cat, cat
    assert batches[0][0][0].shape == (4, 5, 3) and batches[0][0][0].dtype == np.uint8
    limited = list(concepts.folder_images(tmp_path, "train", ("dog", "cat"), batch_size=2, limit=3))
    assert sum(len(b[1]) for b in limited) == 3


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        concepts.folder_images(tmp_path / "nope", "train", ("cat",), batch_size=2)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no split folder \(looked for .*/val'"):
        concepts.folder_images(tmp_path, "val", ("cat",), batch_size=2)
    with pytest.raises(ValueError, match=r"class folder\(s\) \['cat'\] hold no images"):
        concepts.folder_images(tmp_path, "train", ("cat",), batch_size=2)
    with pytest.raises(ValueError, match=r"classes \['dog'\] are not labels of image folder"):
        concepts.folder_images(tmp_path, "train", ("cat", "dog"), batch_size=2)
    with pytest.raises(FileNotFoundError, match="captions file .* does not exist"):
        concepts.file_captions(tmp_path / "captions.txt")


def test_a_transparent_png_through_the_folder_loader_equals_transformers(tmp_path):
    """RGBA and palette-transparent PNGs come out on white, as transformers' processor puts them
    (a plain ``convert("RGB")`` would turn the transparent pixels black)."""
    transformers = pytest.importorskip("transformers")
    from mrepe_jax.models.clip.preprocess import ImagePreprocessConfig, preprocess_images

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 45, 4)).astype(np.uint8)
    rgba[:10, :, 3] = 0  # fully transparent rows (their RGB values are noise)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "test" / "cat" / "0.png")
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "test" / "cat" / "1.png", transparency=0)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(tmp_path / "proc")
    (raw, _), = concepts.folder_images(tmp_path, "test", ("cat",), batch_size=2)
    ours = preprocess_images(raw, ImagePreprocessConfig.from_dir(tmp_path / "proc"))
    for k in range(2):
        with Image.open(tmp_path / "test" / "cat" / f"{k}.png") as img:
            theirs = proc(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_allclose(ours[k], theirs, atol=1e-6)
    assert raw[0][:10].min() == 255  # the transparent rows are white, not their noise
