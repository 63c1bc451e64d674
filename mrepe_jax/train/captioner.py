"""The ToyWorld captioner: a tiny BLIP-2-shaped generative model over the ToyWorld CLIP's vision tower.

It is BLIP-2 (``models/blip2/model.py``) with the trained ToyWorld CLIP's vision tower in place of the EVA
ViT, and an OPT whose vocabulary is ToyWorld's caption vocabulary plus one image token::

    image_embeds = clip.vision last hidden state (frozen)            # [B, T_img, D_v], before pooling
    query_output = qformer(query_tokens, image_embeds)               # [B, Nq, D_q]
    features     = language_projection(query_output)                 # [B, Nq, D_lm]
    embeds       = embed_tokens([IMG]*Nq + [BOS] + caption + [EOS])  # image tokens replaced by features
    logits       = opt(inputs_embeds=embeds)

``image_embeds`` is HF CLIP's ``last_hidden_state``: the last layer's ``resid_post`` over every
token (CLS and patches), before ``post_layernorm`` and CLS pooling. The CLIP stays frozen, so
training reads those states once per pooled training image, not once per step.

Parameters mirror BLIP-2's (``query_tokens``, ``qformer/...``, ``language_projection``,
``language_model/model/decoder/...``; the lm_head is tied), and the model is sited like BLIP-2's
composite: ``qformer.*`` and ``lm.*``. The tokenizer is ``world.tokenizer`` (PAD 0, BOS 1, UNK 2,
EOS 3, words from 4); the image token is the one id past it (``tokenizer.vocab_size``).

``train`` runs teacher-forced next-token cross-entropy through ``loop.fit`` (loss on the caption's
words and its EOS only), ``generate_captions`` greedy-decodes in one compiled program (CLIP vision
-> Q-Former -> ``opt.generate``), and ``caption_accuracy`` scores the decoded captions against the
ground truth per concept family.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES, FAMILIES, SYNONYMS
from mrepe_jax.data.toyworld.text import split_words
from mrepe_jax.models.blip2 import QueriedLanguageModel, default_prompt, opt
from mrepe_jax.models.blip2 import model as blip2
from mrepe_jax.models.blip2.opt import OPTConfig
from mrepe_jax.models.blip2.qformer import (
    Blip2QFormerConfig,
    check_composable,
    qformer_site_names,
)
from mrepe_jax.models.trimodal import TriModalCLIP
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.sites import Sites
from mrepe_jax.train import toyclip
from mrepe_jax.train.loop import EXECUTION_KEYS, fit, spec_of


def default_config() -> ml_collections.ConfigDict:
    """The demo's captioner. On the default world's demo CLIP (1000 steps), 2 CPU cores: 500 steps
    of 32 from a pool of 2048 trained in 12.1 s (pool included) and captioned 512 test images with
    per-family accuracy colour 1.000, shape 0.994, size 0.996, position 1.000, emblem 1.000.
    400 steps of 64 from 4096: 15.3 s, the same within 0.004; 600 of 64: 19.3 s; 200 of 64:
    emblem 0.59."""
    return ml_collections.ConfigDict(dict(
        qformer_hidden_size=64, qformer_layers=1, qformer_heads=4, qformer_mlp_size=128,
        num_query_tokens=8, cross_attention_frequency=1,
        lm_hidden_size=64, lm_layers=2, lm_heads=4, lm_ffn_dim=128,
        learning_rate=3e-3, warmup_steps=30, weight_decay=1e-4, num_steps=500, batch_size=32,
        pool_size=2048, seed=0, checkpoint_every=250, steps_per_call=10))


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """BLIP-2's composite config without its vision tower (the CLIP's is used, frozen).
    ``vision_hidden_size`` is the CLIP vision width, which the Q-Former's cross-attention reads."""

    qformer_config: Blip2QFormerConfig
    text_config: OPTConfig
    num_query_tokens: int
    image_token_index: int
    vision_hidden_size: int

    def __post_init__(self):
        check_composable(self, self.qformer_config)
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise ValueError(f"image_token_index {self.image_token_index} is outside the lm vocabulary "
                             f"[0, {self.text_config.vocab_size})")

    @property
    def hidden_size(self) -> int:  # read by ``qformer.check_composable`` as the vision width
        return self.vision_hidden_size


def model_config(world: ToyWorld, clip_model: TriModalCLIP, cfg) -> CaptionerConfig:
    """The captioner for ``world``'s vocabulary reading ``clip_model``'s vision tower."""
    tok, vision = world.tokenizer, clip_model.config.vision_config
    qformer = Blip2QFormerConfig(
        hidden_size=cfg.qformer_hidden_size, num_hidden_layers=cfg.qformer_layers,
        num_attention_heads=cfg.qformer_heads, intermediate_size=cfg.qformer_mlp_size,
        cross_attention_frequency=cfg.cross_attention_frequency,
        encoder_hidden_size=vision.hidden_size)
    lm = OPTConfig(
        vocab_size=tok.vocab_size + 1, hidden_size=cfg.lm_hidden_size,
        num_hidden_layers=cfg.lm_layers, ffn_dim=cfg.lm_ffn_dim, num_attention_heads=cfg.lm_heads,
        max_position_embeddings=cfg.num_query_tokens + world.config.max_len,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return CaptionerConfig(qformer, lm, cfg.num_query_tokens, tok.vocab_size, vision.hidden_size)


class ToyCaptioner(QueriedLanguageModel):
    """BLIP-2 (``blip2.QueriedLanguageModel``) over a frozen CLIP's vision states: ``apply(variables,
    image_embeds [B, T_img, D_v], input_ids [B, T], attention_mask=None)`` returns ``({"logits",
    "image_features", "qformer_outputs", "language_model_outputs"}, acts)``; ``input_ids`` hold
    ``num_query_tokens`` image tokens per image (BLIP-2's layout, ``blip2.default_prompt``)."""

    config: CaptionerConfig

    def site_names(self) -> tuple[str, ...]:
        c = self.config
        return qformer_site_names(c.qformer_config) + opt.site_names(c.text_config.num_hidden_layers)

    def image_features(self, image_embeds, sites: Sites = Sites()):
        return self.query_features(image_embeds, sites)


# ---- the frozen CLIP's image states ----

def _last_hidden(clip: TriModalCLIP, pixels, sites: Sites = Sites()):
    return clip.run_layers("vision", clip.embed("vision", pixels, sites), sites=sites)


@functools.partial(jax.jit, static_argnums=0)
def _vision_states(clip, clip_params, pixels):
    return clip.apply({"params": clip_params}, pixels, method=_last_hidden)[0]


def vision_states(clip_model: TriModalCLIP, clip_params, pixels, chunk: int = 512) -> np.ndarray:
    """The CLIP vision tower's last hidden state ``[B, T_img, D_v]`` (before post-LN and pooling)."""
    return np.concatenate([np.asarray(_vision_states(clip_model, clip_params, pixels[i:i + chunk]))
                           for i in range(0, len(pixels), chunk)])


def check_clip(model: ToyCaptioner, clip_model: TriModalCLIP) -> None:
    """The Q-Former must be able to read this CLIP's vision width (error names both fields)."""
    width = clip_model.config.vision_config.hidden_size
    if model.config.qformer_config.encoder_hidden_size != width:
        raise ValueError(
            f"the captioner's Q-Former reads image states of width Blip2QFormerConfig."
            f"encoder_hidden_size={model.config.qformer_config.encoder_hidden_size}, but this CLIP's "
            f"vision tower has vision_config.hidden_size={width}: build the captioner for this CLIP "
            "(model_config(world, clip_model, cfg)) or pass the CLIP it was trained on")


# ---- training ----

def render_pool(world: ToyWorld, clip_model, clip_params, size: int, chunk: int = 512) -> dict:
    """``size`` train-split samples as ``{"image_embeds", "input_ids", "attention_mask"}``."""
    if size < 1:
        raise ValueError(f"the caption pool needs pool_size >= 1, got {size}")
    parts = []
    for s in range(0, size, chunk):
        b = world.batch(range(s, min(size, s + chunk)), split="train")
        parts.append({"image_embeds": vision_states(clip_model, clip_params, b["image"]),
                      "input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def batch_fn(make_pool, batch_size: int, seed: int, rows: slice = slice(None)):
    """``step -> batch``, a pure function of the step (a permutation per (seed, epoch), as
    ``toyclip.batch_fn``); ``make_pool()`` runs at the first batch only. ``rows``: this process's
    share of each global batch (``parallel.process_rows``)."""
    cache = []

    def get(step: int):
        if not cache:
            cache.append(make_pool())
            if len(cache[0]["input_ids"]) < batch_size:
                raise ValueError(f"pool of {len(cache[0]['input_ids'])} samples is smaller than one "
                                 f"batch of {batch_size}")
        pool = cache[0]
        epoch, i = divmod(step, len(pool["input_ids"]) // batch_size)
        order = np.random.default_rng([seed, epoch]).permutation(len(pool["input_ids"]))
        idx = order[i * batch_size:(i + 1) * batch_size][rows]
        return {k: v[idx] for k, v in pool.items()}

    return get


def batch_spec(world: ToyWorld, clip_model: TriModalCLIP, clip_params, batch_size: int):
    """The shapes and dtypes of ``batch_fn``'s (global) batches, from one sample and the CLIP's
    abstract image states: ``fit`` compiles the step from it while the pool renders."""
    b = world.batch(range(1), split="train")
    embeds = _vision_states.eval_shape(clip_model, clip_params, b["image"])
    one = {"image_embeds": np.zeros(embeds.shape, embeds.dtype), "input_ids": b["input_ids"],
           "attention_mask": b["attention_mask"]}
    tiled = {k: np.repeat(v, batch_size, axis=0) for k, v in one.items()}
    return spec_of(batch_fn(lambda: tiled, batch_size, 0)(0))


def with_image_tokens(config: CaptionerConfig, input_ids, attention_mask):
    """BLIP-2's layout: ``[IMG]*Nq`` before ``BOS caption EOS PAD..`` (image tokens attended)."""
    b, nq = input_ids.shape[0], config.num_query_tokens
    ids = jnp.concatenate([jnp.full((b, nq), config.image_token_index, jnp.int32), input_ids], 1)
    return ids, jnp.concatenate([jnp.ones((b, nq), jnp.int32), attention_mask], 1)


def loss_fn(model: ToyCaptioner, params, batch):
    """Teacher-forced next-token cross-entropy on the caption words and EOS (not on the image
    tokens, BOS or padding); returns ``(loss, token accuracy)``."""
    nq = model.config.num_query_tokens
    ids, mask = with_image_tokens(model.config, batch["input_ids"], batch["attention_mask"])
    out, _ = model.apply({"params": params}, batch["image_embeds"], ids, mask)
    logits = out["logits"][:, nq:-1]  # position p predicts token p + 1
    targets, weights = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    total = jnp.maximum(weights.sum(), 1.0)
    acc = ((jnp.argmax(logits, -1) == targets) * weights).sum() / total
    return (ce * weights).sum() / total, acc


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One AdamW step on ``loss_fn`` (frozen and hashable: ``fit`` reuses its compiled program)."""

    model: ToyCaptioner

    def __call__(self, state: TrainState, batch):
        (loss, acc), grads = jax.value_and_grad(
            lambda p: loss_fn(self.model, p, batch), has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, "token_accuracy": acc}


_init = jax.jit(lambda model, key, *inputs: model.init(key, *inputs)["params"], static_argnums=0)


def init_state(model: ToyCaptioner, world: ToyWorld, cfg) -> TrainState:
    if not 0 <= cfg.warmup_steps < cfg.num_steps:
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) must be in [0, num_steps={cfg.num_steps})")
    c = model.config
    ids = np.asarray(default_prompt(c, 1))
    embeds = np.zeros((1, 2, c.vision_hidden_size), np.float32)
    params = _init(model, jax.random.key(cfg.seed), embeds, ids)
    tx = toyclip.optimizer(cfg.learning_rate, cfg.warmup_steps, cfg.num_steps, cfg.weight_decay)
    return TrainState.create(apply_fn=None, params=params, tx=tx)


def train(world: ToyWorld, clip_model: TriModalCLIP, clip_params, cfg, checkpoint_dir=None,
          progress: bool = True, *, stop_after: int | None = None, pool: dict | None = None,
          mesh=None):
    """Trains (or resumes from ``checkpoint_dir``) a captioner on ``world``'s train split.

    Returns ``(model, params, info)``; ``info`` holds ``steps``, ``resumed_from_step``,
    ``steps_run``, ``seconds_this_run``, ``final_loss`` and ``losses`` (this call's, an array).
    ``pool``: pre-computed ``render_pool`` output (tests share one). The CLIP's parameter hash is
    part of the run settings, so a checkpoint trained on another CLIP is refused on resume.
    ``mesh``: data-parallel over its ``data`` axis, as ``toyclip.train`` (each process draws only
    its rows of each batch; the loss is the same at any device count).
    """
    t0 = time.perf_counter()
    model = ToyCaptioner(model_config(world, clip_model, cfg))
    check_clip(model, clip_model)
    run = {**{k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_KEYS},
           "world": dataclasses.asdict(world.config), "clip_sha256": params_hash(clip_params)}
    batches = batch_fn(lambda: render_pool(world, clip_model, clip_params, cfg.pool_size)
                       if pool is None else pool, cfg.batch_size, cfg.seed,
                       parallel.process_rows(cfg.batch_size))
    result = fit(lambda: init_state(model, world, cfg), TrainStep(model), batches, cfg.num_steps,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                 stop_after=stop_after, run_config=run, desc="toyworld captioner", progress=progress,
                 mesh=mesh, steps_per_call=cfg.get("steps_per_call", 1),
                 batch_spec=batch_spec(world, clip_model, clip_params, cfg.batch_size))
    info = {"steps": int(result.state.step), "resumed_from_step": result.resumed_from,
            "steps_run": len(result.losses), "seconds_this_run": round(time.perf_counter() - t0, 1),
            "final_loss": float(result.losses[-20:].mean()) if len(result.losses) else None,
            "losses": result.losses}
    return model, parallel.to_host(result.state.params), info


# ---- generation and scoring ----

@functools.partial(jax.jit, static_argnames=("clip_model", "model", "max_new_tokens"))
def _generate(clip_model, model, clip_params, params, pixels, *, max_new_tokens):
    image_embeds = clip_model.apply({"params": clip_params}, pixels, method=_last_hidden)[0]
    ids = jnp.asarray(default_prompt(model.config, pixels.shape[0]))
    # Vision, Q-Former and the decode are one program.
    return blip2.decode(model, params, image_embeds, ids, jnp.ones(ids.shape, jnp.int32),
                  max_new_tokens=max_new_tokens)


def generate_captions(model: ToyCaptioner, params, clip_model: TriModalCLIP, clip_params, pixels,
                      max_new_tokens: int) -> np.ndarray:
    """Greedy caption ids ``[B, max_new_tokens]`` (EOS, then PAD) for NHWC ``pixels``."""
    check_clip(model, clip_model)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return np.asarray(_generate(clip_model, model, clip_params, params, jnp.asarray(pixels),
                                max_new_tokens=max_new_tokens))


def decode(world: ToyWorld, ids) -> str:
    """Words of one generated id row up to EOS (the image token, past the vocabulary, is dropped)."""
    ids = [int(i) for i in np.asarray(ids) if int(i) < world.tokenizer.vocab_size]
    return world.tokenizer.decode(ids)


_VALUE_OF_WORD = {word: (family, value) for family in FAMILIES
                  for value, words in SYNONYMS[family].items() for word in words}


def score_caption(caption: str, labels) -> dict[str, bool]:
    """``{family: correct}``: a family is correct when the caption names its true value (any
    synonym) and no other value of that family. ``labels``: ``{family: value index or name}``."""
    named = {f: set() for f in FAMILIES}
    for word in split_words(caption):
        if word in _VALUE_OF_WORD:
            family, value = _VALUE_OF_WORD[word]
            named[family].add(value)
    out = {}
    for f in FAMILIES:
        truth = labels[f] if isinstance(labels[f], str) else CONCEPT_FAMILIES[f][int(labels[f])]
        out[f] = named[f] == {truth}
    return out


def mentions(world: ToyWorld, ids, family: str) -> np.ndarray:
    """``[..., V]`` bool: whether each generated caption ``ids`` [..., T] names each value of
    ``family`` (any synonym). Ids are generated ones: EOS, then PAD; the image token, one past the
    vocabulary, names nothing."""
    ids = np.asarray(ids)
    tok = world.tokenizer
    if ids.size and (ids.min() < 0 or ids.max() > tok.vocab_size):
        raise ValueError(f"caption ids must lie in [0, {tok.vocab_size}] (the vocabulary and the "
                         f"image token), got [{ids.min()}, {ids.max()}]")
    values = CONCEPT_FAMILIES[family]
    table = np.full(tok.vocab_size + 1, -1)
    for v, value in enumerate(values):
        table[[tok.token_id(w) for w in SYNONYMS[family][value]]] = v
    return (table[ids][..., None] == np.arange(len(values))).any(-2)


def named_values(world: ToyWorld, ids) -> dict[str, np.ndarray]:
    """What generated captions say, as labels: ``{family: int array ids.shape[:-1]}`` holding the
    value index a caption names for that family (any synonym), or -1 when it names none or
    several values of it: ``score_caption``'s rule, vectorised over id arrays [..., T]."""
    out = {}
    for family in FAMILIES:
        named = mentions(world, ids, family)
        out[family] = np.where(named.sum(-1) == 1, named.argmax(-1), -1)
    return out


def caption_accuracy(model: ToyCaptioner, params, world: ToyWorld, clip_model: TriModalCLIP,
                     clip_params, split: str = "test", n: int = 512, batch_size: int = 256,
                     num_examples: int = 5) -> tuple[dict[str, float], list[dict]]:
    """Greedy captions of samples ``0..n-1`` of ``split``, scored by ``score_caption``.

    Returns ``({family: accuracy in [0, 1]}, examples)``, ``examples`` being the first
    ``num_examples`` ``{"caption", "truth"}`` (the generated caption, the reference one).
    Batches have a fixed size (the last is padded), so one compiled program serves all of them.
    """
    if n < 1:
        raise ValueError(f"caption_accuracy needs n >= 1 samples of split {split!r}, got {n}")
    check_clip(model, clip_model)
    batch_size = min(batch_size, n)
    hits = {f: 0 for f in FAMILIES}
    examples = []
    for s in range(0, n, batch_size):
        b = world.batch(range(s, min(n, s + batch_size)), split=split)
        pixels = b["image"]
        rows = len(pixels)
        if rows < batch_size:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - rows, 0)])
        ids = generate_captions(model, params, clip_model, clip_params, pixels,
                                world.config.max_len - 1)[:rows]
        said = named_values(world, ids)
        for f in FAMILIES:
            hits[f] += int(np.sum(said[f] == b["labels"][f]))
        examples += [{"caption": decode(world, ids[r]), "truth": b["caption"][r]}
                     for r in range(min(rows, num_examples - len(examples)))]
    return {f: hits[f] / n for f in FAMILIES}, examples
