"""Labelled audio: WAV decoding (PCM widths, float, channels) against the generated signal, headers
and their errors, resampling, the folder layout and its errors, prompts, and TFDS (mocked)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from scipy.io import wavfile

from mrepe_jax.data.labelled_audio import (
    SPOKEN_WORD_TEMPLATES,
    folder_audio,
    pcm_to_float,
    prompt_texts,
    read_header,
    read_wav,
    readable,
    resample,
    tfds_audio,
    to_mono,
)
from tests.data.wav_files import sine, write_pcm

SPEECH_WORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")


def peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


# ---- decoding ----

@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_decodes_to_the_written_samples_scaled_by_full_scale(tmp_path, bits, channels):
    x = sine(440, 16000, 0.05, amp=0.9)
    x = np.stack([x, -0.5 * x], 1) if channels == 2 else x
    q = write_pcm(tmp_path / "a.wav", x, 16000, bits)
    wave_, header = read_wav(tmp_path / "a.wav")
    assert (header.sample_rate, header.channels, header.bits, header.is_float, header.frames) == \
        (16000, channels, bits, False, len(q))
    assert wave_.dtype == np.float32 and wave_.shape == (len(q),)
    want = (q / 2.0 ** (bits - 1)).mean(1)  # channels averaged
    np.testing.assert_allclose(wave_, want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(wave_, x.mean(1) if channels == 2 else x,
                               atol=1.0 / 2 ** (bits - 1) + 1e-7)  # quantisation, then float32


def test_16_bit_extremes_map_to_minus_one_and_just_below_one(tmp_path):
    write_pcm(tmp_path / "a.wav", np.array([-1.0, 0.0, 1.0]), 8000)
    wave_, _ = read_wav(tmp_path / "a.wav")
    np.testing.assert_array_equal(wave_, np.array([-32768, 0, 32767], np.float32) / 32768)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_wav_comes_back_as_stored(tmp_path, dtype):
    x = np.stack([sine(300, 22050, 0.02), sine(500, 22050, 0.02)], 1).astype(dtype)
    wavfile.write(tmp_path / "f.wav", 22050, x)
    wave_, header = read_wav(tmp_path / "f.wav")
    assert header.is_float and header.bits == 8 * np.dtype(dtype).itemsize and header.channels == 2
    np.testing.assert_allclose(wave_, x.mean(1), rtol=1e-6, atol=1e-7)


def test_a_wav_with_an_odd_sized_extra_chunk_reads(tmp_path):
    pcm = (np.arange(10, dtype="<i2") * 100).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 5) + b"abcde\0"
            + b"data" + struct.pack("<I", len(pcm)) + pcm)
    (tmp_path / "x.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    wave_, header = read_wav(tmp_path / "x.wav")
    assert header.frames == 10
    np.testing.assert_array_equal(wave_, np.arange(10, dtype=np.float32) * 100 / 32768)


def test_pure_conversions():
    np.testing.assert_array_equal(pcm_to_float(np.array([0, 128, 255], np.uint8)),
                                  np.array([-1, 0, 127 / 128], np.float32))
    np.testing.assert_array_equal(pcm_to_float(np.array([-32768, 16384], np.int64), bits=16), [-1, 0.5])
    with pytest.raises(ValueError, match="int64 audio samples do not say their sample width; pass bits"):
        pcm_to_float(np.zeros(3, np.int64))
    np.testing.assert_array_equal(to_mono(np.array([[1.0, 0.0], [0.5, 0.5]])), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\) is neither"):
        to_mono(np.zeros((2, 2, 2)))


# ---- header errors ----

def test_unreadable_wavs_name_the_file_and_the_reason(tmp_path):
    write_pcm(tmp_path / "good.wav", sine(440, 8000, 0.1), 8000)
    good = (tmp_path / "good.wav").read_bytes()
    cases = {
        "junk.wav": (b"hello, not audio", r"not a RIFF/WAVE file \(it starts b'hell'"),
        "tiny.wav": (b"RIFF", "4 bytes is too short for a WAV header"),
        "cut.wav": (good[:200], r"truncated: the header announces 1600 bytes of audio, the file holds 156"),
        "nodata.wav": (good[:36], "no data chunk"),
        "adpcm.wav": (good[:20] + struct.pack("<H", 2) + good[22:], "format tag 0x0002 is not supported"),
        "bits.wav": (good[:34] + struct.pack("<H", 12) + good[36:], r"12-bit PCM samples are not supported"),
        "align.wav": (good[:32] + struct.pack("<H", 4) + good[34:],
                      r"its block align 4 does not fit 1 channel\(s\) of 16-bit samples"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"cannot read WAV file '.*{name}': {reason}"):
            read_header(tmp_path / name)
        with pytest.raises(ValueError, match=rf"cannot read WAV file '.*{name}'"):
            read_wav(tmp_path / name)
    write_pcm(tmp_path / "empty.wav", np.zeros(0), 8000)
    with pytest.raises(ValueError, match=r"empty.wav': it holds no samples \(an empty clip\)"):
        read_wav(tmp_path / "empty.wav")


# ---- resampling ----

@pytest.mark.parametrize("rate, target", [(22050, 16000), (22050, 48000), (16000, 48000), (48000, 16000)])
def test_resampling_keeps_the_frequency_and_scales_the_length(rate, target):
    x = sine(440, rate, 0.25)
    y = resample(x, rate, target)
    assert y.dtype == np.float32 and len(y) == math.ceil(len(x) * target / rate)
    assert abs(peak_hz(y, target) - 440) <= target / len(y)  # within one FFT bin
    mid = slice(len(y) // 4, 3 * len(y) // 4)  # away from the filter's edge transients
    np.testing.assert_allclose(np.abs(y[mid]).max(), 0.5, atol=0.01)
    np.testing.assert_array_equal(resample(x, rate, rate), x.astype(np.float32))


# ---- folders ----

def make_folder(root, split="train", spec=None):
    """``spec``: {class: [(rate, bits, channels), ...]}; each file a sine whose frequency encodes
    its class. Returns {path: float signal written}."""
    spec = spec or {"dog": [(16000, 16, 1), (22050, 8, 2)], "cat": [(48000, 16, 2)], "bird": [(16000, 24, 1)]}
    out = {}
    for k, (cls, files) in enumerate(sorted(spec.items())):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (rate, bits, channels) in enumerate(files):
            x = sine(200 * (k + 1), rate, 0.1)
            x = np.stack([x] * channels, 1) if channels > 1 else x
            path = root / split / cls / f"{i}.wav"
            write_pcm(path, x, rate, bits)
            out[path] = (rate, x)
    return out


def test_folder_reads_every_class_resampled_to_the_model_rate(tmp_path):
    written = make_folder(tmp_path)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    data = folder_audio(tmp_path, "train", sample_rate=16000)
    assert data.classes == ("bird", "cat", "dog") and data.sample_rate == 16000
    # Classes interleave so that a prefix holds each: bird0, cat0, dog0, dog1.
    assert [(p.parent.name, p.name, label) for p, label in data.files] == \
        [("bird", "0.wav", 0), ("cat", "0.wav", 1), ("dog", "0.wav", 2), ("dog", "1.wav", 2)]
    headers = data.scan()
    assert [h.sample_rate for h in headers] == [16000, 48000, 16000, 22050]
    batches = list(data.batches(3))
    assert [len(w) for w, _ in batches] == [3, 1]
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in batches]), [0, 1, 2, 2])
    waves = [w for ws, _ in batches for w in ws]
    for (path, label), w in zip(data.files, waves):
        rate, _ = written[path]
        assert w.dtype == np.float32 and w.ndim == 1
        assert len(w) == math.ceil(round(rate * 0.1) * 16000 / rate)
        assert abs(peak_hz(w, 16000) - 200 * (label + 1)) <= 16000 / len(w)
    # Files already at the model's rate are not touched.
    np.testing.assert_array_equal(waves[0], read_wav(data.files[0][0])[0])


def test_folder_class_list_subset_order_and_limit(tmp_path):
    make_folder(tmp_path)
    data = folder_audio(tmp_path, "train", ("dog", "bird"), sample_rate=16000, limit=2)
    assert data.classes == ("dog", "bird")
    assert [(p.parent.name, label) for p, label in data.files] == [("dog", 0), ("bird", 1)]


def test_folder_without_resampling_refuses_another_rate_up_front(tmp_path):
    make_folder(tmp_path)
    data = folder_audio(tmp_path, "train", sample_rate=16000, resample=False)
    msg = (r"WAV file '.*cat/0.wav' is sampled at 48000 Hz, not the 16000 Hz the model reads: "
           r"resample it \(resample=True\)")
    with pytest.raises(ValueError, match=msg):
        data.scan()
    batches = data.batches(1)
    assert next(batches)[1].tolist() == [0]  # bird/0.wav is at 16 kHz
    with pytest.raises(ValueError, match=msg):
        next(batches)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"audio folder '.*nope' does not exist \(laid out as "
                                                r"<root>/<split>/<class>/\*.wav\)"):
        folder_audio(tmp_path / "nope", "train", sample_rate=16000)
    make_folder(tmp_path)
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"has no split folder 'test' \(looked for '.*/test'; "
                                                r"it holds readme.md, train/\)"):
        folder_audio(tmp_path, "test", sample_rate=16000)
    with pytest.raises(ValueError, match=r"classes \['cow'\] are not labels of audio folder '.*train' "
                                         r"\(its class subfolders\); its labels are \['bird', 'cat', 'dog'\]"):
        folder_audio(tmp_path, "train", ("dog", "cow"), sample_rate=16000)
    (tmp_path / "train" / "cow").mkdir()
    (tmp_path / "train" / "cow" / "x.mp3").write_bytes(b"")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['cow'\] hold no .wav files"):
        folder_audio(tmp_path, "train", sample_rate=16000)
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match=r"audio folder '.*val' has no class subfolders"):
        folder_audio(tmp_path, "val", sample_rate=16000)


def test_a_corrupt_file_stops_scan_up_front_and_batches_only_when_reached(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "1.wav"
    bad.write_bytes(bad.read_bytes()[:100])
    data = folder_audio(tmp_path, "train", sample_rate=16000)
    with pytest.raises(ValueError, match=r"cannot read WAV file '.*dog/1.wav': truncated"):
        data.scan()
    batches = data.batches(3)
    assert len(next(batches)[0]) == 3  # decoded lazily: the first batch does not touch dog/1.wav
    with pytest.raises(ValueError, match=r"dog/1.wav': truncated"):
        next(batches)


# ---- prompts ----

def test_prompts_are_class_major_and_templates_are_checked():
    texts = prompt_texts([readable(c) for c in ("yes", "_silence_")], SPOKEN_WORD_TEMPLATES)
    assert texts == ["the spoken word yes.", "a person saying the word yes.",
                     "the spoken word silence.", "a person saying the word silence."]
    assert readable("synth_lead") == "synth lead"
    for bad in ("no slot", "{} and {}", "{name}", "a { b {}"):
        with pytest.raises(ValueError, match="must hold exactly one"):
            prompt_texts(["x"], [bad])
    with pytest.raises(ValueError, match="no prompt templates"):
        prompt_texts(["x"], [])


# ---- TFDS ----

@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    """speech_commands: int16 sines whose frequency encodes the label (split "validation" holds an
    empty clip); nsynth: float32 notes labelled by instrument family."""
    import tensorflow as tf
    del decoders, read_config, kwargs
    n = 24

    def speech():
        for i in range(n):
            label = i % 12
            length = 0 if (str(split) == "validation" and i == 2) else 1600 - 100 * (i % 3)
            pcm = np.round(sine(100 * (label + 1), 16000, length / 16000, amp=0.8) * 32767).astype(np.int16)
            yield {"audio": pcm, "label": label}

    def notes():
        for i in range(n):
            yield {"audio": sine(110 * (i % 11 + 1), 16000, 0.05).astype(np.float32),
                   "instrument": {"family": i % 11, "source": 0, "label": 0}}

    if self.name == "speech_commands":
        spec = {"audio": tf.TensorSpec([None], tf.int16), "label": tf.TensorSpec([], tf.int64)}
        return tf.data.Dataset.from_generator(speech, output_signature=spec)
    spec = {"audio": tf.TensorSpec([None], tf.float32),
            "instrument": {k: tf.TensorSpec([], tf.int64) for k in ("family", "source", "label")}}
    return tf.data.Dataset.from_generator(notes, output_signature=spec)


def test_tfds_speech_commands_rate_names_values_and_resampling(tfds):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        native = tfds_audio("speech_commands", "test", SPEECH_WORDS)
        up = tfds_audio("speech_commands", "test", ("yes", "down"), sample_rate=48000, limit=3)
        assert native.sample_rate == native.source_rate == 16000 and native.classes == SPEECH_WORDS
        examples = list(native.examples())
        ups = list(up.batches(2))
    assert len(examples) == 20  # 24 examples, _silence_ and _unknown_ unlisted
    for i, (w, label) in enumerate(examples):
        src = i + 2 * (i // 10)  # the index in the mock stream, skipping labels 10 and 11
        want = np.round(sine(100 * (label + 1), 16000, (1600 - 100 * (src % 3)) / 16000, amp=0.8) * 32767)
        assert label == src % 12 and w.dtype == np.float32
        np.testing.assert_array_equal(w, (want / 32768).astype(np.float32))
    assert up.sample_rate == 48000 and up.source_rate == 16000
    assert [lab.tolist() for _, lab in ups] == [[1, 0], [1]]  # down, yes, down (limit 3)
    for w, label in zip(ups[0][0] + ups[1][0], [1, 0, 1]):
        word = SPEECH_WORDS.index(up.classes[label])
        assert len(w) % 3 == 0 and abs(peak_hz(w, 48000) - 100 * (word + 1)) <= 48000 / len(w)


def test_tfds_random_mock_data_through_the_real_feature_spec(tfds):
    with tfds.testing.mock_data(num_examples=6):
        data = tfds_audio("speech_commands", "train")
        batches = list(data.batches(4))
    assert data.classes[-2:] == ("_silence_", "_unknown_") and len(data.classes) == 12
    waves = [w for ws, _ in batches for w in ws]
    assert len(waves) == 6 and all(w.dtype == np.float32 and w.ndim == 1 for w in waves)
    assert all(-1 <= w.min() and w.max() < 1 for w in waves if w.size)


def test_tfds_nested_label_key_and_float_audio(tfds):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        data = tfds_audio("nsynth", "test", ("guitar", "bass"), label_key="instrument/family",
                          sample_rate=48000, limit=4)
        (waves, labels), = list(data.batches(8))
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])  # the stream's families: bass, guitar, bass, guitar
    assert all(len(w) == 2400 for w in waves)
    assert abs(peak_hz(waves[0], 48000) - 110) <= 48000 / 2400


def test_tfds_errors(tfds, tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        with pytest.raises(ValueError, match=r"TFDS dataset 'speech_commands' split 'test' is sampled at "
                                             r"16000 Hz, not the 48000 Hz the model reads: resample it "
                                             r"\(resample=True\)"):
            tfds_audio("speech_commands", "test", sample_rate=48000, resample=False)
        with pytest.raises(ValueError, match=r"classes \['maybe'\] are not labels of TFDS dataset "
                                             r"'speech_commands' \('label'\); its labels are \['down'"):
            tfds_audio("speech_commands", "test", ("yes", "maybe"))
        with pytest.raises(ValueError, match=r"no feature 'instrument/kind'; its features are \[.*"
                                             r"'instrument/family'"):
            tfds_audio("nsynth", "test", label_key="instrument/kind")
        with pytest.raises(ValueError, match=r"'spoken_digit' stores its audio as int64.*pass pcm_bits"):
            tfds_audio("spoken_digit", "train")
        data = tfds_audio("speech_commands", "validation")
        with pytest.raises(ValueError, match=r"'speech_commands' split 'validation': example 2 holds an empty clip"):
            list(data.batches(4))
    with pytest.raises(FileNotFoundError, match=r"could not read TFDS dataset 'speech_commands' split 'test' "
                                                r"\(data_dir='.*', download=False\).*not prepared there "
                                                r"\(looked in '.*speech_commands.*'\): pass download=True"):
        tfds_audio("speech_commands", "test", data_dir=str(tmp_path), download=False)
