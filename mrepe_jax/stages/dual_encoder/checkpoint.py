"""A dual-encoder checkpoint as the stages use it: the model and its params on the config's mesh,
its tokenizer and its modality's preprocessing, and the reads every stage makes. A family
(CLIP, CLAP) subclasses it with its loader, rule table, tokenizer and preprocessing."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import ml_collections
import numpy as np

from mrepe_jax.models import hf_files
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.stages import identification, runtime
from mrepe_jax.stages.dual_encoder.modality import Modality
from mrepe_jax.train import zero_shot

TEXT_KEYS = ("input_ids", "attention_mask")


class Checkpoint(abc.ABC):
    """``name``, ``directory``, ``model`` (at the config's compute dtype), ``params`` (float32,
    placed by the family's rule table on the config's mesh), ``hash`` (of the params),
    ``mesh`` (None on one device), ``batch_size`` and the ``modality`` it reads."""

    modality: Modality
    #: The token the text tower's readout pools, in words (for the report).
    text_readout = "EOS"
    #: Whether the modality's tower is a plain ViT that ``reading.decompose`` splits into terms.
    decomposes = False

    def __init__(self, cfg: ml_collections.ConfigDict, mesh_cfg: ml_collections.ConfigDict | None,
                 load_pretrained, rules):
        dtype = runtime.compute_dtype(cfg.dtype)
        self.name = cfg.name
        self.directory = hf_files.resolve(cfg.name)
        model, params = load_pretrained(self.directory)
        # On a (data, model) mesh the params go straight from the files into their shards; the
        # streamed reads, patching sweeps and map fits split their batches over data.
        self.mesh = None if mesh_cfg is None else runtime.mesh(mesh_cfg)
        layout = runtime.layout(mesh_cfg or {}, rules)
        self.hash = params_hash(params)
        self.params = runtime.place_params(params, layout, self.mesh)
        self.model = model.clone(dtype=dtype)
        self.batch_size = int(cfg.batch_size)

    @abc.abstractmethod
    def inputs(self, raw: Sequence[np.ndarray]) -> np.ndarray:
        """Raw examples of the modality (images, waveforms) -> the tower's batched input."""

    @abc.abstractmethod
    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> ``(input_ids, attention_mask)`` ``[N, T]``, one ``T`` for every call."""

    @abc.abstractmethod
    def token_labels(self, ids: np.ndarray) -> tuple[str, ...]:
        """One caption's token ids as readable strings, for the patching plots."""

    @abc.abstractmethod
    def logit_scale(self) -> float:
        """The temperature the model scores the modality's embedding against text with."""

    def patch_layers(self, config) -> tuple[int, ...] | None:
        """The layers eq 2 sweeps in the modality's tower (None: every layer). A hierarchical tower
        overrides it with one stage's blocks, whose shapes agree."""
        del config
        return None

    def keys(self, tower: str) -> tuple[str, str | None]:
        """``(input_key, mask_key)`` of ``tower`` in a batch dict."""
        return (self.modality.input_key, None) if tower == self.modality.tower else TEXT_KEYS

    def read(self, tower: str, batch: dict, sites=None) -> dict:
        """``{site: [B, D]}`` at ``sites`` (default: every candidate site), one program per tower
        and sites (the last, smaller batch of a split compiles once more)."""
        key, mask = self.keys(tower)
        return identification.read_batch(self.model, self.params, tower, batch, key, mask, sites, self.mesh)

    def prompts(self, values: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """``[K, D]`` unit-norm prompt embeddings, each value's templates averaged (CLIP's prompt
        ensembling)."""
        texts = [t.format(v) for v in values for t in templates]
        ids, mask = self.tokens(texts)
        emb = np.asarray(zero_shot.encode_text(self.model, self.params, ids, mask), np.float64)
        emb = emb.reshape(len(values), len(templates), -1).mean(1)
        return (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)
