"""Images with captions from a folder + JSONL: records, their errors, and concept labels from words."""

import json

import numpy as np
import pytest
from PIL import Image

from mrepe_jax.data import captioned


def _folder(root, records):
    (root / "img").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((5, 7, 3), 40 * k, np.uint8)).save(root / "img" / f"{k}.png")
    path = root / "captions.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_records_resolve_images_against_the_jsonl_folder_and_stream_in_order(tmp_path):
    path = _folder(tmp_path, [{"image": f"img/{k}.png", "captions": [f"a red car {k}", " a bus "]} for k in (2, 0, 1)]
                   + [""])  # a blank line is skipped
    records = captioned.jsonl_index(path)
    assert [r.key for r in records] == [str(tmp_path / "img" / f"{k}.png") for k in (2, 0, 1)]
    assert records[0].captions == ("a red car 2", "a bus")
    batches = list(captioned.folder_images(records, batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    assert [int(b[0, 0, 0]) for batch in batches for b in batch] == [80, 0, 40]
    assert batches[0][0].shape == (5, 7, 3) and batches[0][0].dtype == np.uint8
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(FileNotFoundError, match=r"captions.jsonl:1: image '.*elsewhere/img/2.png' does not exist"):
        captioned.jsonl_index(path, other)


@pytest.mark.parametrize("line,message", [
    ("{not json", r"captions.jsonl:2: not valid JSON"),
    ('{"captions": ["x"]}', r'captions.jsonl:2: each line must be an object with an "image" path'),
    ('{"image": "img/0.png", "captions": "a car"}', r'captions.jsonl:2: "captions" must be a non-empty list'),
    ('{"image": "img/0.png", "captions": ["a car", ""]}', r'captions.jsonl:2: "captions" must be a non-empty list'),
    ('{"image": "img/9.png", "captions": ["a car"]}', r"captions.jsonl:2: image '.*img/9.png' does not exist"),
])
def test_a_bad_line_is_named_with_its_number(tmp_path, line, message):
    path = _folder(tmp_path, [{"image": "img/0.png", "captions": ["ok"]}, line])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        captioned.jsonl_index(path)


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"captions file '.*nope.jsonl' does not exist"):
        captioned.jsonl_index(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no records"):
        captioned.jsonl_index(tmp_path / "empty.jsonl")


def test_an_image_has_the_value_its_captions_name_and_no_other():
    captions = [["A Red bus.", "a bus"], ["a bus", "the red bus"], ["a blue bus", "a red bus"],
                ["a reddish bus"], ["a red bus", "a RED bus"]]
    np.testing.assert_array_equal(captioned.caption_labels(captions, ("red", "blue")), [0, 0, -1, -1, 0])
