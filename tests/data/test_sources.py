"""Data sources: ToyWorldSource, FolderSource (fixture folders + errors), TFDSSource (mock data)."""

from __future__ import annotations

import itertools
import json
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from mrepe_jax.data import (
    CONCEPT_FAMILIES,
    DataSource,
    FolderSource,
    ToyWorld,
    ToyWorldConfig,
    ToyWorldSource,
    export_toyworld,
    read_wav,
    write_wav,
)


def _take(it, n):
    return list(itertools.islice(it, n))


# ---- ToyWorldSource ----

def test_toyworld_source_epochs_order_and_shapes():
    src = ToyWorldSource(ToyWorldConfig(seed=0), sizes={"train": 10, "test": 6})
    assert isinstance(src, DataSource)
    batches = list(src.batches(4, split="train", epochs=2, seed=5))
    assert [len(b["caption"]) for b in batches] == [4, 4, 2, 4, 4, 2]
    first, second = (np.concatenate([b["index"] for b in batches[i:i + 3]]) for i in (0, 3))
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)  # reshuffled per epoch
    again = np.concatenate([b["index"] for b in src.batches(4, split="train", epochs=1, seed=5)])
    np.testing.assert_array_equal(again, first)  # same seed, same order
    b = batches[0]
    assert b["image"].shape == (4, 32, 32, 3) and b["audio"].shape == (4, 4000)
    assert b["input_ids"].shape == (4, 16) and set(b["labels"]) == set(CONCEPT_FAMILIES)
    world = ToyWorld(ToyWorldConfig(seed=0))
    assert b["image"].tobytes() == world.batch(b["index"], "train")["image"].tobytes()


def test_toyworld_source_eval_order_drop_remainder_and_forever():
    src = ToyWorldSource(sizes={"train": 10, "test": 6})
    test = list(src.batches(4, split="test", shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in test]), np.arange(6))
    assert [len(b["index"]) for b in src.batches(4, split="test", drop_remainder=True)] == [4]
    assert len(_take(src.batches(4, split="test", epochs=None, drop_remainder=True), 7)) == 7
    with pytest.raises(ValueError, match="no split 'val'"):
        next(src.batches(4, split="val"))
    with pytest.raises(ValueError, match="no batch would ever be produced"):
        next(src.batches(8, split="test", drop_remainder=True))


# ---- FolderSource ----

def test_folder_round_trip_of_exported_toyworld(tmp_path):
    world = ToyWorld(ToyWorldConfig(seed=3))
    export_toyworld(world, tmp_path, range(5), split="test")
    src = FolderSource(tmp_path, image_size=32, sample_rate=8000,
                       tokenize=lambda c: world.tokenizer.encode(c, 16))
    batch = next(src.batches(5, split="test", shuffle=False))
    truth = world.batch(range(5), "test")
    np.testing.assert_allclose(batch["image"], truth["image"], atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(batch["audio"], truth["audio"], atol=0.5 / 32768 + 1e-7)
    assert batch["caption"] == truth["caption"]
    np.testing.assert_array_equal(batch["input_ids"], truth["input_ids"])
    for family in CONCEPT_FAMILIES:
        np.testing.assert_array_equal(batch["labels"][family], truth["labels"][family])
    with pytest.raises(ValueError, match="has no examples"):
        next(src.batches(2, split="train"))  # every record says split "test"


def _write_fixture(root, n=3, with_audio=True):
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        shape = [(40, 20, 3), (16, 16), (32, 48, 4)][i % 3]  # RGB, grey, RGBA; odd sizes
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rec = {"image": f"img/{i}.png", "caption": f"caption number {i}",
               "labels": {"colour": i % 4, "shape": "square"}}
        if with_audio:
            write_wav(root / f"{i}.wav", 0.5 * np.sin(np.arange(800 + 100 * i) / 5.0), 8000)
            rec["audio"] = f"{i}.wav"
        records.append(rec)
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return records


def test_folder_source_reads_fixture(tmp_path):
    _write_fixture(tmp_path)
    src = FolderSource(tmp_path, image_size=24, audio_samples=900)
    batch = next(src.batches(3, shuffle=False))
    assert batch["image"].shape == (3, 24, 24, 3) and batch["image"].dtype == np.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["caption"] == [f"caption number {i}" for i in range(3)]
    assert batch["audio"].shape == (3, 900)
    np.testing.assert_allclose(batch["audio"][0, :800], 0.5 * np.sin(np.arange(800) / 5.0),
                               atol=1e-4)
    assert (batch["audio"][0, 800:] == 0).all()  # padded
    np.testing.assert_array_equal(batch["labels"]["colour"], [0, 1, 2])
    np.testing.assert_array_equal(batch["labels"]["shape"], [1, 1, 1])
    with pytest.raises(ValueError, match="differ in length.*audio_samples"):
        next(FolderSource(tmp_path).batches(3))


def test_folder_source_without_audio_or_labels(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "caption": "red"}\n\n')
    batch = next(FolderSource(tmp_path, image_size=4).batches(8))
    assert set(batch) == {"image", "caption", "index"}
    np.testing.assert_allclose(batch["image"][0], np.broadcast_to([1.0, 0, 0], (4, 4, 3)))


def test_folder_source_missing_root_and_captions(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no captions\.jsonl in .*captions\.jsonl"):
        FolderSource(tmp_path)


def test_folder_source_malformed_json_names_file_and_line(tmp_path):
    _write_fixture(tmp_path, with_audio=False)
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write('{"image": "img/0.png", "caption": \n')
    with pytest.raises(ValueError, match=r"captions\.jsonl:4: malformed JSON"):
        FolderSource(tmp_path)


@pytest.mark.parametrize("line,message", [
    ('{"caption": "x"}', r"captions\.jsonl:1: missing or non-string 'image'"),
    ('["img.png", "x"]', r"captions\.jsonl:1: expected a JSON object"),
    ('{"image": "gone.png", "caption": "x"}', r"image file .*gone\.png does not exist"),
])
def test_folder_source_bad_records(tmp_path, line, message):
    (tmp_path / "captions.jsonl").write_text(line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        FolderSource(tmp_path)


def test_folder_source_unreadable_image_names_the_file(tmp_path):
    _write_fixture(tmp_path, with_audio=False)
    (tmp_path / "img" / "1.png").write_bytes(b"this is not a png")
    src = FolderSource(tmp_path)  # existence is checked here, decoding when read
    with pytest.raises(ValueError, match=r"could not read image .*img/1\.png"):
        list(src.batches(3, shuffle=False))


def test_folder_source_bad_labels_and_mixed_audio(tmp_path):
    records = _write_fixture(tmp_path)
    records[1]["labels"] = {"colour": "purple"}
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(ValueError, match=r":2: label colour='purple' is not one of"):
        FolderSource(tmp_path)
    del records[1]["audio"]
    records[1]["labels"] = {"colour": 1, "shape": 0}
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(ValueError, match=r":2: has no 'audio' but other records do"):
        FolderSource(tmp_path)


def test_wav_files_decode_to_mono_and_other_rates_and_junk_are_named(tmp_path):
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as f:  # stereo 8-bit: unsigned, centred on 128
        f.setnchannels(2)
        f.setsampwidth(1)
        f.setframerate(8000)
        f.writeframes(np.array([[128, 192], [64, 128]], np.uint8).tobytes())
    np.testing.assert_allclose(read_wav(path, 8000), [0.25, -0.25])
    with pytest.raises(ValueError, match=r"x.wav is sampled at 8000 Hz, not the 16000 Hz .*resample it"):
        read_wav(path, 16000)
    (tmp_path / "y.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(ValueError, match="y.wav"):
        read_wav(tmp_path / "y.wav", 8000)


# ---- TFDSSource ----

def test_tfds_missing_names_the_extra(monkeypatch):
    from mrepe_jax.data import TFDSSource
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'mrepe_jax\[tfds\]'"):
        TFDSSource()


def test_tfds_source_on_mock_coco_captions():
    tfds = pytest.importorskip("tensorflow_datasets")
    from mrepe_jax.data import TFDSSource
    tok = ToyWorld().tokenizer
    with tfds.testing.mock_data(num_examples=5):
        src = TFDSSource("coco_captions", image_size=32, tokenize=lambda c: tok.encode(c, 16))
        batches = list(src.batches(2, split="train", epochs=2, seed=0))
        eval_batches = list(src.batches(2, split="val", shuffle=False, drop_remainder=True))
    assert [len(b["caption"]) for b in batches] == [2, 2, 1, 2, 2, 1]
    assert [len(b["caption"]) for b in eval_batches] == [2, 2]
    b = batches[0]
    assert b["image"].shape == (2, 32, 32, 3) and b["image"].dtype == np.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert all(isinstance(c, str) for c in b["caption"])
    assert b["input_ids"].shape == (2, 16) and (b["input_ids"][:, 0] == tok.bos_token_id).all()
