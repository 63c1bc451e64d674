"""Cost of one ToyWorld CLIP training step against one forward of the same batch.

The demo's first stage trains the tri-modal ToyWorld CLIP (``mrepe_jax.train.toyclip``); its time
is ``num_steps`` times one jit'd train step. A step is a forward, a backward and an AdamW update,
so it should cost about three forwards; this bench prints both and their ratio:

  (a) the forward: the training loss (three towers, three pairwise InfoNCE terms) on one batch;
  (b) the train step: ``value_and_grad`` of that loss plus the optimizer update, as ``fit`` runs it
      (``steps_per_call`` steps per compiled call, with its finiteness checks; per step), against
      as many forwards per call (per forward); and both one per call, dispatch included;
  (c) the first call (compile) of each, the pool rendering and the batch assembly of one step.

Both are fed the batches training uses (images, token ids, precomputed log-mel features). Timings
are medians of ``--iters`` interleaved calls. The last stdout line is one JSON object.

    python bench/train_step.py            # the demo's config (batch 128); about a minute on 2 cores
    python bench/train_step.py --tiny     # the tiny config, a smoke run
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("iters", 10, "timed calls of each; the median is reported")
flags.DEFINE_integer("warmup", 2, "untimed calls of each before timing (the first compiles)")
flags.DEFINE_bool("tiny", False, "the tiny config and 2 iters: a smoke run of the script")
common.define_flags()
flags.adopt_module_key_flags(common)


def main(argv):
    del argv
    common.configure_jax(FLAGS)
    import jax
    import jax.numpy as jnp

    from configs import toyworld as toyworld_config
    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.experiments.toyworld.pipeline import train_config
    from mrepe_jax.train import loop, toyclip

    config = toyworld_config.get_config("tiny" if FLAGS.tiny else None)
    iters = common.tiny_default("iters", 2, FLAGS.tiny)
    cfg = train_config(config)
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    model = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    state = toyclip.init_state(model, world, cfg)

    t0 = time.perf_counter()
    pool = toyclip.render_pool(world, cfg.pool_size)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = toyclip.with_audio_features(model, pool)
    features_s = time.perf_counter() - t0
    batches = toyclip.batch_fn(lambda: pool, cfg.batch_size, cfg.seed, cfg.prompt_fraction)
    t0 = time.perf_counter()
    batch = batches(0)
    assemble_s = time.perf_counter() - t0

    # Training runs k steps per compiled call (loop.fit's steps_per_call, a lax.scan): timed that
    # way, per step, against k forwards per call, per forward. One step or forward per call is
    # timed too: there each call also pays its dispatch (a state of hundreds of leaves).
    k = loop.steps_per_call_for(cfg.get("steps_per_call", 1), cfg.checkpoint_every, 0, cfg.num_steps)
    calls = tuple(batches(j) for j in range(k))
    forward = jax.jit(lambda params, batch: toyclip.loss_fn(model, params, batch)[0])
    forwards = jax.jit(lambda params, bs: jax.lax.map(
        lambda b: toyclip.loss_fn(model, params, b)[0], jax.tree.map(lambda *xs: jnp.stack(xs), *bs)))
    step = jax.jit(toyclip.TrainStep(model))
    steps = loop._guarded(toyclip.TrainStep(model), None, k)  # what fit calls; it donates the state
    trained = [jax.tree.map(jnp.copy, state)]

    def run_steps():
        trained[0], out = steps(trained[0], calls)
        jax.block_until_ready(out)

    timed = common.time_interleaved({
        "forward": lambda: forward(state.params, batch).block_until_ready(),
        "train_step": lambda: jax.block_until_ready(step(state, batch)),
        "forwards": lambda: forwards(state.params, calls).block_until_ready(),
        "steps": run_steps,
    }, iters, FLAGS.warmup)
    (fwd1_first, fwd1, _), (_, step1, _) = timed["forward"], timed["train_step"]
    (_, fwdk, _), (step_first, stepk, _) = timed["forwards"], timed["steps"]
    fwd, step_s = fwdk / k, stepk / k
    record = {
        "bench": "train_step",
        "config": "tiny" if FLAGS.tiny else "default",
        "batch": cfg.batch_size,
        "steps_per_call": k,
        "forward_ms": round(fwd * 1e3, 2),
        "train_step_ms": round(step_s * 1e3, 2),
        "step_over_forward": round(step_s / fwd, 2),
        "one_per_call": {"forward_ms": round(fwd1 * 1e3, 2), "train_step_ms": round(step1 * 1e3, 2),
                         "step_over_forward": round(step1 / fwd1, 2)},
        "forward_first_call_s": round(fwd1_first, 2),
        "train_step_first_call_s": round(step_first, 2),
        "pool_render_s": round(render_s, 2),
        "pool_log_mel_s": round(features_s, 2),
        "batch_assembly_ms": round(assemble_s * 1e3, 2),
        "projected_training_s": round(step_s * cfg.num_steps + step_first, 1),
        "device": common.describe_device(),
        "load_average": common.load_average(),
        "date": common.utc_now(),
    }
    one = record["one_per_call"]
    print(f"{k} per call: forward {record['forward_ms']} ms, train step {record['train_step_ms']} ms: "
          f"{record['step_over_forward']}x; one per call: {one['forward_ms']} / {one['train_step_ms']} ms: "
          f"{one['step_over_forward']}x (first calls {record['forward_first_call_s']} s / "
          f"{record['train_step_first_call_s']} s); {cfg.num_steps} steps ~ "
          f"{record['projected_training_s']} s")
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
