"""The exact patching sweep and a ToyWorld CLIP training step on 1, 2, 4 and 8 devices; params
sharded by the rule tables on 2-D meshes of 8.

Each device count runs in a fresh subprocess (on CPU, ``--xla_force_host_platform_device_count``
makes that many virtual devices; on a GPU/TPU host the real devices are used and counts above
the device count are skipped). For each it reports

  (a) the sweep (``causal_effect`` over every layer x token of a CLIP image tower, patches split
      over the ``data`` axis): first-call and steady-state seconds, the largest difference of its
      effects from the 1-device effects, and the per-device argument + temporary bytes of its
      compiled program (``memory_analysis``);
  (b) one data-parallel train step of the ToyWorld CLIP (state replicated, batch split): steady
      seconds, the loss (equal at every count up to rounding) and per-device bytes;
  (c) params sharded by the family's rule table (``models.*.sharding``) over ``data`` x ``model``
      meshes of 8 devices, for a CLIP (ViT-B/32) and a BLIP-2 (``bench/generate.py``'s shape):
      per-device param bytes at model 1, 2, 4, 8 and with FSDP over 8, and the compiled forward's
      per-device argument + temporary bytes on (8, 1), (4, 2), (2, 4), (1, 8) and (8, 1) with FSDP;
      and, projected from shapes alone (``jax.eval_shape``), blip2-opt-6.7b's and ViT-bigG's
      per-device bf16 param bytes.

Virtual CPU devices share the same cores, so their timings measure overhead, not speed-up: this is
a correctness and memory check there, a speed check on real accelerators. The last stdout line is
one JSON object.

    python bench/scaling.py            # 4-layer ViT sweep, ToyWorld CLIP default config
    python bench/scaling.py --tiny     # smoke run: tiny models, 1 and 2 devices
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

SETTINGS = {
    "default": dict(hidden=128, mlp=256, layers=4, heads=4, image=64, patch=16, pairs=2,
                    toyworld=None, counts=(1, 2, 4, 8)),
    "tiny": dict(hidden=32, mlp=64, layers=2, heads=4, image=16, patch=8, pairs=2,
                 toyworld="tiny", counts=(1, 2)),
}


def _bytes(compiled) -> int | None:
    stats = compiled.memory_analysis()
    return None if stats is None else int(stats.argument_size_in_bytes + stats.temp_size_in_bytes)


def worker(s: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import toyworld as toyworld_config
    from mrepe_jax import parallel
    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.experiments.toyworld.pipeline import train_config
    from mrepe_jax.models.clip import CLIPModel
    from mrepe_jax.reading import causal, causal_programs
    from mrepe_jax.train import loop, toyclip

    mesh = parallel.make_mesh()
    vision = dict(hidden_size=s["hidden"], intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], image_size=s["image"], patch_size=s["patch"])
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                vocab_size=100, max_position_embeddings=8, eos_token_id=99)
    model = CLIPModel(common.clip_config(vision, text, projection=32))
    rng = np.random.default_rng(0)
    clean, corrupt = (rng.normal(size=(s["pairs"], s["image"], s["image"], 3)).astype(np.float32)
                      for _ in range(2))
    variables = model.init(jax.random.key(0), "vision", clean[:1], method="encode")
    metric = jax.tree_util.Partial(lambda w, e: e @ w, jnp.linspace(-1.0, 1.0, 32))

    def sweep():
        return np.asarray(causal.causal_effect(model, variables, "vision", clean, corrupt, metric,
                                               mesh=mesh).per_example)

    first, steady = common.time_calls(sweep, 2)
    effects = sweep()
    traced, _ = causal_programs.sweeps(mesh)
    sweep_bytes = _per_program_bytes(traced, model, variables, clean, corrupt, metric, mesh)

    config = toyworld_config.get_config(s["toyworld"])
    cfg = train_config(config)
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    tri = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    pool = toyclip.with_audio_features(tri, toyclip.render_pool(world, max(2 * cfg.batch_size, 64)))
    batch = toyclip.batch_fn(lambda: pool, cfg.batch_size, cfg.seed, cfg.prompt_fraction)(0)
    state = jax.device_put(toyclip.init_state(tri, world, cfg), parallel.replicated(mesh))
    gbatch = parallel.global_batch(batch, mesh)
    step = loop._guarded(toyclip.TrainStep(tri), mesh, 1)
    compiled = step.lower(state, (gbatch,)).compile()
    times = []
    for _ in range(4):
        state = jax.device_put(toyclip.init_state(tri, world, cfg), parallel.replicated(mesh))
        t0 = time.perf_counter()
        _, (metrics, _) = step(state, (gbatch,))
        loss = float(parallel.to_host(metrics["loss"])[0])
        times.append(time.perf_counter() - t0)
    return {"devices": jax.device_count(), "sweep_first_s": first, "sweep_s": steady,
            "effects": effects.tolist(), "sweep_bytes_per_device": sweep_bytes,
            "train_step_s": sorted(times)[len(times) // 2], "loss": loss,
            "train_bytes_per_device": _bytes(compiled), "batch": cfg.batch_size}


def _per_program_bytes(traced, model, variables, clean, corrupt, metric, mesh):
    """Per-device argument + temporary bytes of the sweep program (every layer shares it), lowered
    with the arguments ``causal_effect`` passes it for layer 0."""
    import jax.numpy as jnp

    from mrepe_jax.layouts import TOKEN_AXES
    from mrepe_jax.reading import causal_programs

    model, variables, _ = causal_programs.scanned(model, variables)
    site = "vision.layers.0.resid_pre"
    _, base = model.apply(variables, "vision", clean, method="encode", capture=(site,))
    _, src = model.apply(variables, "vision", corrupt, method="encode", capture=(site,))
    t = base[site].shape[1]
    masks = causal_programs.pad_patches(causal_programs.where_masks(TOKEN_AXES, t, 1, range(t), False), mesh)
    lowered = traced.lower(model, variables, "vision", "resid_pre", jnp.int32(0), None, metric,
                           base[site], src[site], masks, None, clean)
    return _bytes(lowered.compile())


# ----------------------------------------------------------------------------------------------
# Param sharding: the rule tables (``models.*.sharding``) on 2-D meshes, without weights.

MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))


def abstract_model(name: str):
    """(model, rules, abstract params [ShapeDtypeStruct], example inputs) of ``param_shapes[name]``."""
    import jax
    import jax.numpy as jnp

    from bench import param_shapes
    from mrepe_jax.models.blip2 import Blip2Config, Blip2ForConditionalGeneration, default_prompt
    from mrepe_jax.models.blip2.sharding import BLIP2_RULES
    from mrepe_jax.models.clip import CLIPModel
    from mrepe_jax.models.clip.sharding import CLIP_RULES

    if name in param_shapes.CLIP:
        s = param_shapes.CLIP[name]
        model = CLIPModel(common.clip_config(s["vision"], s["text"], s["projection_dim"]))
        size = s["vision"]["image_size"]
        inputs = (jnp.zeros((8, size, size, 3)), jnp.zeros((8, s["text"]["max_position_embeddings"]), jnp.int32))
        rules = CLIP_RULES
    else:
        config = Blip2Config.from_hf_dict(param_shapes.BLIP2[name])
        model = Blip2ForConditionalGeneration(config)
        size = config.vision_config.image_hw[0]
        inputs = (jnp.zeros((8, size, size, 3)), jnp.asarray(default_prompt(config, 8)))
        rules = BLIP2_RULES
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"])
    return model, rules, params, inputs


def param_worker(tiny: bool) -> dict:
    """Per-device bytes of the params (model axis 1..8, and FSDP over 8) and of the compiled
    forward's arguments + temporaries on each 2-D mesh of 8 devices, for the bench shapes; the
    params of real checkpoints' shapes projected in bf16."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from mrepe_jax import parallel
    from mrepe_jax.models import sharding

    out: dict = {"bench": {}, "projected_bf16": {}}
    for name in (("clip_tiny", "blip2_tiny") if tiny else ("clip_b32", "blip2_bench")):
        model, rules, params, inputs = abstract_model(name)
        row: dict = {"params_bytes": {}, "forward_bytes": {}}
        for m in (1, 2, 4, 8):
            sizes = {"data": 8 // m, "model": m}
            row["params_bytes"][f"model={m}"] = sharding.per_device_bytes(
                params, sharding.param_specs(params, rules, sizes), sizes)
        sizes = {"data": 8, "model": 1}
        row["params_bytes"]["fsdp=8"] = sharding.per_device_bytes(
            params, sharding.param_specs(params, rules, sizes, fsdp=True), sizes)
        for shape, fsdp in [(m, False) for m in MESHES] + [((8, 1), True)]:
            mesh = parallel.make_mesh(shape, ("data", "model"))
            specs = sharding.param_specs(params, rules, mesh, fsdp=fsdp)
            placed = jax.tree.map(lambda x, sp, mesh=mesh: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                                  sharding=NamedSharding(mesh, sp)),
                                  params, specs)
            batch = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.data_sharding(mesh))
                          for x in inputs)
            fwd = jax.jit(lambda p, *x, model=model: model.apply({"params": p}, *x)[0])
            key = f"{shape[0]}x{shape[1]}" + ("_fsdp" if fsdp else "")
            row["forward_bytes"][key] = _bytes(fwd.lower(placed, *batch).compile())
        row["params_ratio_model8"] = round(row["params_bytes"]["model=8"] / row["params_bytes"]["model=1"], 4)
        out["bench"][name] = row
    for name in ("clip_tiny", "blip2_tiny") if tiny else ("clip_bigG", "blip2_opt_6.7b"):
        _, rules, params, _ = abstract_model(name)
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
        row = {}
        for (d, m), fsdp in [((1, 1), False), ((1, 8), False), ((8, 1), True), ((2, 4), True)]:
            sizes = {"data": d, "model": m}
            row[f"{d}x{m}" + ("_fsdp" if fsdp else "")] = sharding.per_device_bytes(
                params, sharding.param_specs(params, rules, sizes, fsdp=fsdp), sizes)
        out["projected_bf16"][name] = row
    return out


def run_worker(n: int, mode: str, params: bool = False) -> dict | None:
    env = dict(os.environ)
    import jax

    if jax.default_backend() == "cpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    elif n > jax.device_count():
        return None
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(n)))
    return common.run_worker(__file__, ["--worker", "--mode", mode] + ["--params"] * params, env, f"{n} devices")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes, 1 and 2 devices")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--params", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        result = param_worker(args.mode == "tiny") if args.params else worker(SETTINGS[args.mode])
        print(json.dumps(result))
        return

    import numpy as np

    mode = "tiny" if args.tiny else "default"
    s = SETTINGS[mode]
    rows = {n: r for n in s["counts"] if (r := run_worker(n, mode)) is not None}
    ref = np.asarray(rows[1]["effects"])
    print(f"sweep: CLIP image tower d={s['hidden']}, {s['layers']} layers, "
          f"{(s['image'] // s['patch']) ** 2 + 1} tokens, {s['pairs']} pairs; train step: ToyWorld "
          f"CLIP, {mode} config, batch {rows[1]['batch']}")
    record = {"bench": "scaling", "mode": mode, "date": common.utc_now(), "rows": []}
    for n, r in rows.items():
        diff = float(np.abs(np.asarray(r["effects"]) - ref).max())
        loss_diff = abs(r["loss"] - rows[1]["loss"])
        print(f"{n} device(s): sweep first {r['sweep_first_s']:.2f} s, steady {r['sweep_s']:.3f} s, "
              f"max |effects - 1 device| {diff:.1e}, {_mib(r['sweep_bytes_per_device'])} per device; "
              f"train step {r['train_step_s'] * 1e3:.1f} ms, loss {r['loss']:.6f} "
              f"(|diff| {loss_diff:.1e}), {_mib(r['train_bytes_per_device'])} per device")
        record["rows"].append({
            "devices": n, "sweep_first_s": round(r["sweep_first_s"], 3), "sweep_s": round(r["sweep_s"], 4),
            "sweep_max_abs_diff": diff, "sweep_bytes_per_device": r["sweep_bytes_per_device"],
            "train_step_s": round(r["train_step_s"], 4), "loss": r["loss"], "loss_abs_diff": loss_diff,
            "train_bytes_per_device": r["train_bytes_per_device"]})
    params = run_worker(8, mode, params=True)
    if params is not None:
        for name, row in params["bench"].items():
            print(f"{name}: params per device " + ", ".join(f"{k} {_mib(v)}" for k, v in row["params_bytes"].items())
                  + f" (model=8 / model=1: {row['params_ratio_model8']:.3f}); forward arguments + temporaries "
                  + ", ".join(f"{k} {_mib(v)}" for k, v in row["forward_bytes"].items()))
        for name, row in params["projected_bf16"].items():
            print(f"{name} (bf16, projected): params per device "
                  + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in row.items()))
        record["params"] = params
    print(json.dumps(record))


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


if __name__ == "__main__":
    main()
