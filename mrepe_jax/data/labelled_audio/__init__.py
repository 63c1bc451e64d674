"""Labelled audio for audio-text models (CLAP), streamed: a TFDS classification set or a folder
``<root>/<split>/<class>/*.wav``, as mono float32 waveforms at the model's rate, and class prompts.

    data = tfds_audio("speech_commands", "test", WORDS, sample_rate=48_000)   # or folder_audio(...)
    texts = prompt_texts([readable(c) for c in data.classes], SPOKEN_WORD_TEMPLATES)
    for waves, labels in data.batches(32):    # waves: list of float32 [n_i], labels: int32 [B]
        feats = log_mel_features(waves, cfg, sampling_rate=data.sample_rate)

Both readers return a ``LabelledAudio``: ``classes`` (label ``k`` is ``classes[k]``),
``sample_rate`` (Hz of what it yields) and ``batches`` / ``examples``, which decode one example at
a time, so a split of any size streams. ``folder_audio`` only lists directories;
``FolderAudio.scan()`` opens every file's header (no decoding) so that a run can refuse a
corrupt, truncated, empty or wrongly sampled file before its first stage. ``tfds_audio`` opens the
split at once, so a dataset that is not prepared (offline) fails there.

Waveforms: integer PCM divided by its full scale ``2 ** (bits - 1)`` (uint8 centred first), float
audio as stored, channels averaged, then resampled to the model's rate by
``scipy.signal.resample_poly`` unless ``resample=False``, which refuses another rate instead.

TFDS sets, both with class names in the builder's code (so the classes are known before any
download) and 16 kHz audio (CLAP's HTSAT reads 48 kHz: an exact 3x rational resampling):

* ``speech_commands`` (the default choice): 12 classes, ten words (``down go left no off on right
  stop up yes``) plus ``_silence_`` and ``_unknown_``; int16 clips of at most 1 s; splits
  ``train`` (85,511) / ``validation`` (10,102) / ``test`` (4,890); a 2.5 GB download, prepared
  without extra tools. The classes are words, so a prompt can name them directly ("the spoken word
  yes"): a clean test of whether text and audio representations of a concept meet. List the ten
  words as ``classes`` (``_unknown_`` dominates train and has no single name).
* ``nsynth`` (``label_key="instrument/family"``): 11 instrument families (bass, brass, flute,
  guitar, keyboard, mallet, organ, reed, string, synth_lead, vocal), float32 notes of 4 s; sound
  rather than speech, closer to CLAP's training captions. But preparing it downloads about 78 GB
  (the train tar alone is 74 GB) and needs Apache Beam, so it suits a prepared ``data_dir``
  rather than a first run.
"""

from mrepe_jax.data.labelled_audio.base import LabelledAudio
from mrepe_jax.data.labelled_audio.folder import FolderAudio, folder_audio, folder_classes
from mrepe_jax.data.labelled_audio.prompts import (
    INSTRUMENT_TEMPLATES,
    SOUND_TEMPLATES,
    SPOKEN_WORD_TEMPLATES,
    prompt_texts,
    readable,
)
from mrepe_jax.data.labelled_audio.rates import check_rate, resample
from mrepe_jax.data.labelled_audio.tfds_sets import TFDSAudio, tfds_audio
from mrepe_jax.data.labelled_audio.wav import WavHeader, pcm_to_float, read_header, read_wav, to_mono

__all__ = [
    "FolderAudio", "INSTRUMENT_TEMPLATES", "LabelledAudio", "SOUND_TEMPLATES", "SPOKEN_WORD_TEMPLATES",
    "TFDSAudio", "WavHeader", "check_rate", "folder_audio", "folder_classes", "pcm_to_float",
    "prompt_texts", "read_header", "read_wav", "readable", "resample", "tfds_audio", "to_mono",
]
