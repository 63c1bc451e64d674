"""``launch.run --config=configs/blip2.py`` end to end on a tiny transformers BLIP-2 trained on a tiny
world (``tiny_blip2``), with TFDS (mocked ``coco_captions``) and with a folder + JSONL; and its errors."""

import json
import zlib

import numpy as np
import pytest
from PIL import Image

from mrepe_jax.reading.bundles import load_bundle
from tests.experiments.blip2 import tiny_blip2
from tests.launching import launch_in_process

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

FAMILIES = {"colour": tiny_blip2.COLOURS, "animal": tiny_blip2.ANIMALS}
PARTS = {"vision": "EVA ViT", "qformer": "Q-Former", "lm": "OPT"}


@pytest.fixture(scope="module")
def hf_blip2(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_blip2")
    tiny_blip2.write_trained(d)
    return d


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    """coco_captions-like examples of the tiny world: each split its own images and captions."""
    del decoders, read_config, kwargs
    images, captions, _, _ = tiny_blip2.examples(160, seed=zlib.crc32(str(split).encode()))
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "captions": {"text": captions, "id": [[i, i] for i in range(len(images))]}})


WORLD = ["--config.data.families.colour=('red', 'green', 'blue')", "--config.data.families.animal=('dog', 'cat')"]
SMALL = ["--config.model.batch_size=32", "--config.data.num.train=96", "--config.data.num.validation=48",
         "--config.data.num.test=48", "--config.data.families.object=()", "--config.steer.num_inputs=16",
         "--config.steer.alphas=(1.0, 4.0)", "--config.steer.max_new_tokens=8", "--config.steer.chunk=8",
         "--config.causal.num_pairs=4", "--config.causal.prompt=a", "--config.causal.bootstrap_resamples=100"]


def launch(workdir, *overrides):
    """``python -m launch.run --config=configs/blip2.py ...`` in this process (TFDS's mock lives here),
    on the tiny world's concept words unless ``overrides`` name others."""
    world = [w for w in WORLD if not any(o.startswith(w.split("=")[0] + "=") for o in overrides)]
    launch_in_process("--config=configs/blip2.py", f"--workdir={workdir}", "--traceback", *world, *overrides)


def _check_run(workdir, hf_blip2):
    results = json.loads((workdir / "results.json").read_text())
    report = (workdir / "report.md").read_text()
    model = results["model"]
    assert model["name"] == str(hf_blip2) and len(model["weights_sha256"]) == 64
    head = report.split("## ")[0]
    assert f"# mrepe_jax — {hf_blip2}" in head and model["weights_sha256"] in head and "Data: " in head
    assert report.rstrip().splitlines()[-1].startswith("| Eq 2 Spearman")  # ends with the summary table
    assert "## Summary" in report and "## Table 1: representation identification" in report
    ident = results["identification"]
    assert set(ident) == set(FAMILIES)
    for family, values in FAMILIES.items():
        row = ident[family]
        assert set(row["parts"]) == set(PARTS.values())
        for part, tower in zip(PARTS.values(), PARTS):
            cell = row["parts"][part]
            assert cell["mrepe_site"].startswith(f"{tower}.layers.") and 0 <= cell["direction_auroc"] <= 1
            arrays, meta = load_bundle(workdir / "directions" / f"{tower}_{family}")
            assert set(arrays) == set(values) and meta["site"] == cell["direction_site"]
            assert meta["model"] == str(hf_blip2) and meta["weights_sha256"] == model["weights_sha256"]
            np.testing.assert_allclose(np.linalg.norm(np.stack(list(arrays.values())), axis=-1), 1.0, atol=1e-5)
        assert row["baseline"] <= row["mrepe"] + 0.1
    # The tint is the colour: somewhere in each part a colour direction separates the test images.
    assert all(ident["colour"]["parts"][p]["direction_auroc"] > 0.9 for p in PARTS.values())

    steer = results["steering"]["sites"]
    assert set(steer) == {"qformer", "lm"} and steer["qformer"]["site"] == "qformer.layers.1.resid_post"
    assert steer["lm"]["site"] == "lm.layers.1.resid_post"  # the middle of OPT's 2 layers
    for r in steer.values():
        for family in FAMILIES:
            cells = r["families"][family]
            assert set(cells["direct"]) == {"1.0", "4.0"}
            for cell in [cells["none"], cells["ap"], *cells["direct"].values()]:
                assert 0 <= cell["success"] <= 1 and (cell["kept"] is None or 0 <= cell["kept"] <= 1)
    # The unsteered captions name the true colour, so never another target; steering names it.
    colour = steer["qformer"]["families"]["colour"]
    assert colour["none"]["success"] < 0.1
    assert max(c["success"] for c in colour["direct"].values()) > colour["none"]["success"] + 0.3
    assert "## Table 3: steering what BLIP-2 says (captions)" in report

    causal = results["causal"]
    assert "## Causal effects (eq 2): exact vs attribution patching" in report
    for tower in ("qformer", "lm"):
        for family in FAMILIES:
            r = causal[tower][family]
            assert -1 <= r["spearman_exact_vs_attribution"] <= 1 and r["num_pairs"] == 4
            assert (workdir / f"patching_{tower}_{family}_layer_position.png").stat().st_size > 1000
    # Swapping the image swaps the colour word's logit: the total effect on colour pairs is large.
    assert causal["qformer"]["colour"]["total_effect"] < -1.0
    return results, report


def test_blip2_experiment_on_mocked_tfds_coco_captions(hf_blip2, tmp_path, capsys):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        launch(tmp_path, f"--config.model.name={hf_blip2}", *SMALL)
    results, report = _check_run(tmp_path, hf_blip2)
    assert "TFDS coco_captions" in report and results["data"]["images"] == {"train": 96, "validation": 48,
                                                                              "test": 48}
    out = capsys.readouterr().out
    assert "Table 3 Q-Former output success" in out and f"report: {tmp_path}/report.md" in out


def _write_folder(root, n=200):
    images, captions, _, _ = tiny_blip2.examples(n, seed=7)
    lines = []
    for i, (img, caps) in enumerate(zip(images, captions)):
        path = root / "img" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        lines.append(json.dumps({"image": f"img/{i:03d}.png", "captions": caps}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _folder_args(root):
    return ["--config.data.source=folder", f"--config.data.path={root}",
            f"--config.data.captions_file={root / 'captions.jsonl'}"]


def test_blip2_experiment_on_a_folder_with_jsonl_captions(hf_blip2, tmp_path):
    data = _write_folder(tmp_path / "data")
    launch(tmp_path / "work", f"--config.model.name={hf_blip2}", "--config.model.dtype=bfloat16", *SMALL,
           *_folder_args(data))
    results, report = _check_run(tmp_path / "work", hf_blip2)
    assert f"folder {data}" in report and "(bfloat16;" in report
    assert results["data"]["images"] == {"train": 96, "validation": 40, "test": 40}  # 200 split 3:1:1


@pytest.fixture
def no_stage(monkeypatch):
    """Fails the test if the first stage starts: the checks must come before it."""
    from mrepe_jax.experiments.blip2 import pipeline

    def started(*args, **kwargs):
        raise AssertionError("identification started before the data was checked")

    monkeypatch.setattr(pipeline, "_identify", started)


def test_errors_are_named_before_any_stage(hf_blip2, tmp_path, monkeypatch, no_stage):
    t5 = tmp_path / "t5"
    tiny_blip2.write_t5(t5)
    with pytest.raises(ValueError, match=r"BLIP-2 with a 't5' language model .* is not supported: only OPT "
                                         r"decoders \(Salesforce/blip2-opt-\*\)"):
        launch(tmp_path / "w", f"--config.model.name={t5}", *SMALL)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"could not load 'nobody/no-such-blip2'.*offline"):
        launch(tmp_path / "w", "--config.model.name=nobody/no-such-blip2", *SMALL)
    with pytest.raises(FileNotFoundError, match=r"captions file '/no/such/captions.jsonl' does not exist"):
        launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, "--config.data.source=folder",
               "--config.data.captions_file=/no/such/captions.jsonl")
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        with pytest.raises(FileNotFoundError, match="TFDS has no dataset 'coco_captionz'"):
            launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, "--config.data.name=coco_captionz")
    data = _write_folder(tmp_path / "data", n=60)
    with pytest.raises(ValueError, match=r"no caption of the 60 images read names these concept words: "
                                         r"animal: zebra; colour: purple \(folder .*drop them from data.families"):
        launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, *_folder_args(data),
               "--config.data.families.animal=('dog', 'zebra')",
               "--config.data.families.colour=('red', 'purple')")
    with pytest.raises(ValueError, match=r"steer.lm_layer 5 is out of range: OPT has 2 layers \(0-1\)"):
        launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, *_folder_args(data),
               "--config.steer.lm_layer=5")
    broken = data / "img" / "007.png"
    good = broken.read_bytes()
    broken.write_bytes(good[:200])
    with pytest.raises(ValueError, match=rf"could not read image {broken}: .*truncated"):
        launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, *_folder_args(data))
    broken.write_bytes(good)
    bad = data / "bad.jsonl"
    bad.write_text('{"image": "img/000.png", "captions": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: \"captions\" must be a non-empty list"):
        launch(tmp_path / "w", f"--config.model.name={hf_blip2}", *SMALL, "--config.data.source=folder",
               f"--config.data.captions_file={bad}")
    assert not (tmp_path / "w").exists()
