"""``launch.run --config=configs/clip.py`` end to end on a tiny random HF CLIP saved locally, with
TFDS (mocked ``cifar10`` and ``coco_captions``) and with a local folder; and its errors."""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from absl import app
from PIL import Image

from bench import common
from configs.clip import CIFAR10
from mrepe_jax.report.workdir import WorkdirError
from tests.experiments.dual_encoder_run import check_towers, small
from tests.launching import launch_in_process
from tests.xla_flags import with_compile_flags

ROOT = Path(__file__).resolve().parents[3]
tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

COLOURS = ("red", "blue", "green", "yellow", "white", "black")
ANIMALS = ("dog", "cat", "horse", "bird", "cow", "sheep")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A tiny random transformers CLIP saved as a checkpoint directory (``bench.common``)."""
    d = tmp_path_factory.mktemp("hf_clip")
    common.write_hf_clip(d)
    return d


def _captions(n, seed=0):
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(COLOURS)} {rng.choice(ANIMALS)} on grass." if i % 4 else "a plain field."
            for i in range(n)]


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    """Mock examples: cifar10-like labelled 32x32 images and coco-like captions naming colours and
    animals (TFDS's own mock captions are random letters, which name no concept)."""
    del decoders, read_config, kwargs
    n = 400
    rng = np.random.default_rng(zlib.crc32(str(split).encode()))  # each split its own examples
    if self.name == "cifar10":
        return tf.data.Dataset.from_tensor_slices({
            "image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
            "label": rng.integers(0, 10, n), "id": [str(i) for i in range(n)]})
    caps = _captions(n)
    return tf.data.Dataset.from_tensor_slices({
        "captions": {"text": [[c] for c in caps], "id": [[i] for i in range(n)]},
        "image": np.zeros((n, 1, 1, 3), np.uint8)})


SMALL = small("images", (96, 64, 64), (64, 32), batch_size=32, steer_inputs=24, captions=400)


def launch(workdir, *overrides):
    """``python -m launch.run --config=configs/clip.py ...`` in this process (TFDS's mock lives
    here). ``--traceback``: a user error comes back as the library raised it, for pytest.raises."""
    launch_in_process("--config=configs/clip.py", f"--workdir={workdir}", "--traceback", *overrides)


def _check_run(workdir, hf_clip, towers_families):
    results = json.loads((workdir / "results.json").read_text())
    report = (workdir / "report.md").read_text()
    assert results["model"]["name"] == str(hf_clip) and len(results["model"]["weights_sha256"]) == 64
    assert f"# mrepe_jax — {hf_clip}" in report and results["model"]["weights_sha256"] in report
    assert "## Table 1: representation identification" in report
    assert "## Causal effects (eq 2): exact vs attribution patching" in report
    check_towers(workdir, results, str(hf_clip), towers_families)
    dec = results["decomposition"]  # the tiny CLIP's vision tower: 2 layers x 2 heads
    assert [(h["layer"], h["head"]) for h in dec["heads"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tol = 1e-5 if results["model"]["dtype"] == "float32" else 2e-2  # bf16 keeps ~3 digits
    assert dec["sum_error"] <= tol * max(1.0, dec["embedding_scale"]) and dec["num_images"] > 0
    assert all(len(h["texts"]) == 3 and len(set(h["texts"])) == 3 for h in dec["heads"])
    assert "## Where the image embedding comes from (TextSpan)" in report
    assert (workdir / "patching_vision_object_layer_head.png").is_file()
    assert "## Table 3: intervention success rates" in report
    assert "## Table 2: cross-modal consistency (CMC, eq 8)" in report
    row = results["alignment"]["Text-Image"]
    assert 0 <= row["baseline"] <= 1 and 0 < row["p_value"] <= 1
    assert {len(row[k]) for k in ("mrepe", "linear", "procrustes")} == {2}
    for seed in results["alignment"]["seeds"]:
        assert (workdir / "maps" / f"text_to_vision_proj_seed{seed}.safetensors").is_file()
    return results, report


def test_clip_experiment_on_mocked_tfds(hf_clip, tmp_path, capsys):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        launch(tmp_path, f"--config.model.name={hf_clip}", "--config.model.dtype=bfloat16", *SMALL)
    results, report = _check_run(tmp_path, hf_clip, {
        "vision": {"object": CIFAR10},
        "text": {"colour": COLOURS, "animal": ANIMALS}})
    assert "TFDS cifar10" in report and "TFDS coco_captions" in report
    assert results["model"]["dtype"] == "bfloat16" and "(bfloat16)" in report
    labelled = results["data"]["labelled_captions"]
    # 3 of 4 captions name one colour and one animal; i % 5 puts 3/5 of them in train.
    assert labelled["colour"]["train"] == labelled["animal"]["train"] == sum(
        1 for i in range(400) if i % 4 and i % 5 < 3)
    out = capsys.readouterr().out
    assert "zero-shot image accuracy object" in out and f"report: {tmp_path}/report.md" in out


def _write_folder(root, classes, per_split):
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):  # each class its own tint, so that its images differ from others'
                img = rng.integers(0, 120, (40, 48, 3)) + np.eye(3, dtype=int)[k] * 120
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i:03d}.png")
    (root / "other").mkdir()  # a class folder the config does not list is skipped


def _folder_args(data):
    return ["--config.images.source=folder", f"--config.images.path={data}",
            f"--config.decomposition.masks_path={data / 'masks'}",
            "--config.images.classes=('cat', 'dog', 'ship')", "--config.captions.source=file",
            f"--config.captions.path={data / 'captions.txt'}"]


def _folder_data(root):
    _write_folder(root, ("cat", "dog", "ship"), {"train": 16, "val": 8, "test": 8})
    for image in (root / "test").rglob("*.png"):  # each test image's object: its left half
        mask = root / "masks" / image.relative_to(root)
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.arange(48)[None, :] < 24).repeat(40, 0).astype(np.uint8) * 255).save(mask)
    (root / "captions.txt").write_text("\n".join(_captions(400, seed=1)) + "\n")
    return root


@pytest.fixture(scope="module")
def folder_run(hf_clip, tmp_path_factory):
    """One finished run on a local folder: ``(data dir, workdir)``."""
    data = _folder_data(tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("run") / "work"
    launch(work, f"--config.model.name={hf_clip}", *SMALL, *_folder_args(data))
    return data, work


def test_clip_experiment_on_a_local_folder(hf_clip, folder_run):
    data, work = folder_run
    results, report = _check_run(work, hf_clip, {"vision": {"object": ("cat", "dog", "ship")},
                                                 "text": {"colour": COLOURS, "animal": ANIMALS}})
    assert f"folder {data}" in report
    assert results["data"]["counts"] == {"train": 48, "validation": 24, "test": 24}
    # The report names the classes and the images read, not the config's caps.
    assert "train `train` (48 images), validation `val` (24 images), test `test` (24 images)" in report
    assert "among the 3 classes (cat, dog, ship)" in report and "at most" not in report.split("Captions:")[0]
    zs = results["zero_shot_detail"]["vision"]["object"]
    assert zs["num_test"] == 24 and zs["chance"] == pytest.approx(1 / 3)
    assert zs["ci95"][0] <= zs["accuracy"] <= zs["ci95"][1]
    assert set(results["steering"]["vision"]["object"]["per_target"]) <= {"cat", "dog", "ship"}
    assert set(results["steering"]["text"]["colour"]["per_target"]) <= set(COLOURS)
    # One image family: its Table 1 figure alone, no "± 0.000" over one family.
    baseline = next(line for line in report.splitlines() if line.startswith(f"| {hf_clip} (Baseline) |"))
    text_cell, image_cell = baseline.split("|")[2:4]
    assert "±" in text_cell and "±" not in image_cell and float(image_cell) > 0
    seg = results["decomposition"]["segmentation"]
    assert set(seg) == {"decomposition (TextSpan)", "last-layer tokens", "attention rollout",
                        "all background (reference)"}
    assert all(0 <= v["miou"] <= 1 for v in seg.values())
    # Half of each (preprocessed, centre-cropped) image is the object: all background is half right.
    assert abs(seg["all background (reference)"]["pixel_accuracy"] - 0.5) < 0.1
    # Three tints: the vision tower tells the classes apart somewhere.
    assert results["identification"]["mrepe"]["vision"]["object"] > 0.9


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_of_another_model_into_a_finished_workdir_refuses_before_writing(folder_run, tmp_path):
    data, work = folder_run
    other = tmp_path / "other_clip"
    common.write_hf_clip(other, seed=1)
    before = _snapshot(work)
    with pytest.raises(WorkdirError, match=r"holds a run with other settings \(config.model.name: .*"
                                           r"model.weights_sha256: .*nothing was written"):
        launch(work, f"--config.model.name={other}", *SMALL, *_folder_args(data))
    assert _snapshot(work) == before
    # A run that stopped before writing leaves only its claim, which another run may take over.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "leftover.txt").write_text("x")
    with pytest.raises(WorkdirError, match=r"already holds files \(leftover.txt\) but no run.json"):
        launch(fresh, f"--config.model.name={other}", *SMALL, *_folder_args(data))


@pytest.fixture
def no_stage(monkeypatch):
    """Fails the test if the first stage starts: the checks must come before it."""
    from mrepe_jax.stages.dual_encoder import pipeline

    def started(*args, **kwargs):
        raise AssertionError("the image stage started before the data was checked")

    monkeypatch.setattr(pipeline, "_labelled_stage", started)


def test_a_too_small_folder_fails_before_the_first_stage_naming_the_batch_size(hf_clip, tmp_path, no_stage):
    data = _folder_data(tmp_path / "data")
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=r"alignment fits its mrepe, linear maps on 48 train pairs .*"
                                         r"the folder's train split holds 48 images\), fewer than one batch "
                                         r"of align.map.batch_size=128: set --config.align.map.batch_size=32 \(the "
                                         r"largest size up to 48 that divides align.map.memory_size=128\)"):
        launch(work, f"--config.model.name={hf_clip}", *SMALL, *_folder_args(data),
               "--config.align.map.batch_size=128", "--config.align.map.memory_size=128")
    assert not work.exists()


def test_a_truncated_image_fails_before_the_first_stage_naming_it(hf_clip, tmp_path, no_stage):
    data = _folder_data(tmp_path / "data")
    broken = data / "test" / "dog" / "005.png"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"could not read image {broken}: .*truncated"):
        launch(tmp_path / "work", f"--config.model.name={hf_clip}", *SMALL, *_folder_args(data))
    assert not (tmp_path / "work").exists()


def test_captions_naming_no_family_word_fail_before_the_first_stage(hf_clip, tmp_path, no_stage):
    data = _folder_data(tmp_path / "data")
    # Every animal is named, of the colours only blue.
    (data / "captions.txt").write_text("".join(f"a blue {a} in a field.\n" for a in ANIMALS * 20))
    with pytest.raises(ValueError, match=r"no train caption names \['red', 'green', 'yellow', 'white', "
                                         r"'black'\] of family 'colour'.*captions.families.colour"):
        launch(tmp_path / "work", f"--config.model.name={hf_clip}", *SMALL, *_folder_args(data))


def test_errors_are_named(hf_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"could not load 'nobody/no-such-clip'.*offline"):
        launch(tmp_path, "--config.model.name=nobody/no-such-clip")
    with pytest.raises(ValueError, match=r"model.dtype 'float16' is not one of \['bfloat16', 'float32'\]"):
        launch(tmp_path, f"--config.model.name={hf_clip}", "--config.model.dtype=float16")
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        with pytest.raises(FileNotFoundError, match="TFDS has no dataset 'cifar11'"):
            launch(tmp_path, f"--config.model.name={hf_clip}", "--config.images.name=cifar11")
        with pytest.raises(ValueError, match=r"TFDS dataset 'cifar10' \('label'\) has 10 unnamed labels "
                                             r"\(0..9\) here; list all 10 class names in label order, "
                                             r"not \['cat', 'unicorn'\]"):
            launch(tmp_path, f"--config.model.name={hf_clip}",
                   "--config.images.classes=('cat', 'unicorn')")
    with pytest.raises(FileNotFoundError, match=r"image folder '/no/such/dir' does not exist"):
        launch(tmp_path, f"--config.model.name={hf_clip}", "--config.images.source=folder",
               "--config.images.path=/no/such/dir")
    with pytest.raises(app.UsageError,
                       match=r"names experiment 'nope'; known experiments: blip2, clap, clip, toyworld"):
        launch(tmp_path, "--config.experiment=nope")


def _floats(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k not in ("seconds", "stage_seconds"):
                yield from _floats(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _floats(v, f"{path}[{i}]")
    elif isinstance(tree, float):
        yield path, tree


@pytest.mark.slow
def test_the_folder_run_on_a_2x4_mesh_gives_the_one_device_figures(hf_clip, folder_run, tmp_path):
    """The same run on 8 virtual devices as a (data 2, model 4) mesh: the CLIP's params loaded
    into shards over model, reads, patching sweeps and map fits split over data. Every figure of
    the one-device run. Slow (~1.5 min on 2 cores): ``make test-slow``."""
    data, work = folder_run
    env = dict(os.environ, XLA_FLAGS=with_compile_flags("--xla_force_host_platform_device_count=8"),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.run", "--config=configs/clip.py", f"--workdir={tmp_path / 'mesh'}",
         f"--config.model.name={hf_clip}", *SMALL, *_folder_args(data), "--config.mesh.shape=(2,4)"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((work / "results.json").read_text())
    many = json.loads((tmp_path / "mesh" / "results.json").read_text())
    keys = ("zero_shot", "identification", "alignment", "steering", "causal")
    a, b = dict(_floats({k: one[k] for k in keys})), dict(_floats({k: many[k] for k in keys}))
    assert a.keys() == b.keys() and len(a) > 100
    worst = max(a, key=lambda p: abs(a[p] - b[p]))
    print("largest difference:", worst, a[worst], b[worst])
    for path, x in a.items():
        # Measured: at most 6e-8 (a map's CMC); rank statistics could flip on a near-tie at 1e-7.
        assert abs(b[path] - x) <= 1e-5, (path, x, b[path])
