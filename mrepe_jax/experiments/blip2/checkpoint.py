"""A BLIP-2 (OPT) checkpoint with its processor, and the reads the experiment's stages make.

``Checkpoint.read`` runs the whole model once per batch (one compiled program per batch shape)
and returns, per image, every candidate site of Table 1 as one row:

- ``vision.layers.{i}.resid_post``: the EVA residual stream, mean over its tokens (CLS and patches);
- ``qformer.layers.{i}.resid_post``: the Q-Former's query states, mean over the query tokens;
- ``lm.layers.{i}.resid_post``: OPT's residual stream at the last prompt token (BOS under the
  captioning prompt), the position whose output is the caption's first token;

and the last Q-Former layer's states per query token (what Table 3's AP writes there).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.models import hf_files
from mrepe_jax.models.blip2 import Blip2ForConditionalGeneration, default_prompt
from mrepe_jax.models.blip2 import convert as blip2_convert
from mrepe_jax.models.blip2.preprocess import Blip2Preprocessor
from mrepe_jax.models.blip2.sharding import BLIP2_RULES
from mrepe_jax.models.blip2.staging import Blip2Stages, image_embeds, stages_of
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.stages import runtime

PARTS = {"vision": "EVA ViT", "qformer": "Q-Former", "lm": "OPT"}


def candidate_sites(model: Blip2ForConditionalGeneration) -> dict[str, tuple[str, ...]]:
    """``{tower: sites}``: every layer's ``resid_post`` of the three parts."""
    return {t: tuple(f"{t}.layers.{i}.resid_post" for i in range(n)) for t, n in model.tower_layers().items()}


def _reduce(site: str, x):
    return x[:, -1] if site.startswith("lm.") else x.mean(1)


@functools.partial(jax.jit, static_argnames=("model", "sites", "tokens_at"))
def _read(model, params, pixels, ids, *, sites, tokens_at):
    _, acts = model.apply({"params": params}, pixels, ids, capture=sites + (tokens_at,))
    return {s: _reduce(s, acts[s]).astype(jnp.float32) for s in sites}, acts[tokens_at].astype(jnp.float32)


class Checkpoint:
    """A BLIP-2 checkpoint (hub id or directory) and its processor. ``model.dtype`` bfloat16 holds
    the weights in bf16 as well as computing in it (as transformers' ``torch_dtype``): half the
    memory, which a 2.7b or 6.7b model needs on a 16 GB device. ``hash`` is the checkpoint's own
    weights'."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh_cfg: ml_collections.ConfigDict | None = None):
        dtype = runtime.compute_dtype(cfg.dtype)
        self.name = cfg.name
        self.directory = hf_files.resolve(cfg.name)
        model, params = blip2_convert.load_pretrained(self.directory)
        self.hash = params_hash(params)
        # Cast on the host, then straight into the mesh's shards (models/blip2/sharding.py): a
        # model that fits no single device is never gathered onto one.
        self.mesh = None if mesh_cfg is None else runtime.mesh(mesh_cfg)
        self.params = runtime.place_params(params, runtime.layout(mesh_cfg or {}, BLIP2_RULES), self.mesh, dtype)
        self.model = Blip2ForConditionalGeneration(model.config, dtype=dtype,
                                                   execution=model.execution)
        self.processor = Blip2Preprocessor.from_dir(self.directory)
        self.tokenizer = self.processor.tokenizer
        self.batch_size = int(cfg.batch_size)
        self.sites = candidate_sites(self.model)
        self.qformer_out = self.sites["qformer"][-1]

    @property
    def config(self):
        return self.model.config

    def pixels(self, raw: Sequence[np.ndarray]) -> np.ndarray:
        return self.processor.images(list(raw))

    def read(self, pixels: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(``{site: [B, D]}`` at every candidate site, the last Q-Former layer ``[B, Nq, D_q]``)
        under the captioning prompt (module docstring)."""
        ids = default_prompt(self.config, len(pixels))
        sites = tuple(s for part in self.sites.values() for s in part)
        batch = (jnp.asarray(pixels), jnp.asarray(ids))
        if self.mesh is not None and len(ids) % parallel.data_axis_size(self.mesh) == 0:
            batch = parallel.shard_batch(batch, self.mesh)
        reps, tokens = _read(self.model, self.params, *batch, sites=sites, tokens_at=self.qformer_out)
        return {s: np.asarray(r) for s, r in reps.items()}, np.asarray(tokens)

    def image_embeds(self, pixels: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """The EVA tower's output ``[N, T_img, D_v]`` (``Blip2Stages``' input)."""
        chunk = chunk or self.batch_size
        return np.concatenate([np.asarray(image_embeds(self.model, self.params, pixels[i:i + chunk]))
                               for i in range(0, len(pixels), chunk)])

    def prompt_ids(self, text: str) -> tuple[int, ...]:
        """The ids after the image tokens for a text prompt (BOS first; ``""``: BOS alone)."""
        ids, _ = self.processor.text([text])
        return tuple(int(i) for i in ids[0, self.config.num_query_tokens:])

    def stages(self, prompt: str = "") -> Blip2Stages:
        return stages_of(self.model, self.prompt_ids(prompt))

    def word_token(self, word: str) -> int:
        """The first token of `` word`` inside a sentence (a leading space, as after another word)."""
        ids = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the tokenizer gives no token for the concept word {word!r}")
        return int(ids[0])

    def captions(self, ids: np.ndarray) -> list[str]:
        """Generated ids ``[N, T]`` -> text, each row up to its first EOS."""
        eos = self.config.text_config.eos_token_id
        eos = set(eos if isinstance(eos, tuple) else (eos,))
        out = []
        for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]):
            row = row.tolist()
            stop = next((k for k, t in enumerate(row) if t in eos), len(row))
            out.append(self.tokenizer.decode(row[:stop], skip_special_tokens=True).strip())
        return out


def words(text: str) -> list[str]:
    """Lower-case words of a caption (letters and apostrophes)."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())
