"""BLIP-2 from its vision tower's output on, staged for eq 2 sweeps over the Q-Former and OPT.

``Blip2Stages`` holds the same parameters as ``Blip2ForConditionalGeneration`` (its
``vision_model`` subtree is simply unused) and starts from the EVA tower's ``last_hidden_state``
(``image_embeds``, computed once per image with ``image_embeds``): steering sweeps and patching
sweeps edit only the Q-Former and the language model, so every intervention reuses one vision pass.

As a ``QueriedLanguageModel`` it generates (``blip2.decode`` with ``source=image_embeds``). It also
has the staging methods that ``reading.causal`` sweeps (``encode`` / ``layer_mask`` /
``run_layers`` / ``readout``, as ``clip.ContrastiveTowers``), over two towers:

========  ====================================  ===========================================
tower     inputs                                 ``layer_mask`` (the context its layers read)
========  ====================================  ===========================================
qformer   ``image_embeds`` [B, T_img, D_v]       the image embeddings its cross-attention reads
lm        image features [B, Nq, D_lm]           OPT's causal mask over the prompt
========  ====================================  ===========================================

Both read out the same thing: OPT's final-LayerNormed hidden state at the prompt's last position
``[B, D_lm]``, from which the first generated token's logits are ``h @ embed_tokens^T`` (the
lm_head is tied and has no bias). So the logit difference of two words is ``h . (E[a] - E[b])``:
``word_logit_diff``. The prompt is fixed per model (``prompt``: the ids after the image tokens,
BOS first; every example gets the same one, so no padding mask is needed).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.blip2 import opt
from mrepe_jax.models.blip2.model import Blip2Config, QueriedLanguageModel
from mrepe_jax.models.blip2.qformer import qformer_site_names
from mrepe_jax.sites import Sites

TOWERS = ("qformer", "lm")


class Blip2Stages(QueriedLanguageModel):
    """BLIP-2 after the vision tower (module docstring): ``apply(variables, image_embeds, input_ids,
    attention_mask=None)`` is ``Blip2ForConditionalGeneration``'s forward from the EVA output on,
    with the same sites but ``vision.*``. ``prompt``: the ids following the ``num_query_tokens``
    image tokens in the staged sweeps (default: BOS alone, HF's captioning prompt)."""

    config: Blip2Config
    prompt: tuple[int, ...] | None = None

    # OPT runs its layers unrolled: eq 2 sweeps compile one program per swept layer.
    SCAN_SWEEPS: ClassVar[bool] = False

    def site_names(self) -> tuple[str, ...]:
        c = self.config
        return qformer_site_names(c.qformer_config) + opt.site_names(c.text_config.num_hidden_layers)

    def image_features(self, image_embeds, sites: Sites = Sites()):
        return self.query_features(image_embeds.astype(self.dtype), sites)

    # ---- staging for reading.causal ----

    def prompt_ids(self) -> np.ndarray:
        """``[T]``: ``num_query_tokens`` image tokens, then ``prompt`` (BOS by default)."""
        c = self.config
        tail = self.prompt if self.prompt is not None else (c.text_config.bos_token_id,)
        if not tail or any(t is None or not 0 <= t < c.text_config.vocab_size for t in tail):
            raise ValueError(f"Blip2Stages.prompt {tail!r} must be a non-empty tuple of ids in "
                             f"[0, {c.text_config.vocab_size})")
        return np.asarray((c.image_token_index,) * c.num_query_tokens + tuple(tail), np.int32)

    def _check_tower(self, tower: str) -> None:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}; Blip2Stages stages the towers {TOWERS} (the "
                             "vision tower runs once, before: image_embeds)")

    def _lm_embeds(self, features, sites: Sites):
        prompt = self.prompt_ids()
        ids = jnp.broadcast_to(jnp.asarray(prompt), (features.shape[0], len(prompt)))
        embeds = self.prompt_embeds(ids, features)
        return self.language_model.model.decoder.embed(None, embeds, jnp.ones(ids.shape, jnp.int32), sites)

    def embed(self, tower: str, inputs, sites: Sites = Sites()):
        """The residual stream entering layer 0 of ``tower``."""
        self._check_tower(tower)
        if tower == "qformer":
            return self.qformer.embed(self.queries(inputs.shape[0]), sites)
        return self._lm_embeds(inputs.astype(self.dtype), sites)

    def layer_mask(self, tower: str, inputs, attention_mask=None, sites: Sites = Sites()):
        """What ``tower``'s layers read besides the stream: the image embeddings (qformer) or the
        causal mask (lm). ``attention_mask`` must be None: the prompt is fixed and unpadded."""
        self._check_tower(tower)
        if attention_mask is not None:
            raise ValueError("Blip2Stages takes no attention_mask: its prompt is fixed and unpadded")
        if tower == "qformer":
            return inputs.astype(self.dtype)
        return opt.layer_mask(jnp.ones((inputs.shape[0], len(self.prompt_ids())), jnp.int32),
                              len(self.prompt_ids()))

    def run_layers(self, tower: str, h, start: int = 0, stop: int | None = None, mask=None,
                   sites: Sites = Sites()):
        self._check_tower(tower)
        if tower == "qformer":
            return self.qformer.run_layers(h, mask, None, sites, start, stop)
        return self.language_model.model.decoder.run_layers(h, sites, mask, start, stop)[0]

    def readout(self, tower: str, h, inputs=None, sites: Sites = Sites()):
        """``tower``'s last residual stream -> OPT's final-LayerNormed state at the last prompt
        position ``[B, D_lm]`` (through the projection and the whole of OPT for the qformer)."""
        self._check_tower(tower)
        if tower == "qformer":
            h = self._lm_embeds(self.language_projection(h), sites)
            h = self.run_layers("lm", h, mask=self.layer_mask("lm", h), sites=sites)
        return self.language_model.model.decoder.final_layer_norm(h[:, -1])

    def encode(self, tower: str, inputs, attention_mask=None, sites: Sites = Sites()):
        mask = self.layer_mask(tower, inputs, attention_mask)
        h = self.run_layers(tower, self.embed(tower, inputs, sites), mask=mask, sites=sites)
        return self.readout(tower, h, inputs, sites)

    def features(self, image_embeds, sites: Sites = Sites()):
        """The projected queries ``[B, Nq, D_lm]``: the ``lm`` tower's inputs."""
        return self.image_features(image_embeds, sites)["image_features"]


def stages_of(model, prompt: tuple[int, ...] | None = None) -> Blip2Stages:
    """The ``Blip2Stages`` of a ``Blip2ForConditionalGeneration`` (same config, dtype and
    execution; same parameters)."""
    return Blip2Stages(model.config, model.dtype, model.execution, prompt)


def _vision(module, pixel_values, sites: Sites = Sites()):
    return module.vision_model(pixel_values, sites=sites)


@functools.partial(jax.jit, static_argnums=0)
def _image_embeds(model, params, pixel_values):
    out, _ = model.apply({"params": params}, pixel_values, method=_vision)
    return out["last_hidden_state"]


def image_embeds(model, params, pixel_values) -> jax.Array:
    """The EVA tower's ``last_hidden_state`` ``[B, T_img, D_v]`` of a ``Blip2ForConditionalGeneration``:
    what ``Blip2Stages`` starts from."""
    return _image_embeds(model, params, jnp.asarray(pixel_values))


def word_logit_diff(h, diff):
    """Per example, ``h . diff`` with ``diff = E[a] - E[b]``: the logit of word ``a`` minus that of
    ``b`` at the first generated token (``h``: ``Blip2Stages.readout``)."""
    return jnp.sum(h.astype(jnp.float32) * diff, axis=-1)


def word_metric(params, pos_tokens, neg_tokens) -> jax.tree_util.Partial:
    """``word_logit_diff`` for per-example token pairs ``[P]``, as a ``Partial`` carrying ``diff``
    ``[P, D_lm]`` (an argument of the compiled sweeps, as ``stages.patching.prompt_logit_diff``)."""
    table = params["language_model"]["model"]["decoder"]["embed_tokens"]["embedding"]
    table = jnp.asarray(table, jnp.float32)
    diff = table[np.asarray(pos_tokens)] - table[np.asarray(neg_tokens)]
    return jax.tree_util.Partial(word_logit_diff, diff)


__all__ = ["Blip2Stages", "TOWERS", "image_embeds", "stages_of", "word_logit_diff",
           "word_metric"]
