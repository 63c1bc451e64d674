"""``launch.run --config=configs/clap.py`` end to end on a tiny random HF CLAP saved locally, with
TFDS (mocked ``speech_commands`` and ``coco_captions``) and with a folder of generated WAV files;
and its errors: an offline hub id, a missing folder, an unreadable WAV file and a rate that is
neither resampled nor the model's."""

import json
import zlib

import numpy as np
import pytest

from bench import common
from configs.clap import WORDS
from tests.data.wav_files import sine, write_pcm
from tests.experiments.dual_encoder_run import check_towers, small
from tests.launching import launch_in_process

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

ANIMALS = ("dog", "cat", "horse", "bird", "cow", "sheep")
VEHICLES = ("car", "bus", "train", "truck", "motorcycle", "airplane")
RATE = 16_000  # speech_commands' rate; the tiny CLAP reads 8 kHz (common.TINY_CLAP)


@pytest.fixture(scope="module")
def hf_clap(tmp_path_factory):
    """A tiny random transformers CLAP saved as a checkpoint directory (``bench.common``)."""
    d = tmp_path_factory.mktemp("hf_clap")
    common.write_hf_clap(d)
    return d


def _captions(n, seed=0):
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(ANIMALS)} near a {rng.choice(VEHICLES)}." if i % 4 else "a quiet street."
            for i in range(n)]


def _tone(label, rng, seconds=0.5):
    """A class's clip: a sine whose pitch says the class, at a random level, with noise."""
    x = sine(150 * (label + 1), RATE, seconds, amp=rng.uniform(0.3, 0.8))
    return x + 0.05 * rng.standard_normal(len(x))


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    """speech_commands: int16 tones whose pitch encodes the label (12 labels: the ten words,
    _silence_, _unknown_); coco_captions: captions naming animals and vehicles."""
    del decoders, read_config, kwargs
    n = 300
    rng = np.random.default_rng(zlib.crc32(str(split).encode()))  # each split its own examples
    if self.name == "speech_commands":
        labels = rng.integers(0, 12, n)
        audio = np.stack([np.round(_tone(k, rng) * 32767) for k in labels]).astype(np.int16)
        return tf.data.Dataset.from_tensor_slices({"audio": audio, "label": labels})
    caps = _captions(n)
    return tf.data.Dataset.from_tensor_slices({
        "captions": {"text": [[c] for c in caps], "id": [[i] for i in range(n)]},
        "image": np.zeros((n, 1, 1, 3), np.uint8)})


SMALL = ["--config.model.max_text_tokens=40",
         *small("audio", (60, 30, 30), (48, 24), batch_size=16, steer_inputs=16, captions=300)]


def launch(workdir, *overrides):
    """``python -m launch.run --config=configs/clap.py ...`` in this process (TFDS's mock lives
    here). ``--traceback``: a user error comes back as the library raised it, for pytest.raises."""
    launch_in_process("--config=configs/clap.py", f"--workdir={workdir}", "--traceback", *overrides)


def _check_run(workdir, hf_clap, classes):
    results = json.loads((workdir / "results.json").read_text())
    report = (workdir / "report.md").read_text()
    assert results["model"]["name"] == str(hf_clap) and len(results["model"]["weights_sha256"]) == 64
    assert f"# mrepe_jax — {hf_clap}" in report and results["model"]["weights_sha256"] in report
    for heading in ("## Zero-shot accuracy", "## Table 1: representation identification",
                    "## Table 2: cross-modal consistency (CMC, eq 8)", "## Table 3: intervention success rates",
                    "## Causal effects (eq 2): exact vs attribution patching"):
        assert heading in report
    assert "| family | recording accuracy |" in report and "Recording pairs: two test recordings" in report
    assert "(the mean of the last stage's tokens for recordings, <s> for captions)" in report
    assert "not a plain ViT" in results["decomposition"]["skipped"] and "Decomposition: skipped" in report
    ident = results["identification"]
    check_towers(workdir, results, str(hf_clap), {"audio": {"word": classes},
                                                  "text": {"animal": ANIMALS, "vehicle": VEHICLES}})
    assert results["steering"]["audio"]["word"]["site"] == "audio.stages.1.blocks.1.resid_post"
    assert results["steering"]["text"]["animal"]["site"] == "text.layers.1.resid_post"
    # The audio tower's identification reads every block of both stages.
    assert ident["mrepe_site"]["audio"]["word"].startswith(("audio.stages.", "audio.pooled", "audio.proj"))
    # Eq 2 sweeps the last stage's two blocks (numbered 1, 2 over the tower), not across stages.
    assert results["causal"]["audio"]["word"]["top_cell"]["layer"] in (1, 2)
    row = results["alignment"]["Text-Audio"]
    assert "| Text-Audio |" in report and 0 <= row["baseline"] <= 1 and 0 < row["p_value"] <= 1
    assert {len(row[k]) for k in ("mrepe", "linear", "procrustes")} == {2}
    for seed in results["alignment"]["seeds"]:
        assert (workdir / "maps" / f"text_to_audio_proj_seed{seed}.safetensors").is_file()
    zs = results["zero_shot_detail"]["audio"]["word"]
    assert zs["chance"] == pytest.approx(1 / len(classes)) and zs["ci95"][0] <= zs["accuracy"] <= zs["ci95"][1]
    return results, report


def test_clap_experiment_on_mocked_tfds(hf_clap, tmp_path, capsys):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        launch(tmp_path, f"--config.model.name={hf_clap}", *SMALL)
    results, report = _check_run(tmp_path, hf_clap, WORDS)
    assert "TFDS speech_commands" in report and "TFDS coco_captions" in report
    # The mock's _silence_ / _unknown_ examples are skipped: only the ten words are read.
    assert results["data"]["counts"] == {"train": 60, "validation": 30, "test": 30}
    out = capsys.readouterr().out
    assert "zero-shot recording accuracy word" in out and f"report: {tmp_path}/report.md" in out


def _write_folder(root, classes, per_split, rate=RATE):
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                write_pcm(root / split / c / f"{i:03d}.wav", _tone(k, rng, seconds=rng.uniform(0.3, 1.5)), rate)
    (root / "other").mkdir()  # a class folder the config does not list is skipped


def _folder_args(data, *more):
    return ["--config.audio.source=folder", f"--config.audio.path={data}",
            "--config.audio.classes=('bark', 'horn', 'siren')", "--config.captions.source=file",
            f"--config.captions.path={data / 'captions.txt'}", *more]


def _folder_data(root, rate=RATE):
    _write_folder(root, ("bark", "horn", "siren"), {"train": 16, "val": 8, "test": 8}, rate)
    (root / "captions.txt").write_text("\n".join(_captions(300, seed=1)) + "\n")
    return root


def test_clap_experiment_on_a_folder_of_wav_files(hf_clap, tmp_path):
    data = _folder_data(tmp_path / "data")
    work = tmp_path / "work"
    launch(work, f"--config.model.name={hf_clap}", *SMALL, *_folder_args(data))
    results, report = _check_run(work, hf_clap, ("bark", "horn", "siren"))
    assert f"folder {data}" in report
    assert results["data"]["counts"] == {"train": 48, "validation": 24, "test": 24}
    assert "train `train` (48 recordings), validation `val` (24 recordings)" in report
    assert "among the 3 classes (bark, horn, siren)" in report
    # Three pitches: the audio tower tells the classes apart somewhere.
    assert results["identification"]["mrepe"]["audio"]["word"] > 0.9


@pytest.fixture
def no_stage(monkeypatch):
    """Fails the test if the first stage starts: the checks must come before it."""
    from mrepe_jax.stages.dual_encoder import pipeline

    def started(*args, **kwargs):
        raise AssertionError("the audio stage started before the data was checked")

    monkeypatch.setattr(pipeline, "_labelled_stage", started)


def test_an_unreadable_wav_fails_before_the_first_stage_naming_it(hf_clap, tmp_path, no_stage):
    data = _folder_data(tmp_path / "data")
    broken = data / "val" / "horn" / "003.wav"
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.raises(ValueError, match=rf"{broken}"):
        launch(tmp_path / "work", f"--config.model.name={hf_clap}", *SMALL, *_folder_args(data))
    assert not (tmp_path / "work").exists()


def test_a_rate_neither_resampled_nor_the_models_fails_before_the_first_stage(hf_clap, tmp_path, no_stage):
    data = _folder_data(tmp_path / "data")
    with pytest.raises(ValueError, match=r"WAV file '.*/train/bark/000.wav' is sampled at 16000 Hz, not the "
                                         r"8000 Hz the model reads: resample it"):
        launch(tmp_path / "work", f"--config.model.name={hf_clap}", *SMALL,
               *_folder_args(data, "--config.audio.resample=False"))
    assert not (tmp_path / "work").exists()


def test_errors_are_named(hf_clap, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"could not load 'nobody/no-such-clap'.*offline"):
        launch(tmp_path, "--config.model.name=nobody/no-such-clap")
    with pytest.raises(FileNotFoundError, match=r"audio folder '/no/such/dir' does not exist"):
        launch(tmp_path, f"--config.model.name={hf_clap}", *_folder_args(tmp_path / "x")[:1],
               "--config.audio.path=/no/such/dir")
    with pytest.raises(ValueError, match=r"causal.audio_stage=2: the audio tower has 2 stages"):
        launch(tmp_path, f"--config.model.name={hf_clap}", *SMALL, *_folder_args(_folder_data(tmp_path / "d")),
               "--config.causal.audio_stage=2")
