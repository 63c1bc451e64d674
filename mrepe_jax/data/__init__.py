"""Data: ToyWorld (a tri-modal world with ground truth), the log-mel front end, data sources.

``TFDSSource`` imports tensorflow_datasets only when constructed, so importing this package
never needs TensorFlow.
"""

from mrepe_jax.data.audio import (
    LogMelConfig,
    hann_window,
    log_mel_numpy,
    log_mel_spectrogram,
    mel_filterbank,
    n_frames,
)
from mrepe_jax.data.folder_source import FolderSource, export_toyworld, read_wav, write_wav
from mrepe_jax.data.source_base import Batch, DataSource, resize_square
from mrepe_jax.data.sources import TFDSSource, ToyWorldSource
from mrepe_jax.data.toyworld import ContrastPairs, ToyWorld, ToyWorldConfig
from mrepe_jax.data.toyworld.concepts import (
    CONCEPT_FAMILIES,
    FAMILIES,
    SAFE_COUNTERPART,
    SAFE_VALUES,
    SYNONYMS,
    UNSAFE_FAMILY,
    UNSAFE_VALUES,
    is_unsafe,
    value_index,
)
from mrepe_jax.data.toyworld.text import class_prompts, parse_caption
from mrepe_jax.data.toyworld.tokenizer import ToyTokenizer
from mrepe_jax.data.toyworld.values import (
    FAITHFUL_FAMILIES,
    VALUES,
    score,
    value_condition,
    value_conditioned_indices,
)

__all__ = [
    "Batch", "CONCEPT_FAMILIES", "ContrastPairs", "DataSource", "FAITHFUL_FAMILIES", "FAMILIES",
    "FolderSource", "LogMelConfig", "SAFE_COUNTERPART", "SAFE_VALUES", "SYNONYMS", "TFDSSource",
    "ToyTokenizer", "ToyWorld", "ToyWorldConfig", "ToyWorldSource", "UNSAFE_FAMILY",
    "UNSAFE_VALUES", "VALUES", "class_prompts", "export_toyworld", "hann_window", "is_unsafe",
    "log_mel_numpy", "log_mel_spectrogram", "mel_filterbank", "n_frames", "parse_caption",
    "read_wav", "resize_square", "score", "value_condition", "value_conditioned_indices",
    "value_index", "write_wav",
]
