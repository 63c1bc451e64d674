"""A CLAP checkpoint for the dual-encoder stages: ``models.clap.load_pretrained``, its rule table,
its own RoBERTa tokenizer and ``ClapFeatureExtractor`` settings (``models.clap.features``).

Fused checkpoints (``clap-htsat-fused``) run without ``is_longer``, which the stages do not carry:
every recording goes through the global mel only, not the local-crop fusion. For recordings up to
the extractor's ``max_length_s`` (speech commands' 1 s) that is what HF computes, except that HF's
extractor flags one random recording per batch as longer when none is, which we do not; a longer
recording is read as its whole mel shrunk to the model's frames."""

from __future__ import annotations

import ml_collections
import numpy as np

from mrepe_jax.experiments.clap.data import Audio
from mrepe_jax.models.clap import convert as clap_convert
from mrepe_jax.models.clap.features import AudioFeatureConfig, log_mel_features
from mrepe_jax.models.clap.sharding import CLAP_RULES
from mrepe_jax.models.clip.preprocess import load_tokenizer, tokenize
from mrepe_jax.stages.dual_encoder.checkpoint import Checkpoint

#: RoBERTa's positions start after the padding index: 2 of ``max_position_embeddings`` are unused.
POSITION_OFFSET = 2


def _roberta_tokenizer(path: str):
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(path, local_files_only=True)


class ClapCheckpoint(Checkpoint):
    text_readout = "<s>"  # RoBERTa's pooler reads the first token

    def __init__(self, cfg: ml_collections.ConfigDict, mesh_cfg: ml_collections.ConfigDict | None = None):
        super().__init__(cfg, mesh_cfg, clap_convert.load_pretrained, CLAP_RULES)
        self.tokenizer = load_tokenizer(self.directory, fallback=_roberta_tokenizer)
        self.features = AudioFeatureConfig.from_dir(self.directory)
        self.modality = Audio(sample_rate=self.features.sampling_rate)
        positions = self.model.config.text_config.max_position_embeddings - POSITION_OFFSET
        if int(cfg.max_text_tokens) < 3:
            raise ValueError(f"model.max_text_tokens={cfg.max_text_tokens}: a caption needs <s>, a word "
                             "and </s>; give 3 or more")
        self.max_length = min(int(cfg.max_text_tokens), positions)

    def inputs(self, raw):
        # rng=0: the same crop of a recording longer than max_length_s on every read.
        return log_mel_features(list(raw), self.features, sampling_rate=self.features.sampling_rate,
                                rng=0).input_features

    def tokens(self, texts):
        return tokenize(self.tokenizer, texts, self.max_length)

    def token_labels(self, ids):
        # Byte-level BPE marks a leading space with "Ġ".
        return tuple(t.replace("Ġ", " ").strip() or t for t in
                     self.tokenizer.convert_ids_to_tokens(np.asarray(ids).tolist()))

    def logit_scale(self) -> float:
        """HF's ``logit_scale_a``: what ``logits_per_audio`` multiplies the cosines by."""
        return float(np.exp(np.asarray(self.params["logit_scale_a"])))

    def patch_layers(self, config) -> tuple[int, ...]:
        """The blocks of stage ``causal.audio_stage`` (negative: from the last), numbered over the
        whole tower as eq 2's sweeps number them: the stages differ in tokens and width, so one
        sweep stays inside one."""
        depths = tuple(self.model.config.audio_config.depths)
        stage = int(config.causal.audio_stage)
        if not -len(depths) <= stage < len(depths):
            raise ValueError(f"causal.audio_stage={stage}: the audio tower has {len(depths)} stages "
                             f"(depths {depths}); give one in [{-len(depths)}, {len(depths)})")
        stage %= len(depths)
        start = sum(depths[:stage])
        return tuple(range(start, start + depths[stage]))
