"""Training the ToyWorld tri-modal CLIP (DESIGN.md §5) with pairwise InfoNCE, through ``loop.fit``.

The world is small enough to pre-render a pool of training samples once; batches are drawn from
it by a permutation that is a pure function of (seed, epoch), so checkpoints resume exactly.
A fraction of captions is replaced by a one-family class prompt ("a photo of a red object") so the
text tower also learns the prompts that zero-shot evaluation uses.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.data.audio import LogMelConfig, n_frames
from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.trimodal.model import TriModalCLIP, TriModalConfig, log_mel_features
from mrepe_jax.train.contrastive import clip_loss
from mrepe_jax.train.loop import EXECUTION_KEYS, FitResult, fit, spec_of

MODALITY_KEYS = {"vision": "image", "audio": "audio", "text": "input_ids"}
PAIRS = (("vision", "text"), ("text", "audio"), ("vision", "audio"))
#: CLIP's clamp on the learned temperature, in training and wherever the model's scale is used.
MAX_LOGIT_SCALE = 100.0


def model_config(world: ToyWorld, cfg: ml_collections.ConfigDict) -> TriModalConfig:
    """The tri-modal model for a world: three towers of the same shape, sized by ``cfg``."""
    wc = world.config
    tower = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.mlp_size,
                 num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                 hidden_act="quick_gelu")
    log_mel = LogMelConfig(sample_rate=wc.sample_rate)
    frames = n_frames(wc.n_audio, log_mel)
    tok = world.tokenizer
    return TriModalConfig(
        vision_config=CLIPVisionConfig(**tower, image_size=wc.image_size, patch_size=cfg.patch_size),
        text_config=CLIPTextConfig(**tower, vocab_size=tok.vocab_size, max_position_embeddings=wc.max_len,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        audio_config=CLIPVisionConfig(**tower, image_size=(frames, log_mel.n_mels),
                                      patch_size=cfg.audio_patch_size, num_channels=1),
        log_mel=log_mel,
        num_audio_samples=wc.n_audio,
        projection_dim=cfg.projection_dim,
    )


@dataclasses.dataclass(frozen=True)
class Pool:
    """Pre-rendered training samples (numpy), indexed by batch permutations."""

    image: np.ndarray
    audio: np.ndarray  # waveforms from render_pool; train replaces them with their log-mel features
    input_ids: np.ndarray
    attention_mask: np.ndarray
    prompt_ids: np.ndarray  # [N, F, L] one class prompt per family, for caption replacement
    prompt_mask: np.ndarray

    def __len__(self):
        return len(self.image)


def render_pool(world: ToyWorld, size: int, chunk: int = 1024) -> Pool:
    parts = [world.batch(range(s, min(size, s + chunk)), split="train") for s in range(0, size, chunk)]
    cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
    labels = {f: np.concatenate([p["labels"][f] for p in parts]) for f in world.families}
    prompt_ids, prompt_mask = class_prompt_tokens(world)
    fam = list(world.families)
    idx = np.stack([labels[f] for f in fam], 1)  # [N, F]
    per_family = np.arange(len(fam))[None, :]
    return Pool(cat("image"), cat("audio"), cat("input_ids"), cat("attention_mask"),
                prompt_ids[per_family, idx], prompt_mask[per_family, idx])


def with_audio_features(model: TriModalCLIP, pool: Pool, chunk: int = 1024) -> Pool:
    """``pool`` with its waveforms replaced by the audio tower's log-mel input, computed once: it
    holds no parameters, so a step need not recompute the STFT of a clip each time it is drawn."""
    c, waves = model.config, pool.audio
    return dataclasses.replace(pool, audio=np.concatenate(
        [np.asarray(_log_mel(waves[i:i + chunk], c.log_mel, c.log_mel_shift, c.log_mel_scale))
         for i in range(0, len(waves), chunk)]))


# Module-level jits with the model/config static: compiled once per process, not once per call.
_log_mel = jax.jit(log_mel_features, static_argnums=(1, 2, 3))
_init = jax.jit(lambda model, key, *inputs: model.init(key, *inputs)["params"], static_argnums=0)


def class_prompt_tokens(world: ToyWorld):
    """Token ids of every family's class prompts, ``[F, V_max, L]`` (rows past a family's values
    are padding that is never selected)."""
    fams = list(world.families.items())
    vmax = max(len(v) for _, v in fams)
    ids = np.zeros((len(fams), vmax, world.config.max_len), np.int32)
    mask = np.zeros_like(ids)
    for i, (family, values) in enumerate(fams):
        ids[i, : len(values)], mask[i, : len(values)] = world.tokenizer.encode(
            world.class_prompts(family), world.config.max_len)
    return ids, mask


def batch_fn(make_pool, batch_size: int, seed: int, prompt_fraction: float, rows: slice = slice(None)):
    """``step -> batch``, a pure function of the step (resumable, reproducible).

    ``make_pool()`` is called on the first batch only, so a run restored at its last step renders
    nothing. ``rows`` selects this process's rows of each global batch (``parallel.process_rows``):
    the draws are those of the global batch, so any process count sees the same batches.
    """
    cache = []

    def get(step: int):
        if not cache:
            cache.append(make_pool())
            if len(cache[0]) < batch_size:
                raise ValueError(f"pool of {len(cache[0])} samples is smaller than one batch of {batch_size}")
        pool = cache[0]
        per_epoch = len(pool) // batch_size
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(pool))
        idx = order[i * batch_size:(i + 1) * batch_size]
        rng = np.random.default_rng([seed, epoch, i, 1])
        use_prompt = rng.random(batch_size) < prompt_fraction
        fam = rng.integers(0, pool.prompt_ids.shape[1], batch_size)
        idx, use_prompt, fam = idx[rows], use_prompt[rows], fam[rows]
        ids = np.where(use_prompt[:, None], pool.prompt_ids[idx, fam], pool.input_ids[idx])
        mask = np.where(use_prompt[:, None], pool.prompt_mask[idx, fam], pool.attention_mask[idx])
        return {"image": pool.image[idx], "audio": pool.audio[idx], "input_ids": ids, "attention_mask": mask}

    return get


def batch_spec(model: TriModalCLIP, world: ToyWorld, batch_size: int, prompt_fraction: float):
    """The shapes and dtypes of ``batch_fn``'s (global) batches, from one rendered sample and
    the log-mel's abstract shape: ``fit`` compiles the step from it while the pool renders."""
    one = render_pool(world, 1)
    c = model.config
    audio = jax.eval_shape(lambda w: log_mel_features(w, c.log_mel, c.log_mel_shift, c.log_mel_scale),
                           one.audio)
    one = dataclasses.replace(one, audio=np.zeros(audio.shape, audio.dtype))
    tiled = Pool(*(np.repeat(x, batch_size, axis=0) for x in dataclasses.astuple(one)))
    return spec_of(batch_fn(lambda: tiled, batch_size, 0, prompt_fraction)(0))


def loss_fn(model: TriModalCLIP, params, batch, max_logit_scale: float = MAX_LOGIT_SCALE):
    out, _ = model.apply({"params": params}, batch["image"], batch["input_ids"],
                         batch["attention_mask"], batch["audio"])
    scale = jnp.minimum(out["logit_scale"], max_logit_scale)
    emb = {"vision": out["image_embeds"], "text": out["text_embeds"], "audio": out["audio_embeds"]}
    losses = {f"{a}-{b}": clip_loss(emb[a], emb[b], scale) for a, b in PAIRS}
    return sum(losses.values()) / len(losses), losses


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """``(state, batch) -> (state, metrics)``: one AdamW step on ``loss_fn``. A frozen dataclass, so
    equal steps hash alike and ``fit`` reuses their compiled program across calls."""

    model: TriModalCLIP

    def __call__(self, state: TrainState, batch):
        (loss, parts), grads = jax.value_and_grad(
            lambda p: loss_fn(self.model, p, batch), has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, **parts}


def init_state(model: TriModalCLIP, world: ToyWorld, cfg: ml_collections.ConfigDict) -> TrainState:
    if not 0 <= cfg.warmup_steps < cfg.num_steps:
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) must be in [0, num_steps={cfg.num_steps})")
    b = world.batch(range(2), split="train")
    # One compiled init: eagerly, every initializer op would compile a program of its own.
    params = _init(model, jax.random.key(cfg.seed), b["image"], b["input_ids"], b["attention_mask"],
                   b["audio"])
    tx = optimizer(cfg.learning_rate, cfg.warmup_steps, cfg.num_steps, cfg.weight_decay)
    # No apply_fn: TrainStep holds the model, and a bound method would make every new model
    # instance a new state structure (a recompile of the step).
    return TrainState.create(apply_fn=None, params=params, tx=tx)


@functools.lru_cache(maxsize=8)
def optimizer(learning_rate: float, warmup_steps: int, num_steps: int, weight_decay: float):
    """AdamW on a warmup-cosine schedule, with global-norm clipping. Cached: the optimizer is part
    of the train state's structure, so an equal one lets ``fit`` reuse its compiled step."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, num_steps,
                                                  learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))


def run_config(world: ToyWorld, cfg: ml_collections.ConfigDict) -> dict:
    """Everything that defines the training trajectory (all of ``cfg`` but how it executes,
    ``loop.EXECUTION_KEYS``, and the world), saved with each checkpoint so that a resume with other
    settings is refused."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_KEYS}
    return {**settings, "world": dataclasses.asdict(world.config)}


def train(world: ToyWorld, cfg: ml_collections.ConfigDict, checkpoint_dir=None, stop_after=None,
          progress: bool = True, pool: Pool | None = None, mesh=None,
          state_rules=None) -> tuple[TriModalCLIP, FitResult]:
    """Trains (or resumes) the tri-modal CLIP on ``world``; ``cfg`` is ``config.model``+``train``.
    With a ``mesh``, data-parallel over its ``data`` axis (each process draws only its rows), and
    with ``state_rules`` (``models.trimodal.sharding.TRIMODAL_RULES``) its state sharded over the
    mesh's ``model`` axis (``loop.fit``)."""
    model = TriModalCLIP(model_config(world, cfg))

    def make_pool():
        return with_audio_features(model, render_pool(world, cfg.pool_size) if pool is None else pool)

    rows = parallel.process_rows(cfg.batch_size)
    batches = batch_fn(make_pool, cfg.batch_size, cfg.seed, cfg.prompt_fraction, rows)
    result = fit(lambda: init_state(model, world, cfg), TrainStep(model), batches, cfg.num_steps,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every,
                 stop_after=stop_after, run_config=run_config(world, cfg), desc="toyworld clip",
                 progress=progress, mesh=mesh, steps_per_call=cfg.get("steps_per_call", 1),
                 batch_spec=batch_spec(model, world, cfg.batch_size, cfg.prompt_fraction), state_rules=state_rules)
    return model, result
