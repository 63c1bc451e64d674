"""Params sharded by the rule tables over 2-D meshes (data x model) and with FSDP give the
one-device outputs: CLIP's and BLIP-2's forwards and BLIP-2's greedy tokens on every mesh; eq 2's
exact and attribution patching, an edited and captured forward, the steering stage, alignment
maps and the toy CLIP's training (its state sharded by the table, resumed from a sharded
checkpoint); a checkpoint saved on one mesh restores onto another. Each script runs in a
subprocess with 8 virtual CPU devices; the rest of the session keeps one device."""

import pytest

from tests.test_parallel import run_with_devices

SCRIPT = """
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.models import sharding
    from mrepe_jax.models.blip2 import generate
    from mrepe_jax.models.blip2.sharding import BLIP2_RULES
    from mrepe_jax.models.clip.sharding import CLIP_RULES
    from tests.models.tiny import tiny_clip
    from tests.models.blip2.test_parity import converted, nhwc, prompt

    warnings.simplefilter("ignore")  # the tiny vocabularies do not divide by 8: replicated, with a warning
    clip, v, pixels, ids, mask = tiny_clip()
    pixels8 = jnp.tile(pixels, (4, 1, 1, 1))
    ids8, mask8 = jnp.tile(ids, (4, 1)), jnp.tile(mask, (4, 1))
    clip_fwd = jax.jit(lambda p, x, i, m: clip.apply({"params": p}, x, i, m)[0]["image_embeds"])
    b2, b2p = converted("xattn2_opt2")
    px, bids, bmask = prompt(batch_images=3)
    px = np.concatenate([nhwc(px)] * 3)[:8]
    bids, bmask = np.concatenate([bids] * 3)[:8], np.concatenate([bmask] * 3)[:8]
    b2_fwd = jax.jit(lambda p, x, i, m: b2.apply({"params": p}, x, i, m)[0]["logits"])

    def run(clip_params, b2_params, mesh):
        inputs = (pixels8, ids8, mask8) if mesh is None else parallel.shard_batch((pixels8, ids8, mask8), mesh)
        b2_in = (px, bids, bmask) if mesh is None else parallel.shard_batch((px, bids, bmask), mesh)
        return (np.asarray(clip_fwd(clip_params, *inputs)), np.asarray(b2_fwd(b2_params, *b2_in)),
                np.asarray(generate(b2, b2_params, b2_in[0], b2_in[1], b2_in[2], max_new_tokens=6,
                                    eos_token_id=())))

    base = run(v["params"], b2p, None)
    res = {"tokens_distinct": int(len(np.unique(base[2])))}
    for name, shape, fsdp in [("8x1", (8, 1), False), ("2x4", (2, 4), False), ("1x8", (1, 8), False),
                              ("2x4_fsdp", (2, 4), True), ("8x1_fsdp", (8, 1), True)]:
        mesh = parallel.make_mesh(shape, ("data", "model"))
        kw = dict(fsdp=fsdp, fsdp_min_size=256, indivisible="replicate")
        cp = sharding.shard_params(v["params"], CLIP_RULES, mesh, **kw)
        bp = sharding.shard_params(b2p, BLIP2_RULES, mesh, **kw)
        out = run(cp, bp, mesh)
        k = cp["vision_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
        res[name] = {"clip_err": float(np.abs(out[0] - base[0]).max()),
                     "blip2_err": float(np.abs(out[1] - base[1]).max()),
                     "tokens_equal": bool((out[2] == base[2]).all()),
                     "fc1_spec": str(k.sharding.spec),
                     "fc1_shard": list(k.addressable_shards[0].data.shape),
                     "bytes": sharding.per_device_bytes(bp, sharding.param_specs(bp, BLIP2_RULES, mesh, **kw), mesh)}
    from mrepe_jax.reading import causal
    rng = np.random.default_rng(1)
    clean = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    corrupt = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    metric = jax.tree_util.Partial(lambda w, e: e @ w, jnp.linspace(-1, 1, 16))
    mesh = parallel.make_mesh((2, 4), ("data", "model"))
    sharded = sharding.shard_params(v["params"], CLIP_RULES, mesh, indivisible="replicate")
    seen = {}
    orig_jit = causal.programs.attribution_jit
    def spy(model, variables, *a, **k):
        fc1 = variables["params"]["vision_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
        seen["spec"] = str(fc1.sharding.spec)
        return orig_jit(model, variables, *a, **k)
    causal.programs.attribution_jit = spy
    causal.attribution_effect(clip, {"params": sharded}, "vision", clean, corrupt, metric, mesh=mesh)
    causal.programs.attribution_jit = orig_jit
    res["attribution_param_spec"] = seen["spec"]
    # A checkpoint written from (8, 1) with FSDP restores onto (2, 4) sharded by the table.
    import tempfile
    import orbax.checkpoint as ocp
    saved_on = parallel.make_mesh((8, 1), ("data", "model"))
    with tempfile.TemporaryDirectory() as d:
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(d + "/params", sharding.shard_params(v["params"], CLIP_RULES, saved_on, fsdp=True,
                                                       fsdp_min_size=256, indivisible="replicate"))
        ckpt.wait_until_finished()
        target = sharding.abstract_params(v["params"], CLIP_RULES, mesh, indivisible="replicate")
        restored = ckpt.restore(d + "/params", target)
    k = restored["text_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]["kernel"]
    res["restored_spec"] = str(k.sharding.spec)
    res["restored_mesh"] = dict(k.sharding.mesh.shape)
    restored_out = np.asarray(clip_fwd(restored, *parallel.shard_batch((pixels8, ids8, mask8), mesh)))
    res["restored_err"] = float(np.abs(restored_out - base[0]).max())
    from mrepe_jax.data.toyworld.world import ToyWorld, ToyWorldConfig
    from mrepe_jax.models.trimodal.sharding import TRIMODAL_RULES
    from mrepe_jax.train import toyclip
    from tests.train.test_toyclip import tiny_cfg
    world = ToyWorld(ToyWorldConfig())
    pool = toyclip.render_pool(world, 64)
    # The ToyWorld CLIP trained on (2, 4) with its state sharded by the table (params and Adam's
    # moments): the one-device losses; resumed from a sharded checkpoint, the same again.
    cfg = tiny_cfg(num_steps=4, hidden_size=32, num_heads=4, mlp_size=64)
    _, one = toyclip.train(world, cfg, progress=False, pool=pool)
    _, many = toyclip.train(world, cfg, progress=False, pool=pool, mesh=mesh, state_rules=TRIMODAL_RULES)
    with tempfile.TemporaryDirectory() as d:
        toyclip.train(world, cfg, d, stop_after=2, progress=False, pool=pool, mesh=mesh, state_rules=TRIMODAL_RULES)
        _, resumed = toyclip.train(world, cfg, d, progress=False, pool=pool, mesh=mesh, state_rules=TRIMODAL_RULES)
    q = many.state.params["vision_model"]["encoder"]["layers"]["0"]["self_attn"]["q_proj"]["kernel"]
    mu = jax.tree.leaves(many.state.opt_state)
    res["train"] = {"loss_err": float(np.abs(one.losses - many.losses).max()),
                    "resumed_err": float(np.abs(one.losses[2:] - resumed.losses).max()),
                    "param_err": float(max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
                                           zip(jax.tree.leaves(one.state.params), jax.tree.leaves(many.state.params)))),
                    "q_spec": str(q.sharding.spec),
                    "moments_sharded": sum(1 for x in mu if "model" in str(getattr(x, "sharding", "")))}
    res["bytes_one"] = sharding.per_device_bytes(b2p, sharding.param_specs(b2p, BLIP2_RULES, {"model": 1}),
                                                 {"model": 1})
    print(json.dumps(res))
"""


PROBE = """
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.models import sharding
    from mrepe_jax.models.clip.sharding import CLIP_RULES
    from tests.models.tiny import tiny_clip

    warnings.simplefilter("ignore")  # the tiny vocabularies do not divide by 8: replicated, with a warning
    clip, v, pixels, ids, mask = tiny_clip()
    MESHES = MESHES_HERE
    res = {}
    # On every mesh, with the params laid out by the table: eq 2's exact sweep (patches over
    # data) and attribution (examples over data), a forward with an eq 5 + eq 7 edit and a capture,
    # Table 3's steering stage (vmapped interventions), one alignment-map fit and two toy CLIP
    # training steps with the state sharded by the same layout. Each against one device.
    from mrepe_jax.align.train import MapTrainConfig, train_maps
    from mrepe_jax.control.interventions import attention, combine, direct
    from mrepe_jax.data.toyworld.world import ToyWorld, ToyWorldConfig
    from mrepe_jax.models.trimodal.sharding import TRIMODAL_RULES
    from mrepe_jax.reading import causal
    from mrepe_jax.stages.steering import steer
    from mrepe_jax.train import toyclip
    from tests.train.test_toyclip import tiny_cfg
    rng = np.random.default_rng(1)
    clean = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    corrupt = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    metric = jax.tree_util.Partial(lambda w, e: e @ w, jnp.linspace(-1, 1, 16))
    d, bias = jnp.linspace(-1, 1, 32), jnp.asarray(rng.normal(size=(8, 4, 5, 5)), jnp.float32)
    edits = combine(direct("vision.layers.1.resid_post", d, 0.5, 2.0), attention("vision.layers.0.attn.logits", bias))
    sites = ("vision.layers.0.mlp.hidden", "vision.layers.1.resid_post", "vision.layers.1.attn.q")
    encode = lambda p, x: clip.apply({"params": p}, "vision", x, edits=edits, capture=sites, method="encode")
    fwd = jax.jit(encode)
    labels = np.arange(8) % 3
    dirs = rng.normal(size=(3, 32)).astype(np.float32)
    means = rng.normal(size=(3, 32)).astype(np.float32)
    prompts = rng.normal(size=(3, 16)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    src = rng.normal(size=(2, 64, 6)).astype(np.float32)
    tgt = np.tanh(src @ rng.normal(size=(6, 5))).astype(np.float32)
    mcfg = MapTrainConfig(hidden=8, num_anchors=4, batch_size=16, epochs=1, memory_size=16, learning_rate=1e-3)
    world = ToyWorld(ToyWorldConfig())
    tcfg = tiny_cfg(num_steps=2, warmup_steps=1, hidden_size=32, num_heads=4, mlp_size=64)
    pool = toyclip.render_pool(world, 64)

    def probe(p, mesh=None, layout=None):
        out = {}
        for fn in (causal.causal_effect, causal.attribution_effect):
            key = "exact" if fn is causal.causal_effect else "attribution"
            out[key] = fn(clip, {"params": p}, "vision", clean, corrupt, metric, mesh=mesh).per_example
        x = clean if mesh is None else parallel.shard_batch(clean, mesh)
        emb, acts = fwd(p, x)
        out["steered"] = emb
        out.update({"capture " + k: v for k, v in acts.items()})
        table3 = steer(clip, p, "vision", clean, None, labels, "vision.layers.1.resid_post", dirs, means, 3.0,
                       (0.5, 2.0), prompts)
        out["steer"] = np.asarray([table3["none"], table3["ap"], *table3["direct"].values()])
        maps = train_maps(mcfg, src, tgt, seeds=(0, 1), source_site="a", target_site="b", progress=False, mesh=mesh)
        out["map_losses"] = np.asarray([m.info["losses"] for m in maps])
        out["map_outputs"] = np.stack([np.asarray(m(src[0])) for m in maps])
        _, fit = toyclip.train(world, tcfg, progress=False, pool=pool, mesh=mesh, state_rules=layout)
        out["train_losses"] = fit.losses
        return {k: np.asarray(v) for k, v in out.items()}, acts

    # The exact sweep's shard_map is manual over data only: params split over model are not
    # all-gathered onto each device (a fully manual shard_map would gather what its body closes over).
    hlo = []
    sweeps = causal.programs.sweeps
    def spy(mesh):
        traced, per_layer = sweeps(mesh)
        def traced_spy(*a, **k):
            hlo.append(traced.lower(*a, **k).compile().as_text())
            return traced(*a, **k)
        return traced_spy, per_layer
    fc1 = tuple(v["params"]["vision_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]["kernel"].shape)
    layers = clip.config.vision_config.num_hidden_layers
    gathered = ("f32[%d,%d]{" % fc1, "f32[%d,%d,%d]{" % ((layers,) + fc1))  # as is, or stacked for the scan
    one, _ = probe(v["params"])
    res["probe_scale"] = {k: float(np.abs(x).max()) for k, x in one.items()}
    res["steer"] = one["steer"].tolist()
    res["probe"] = {}
    for name, shape, fsdp in MESHES:
        mesh = parallel.make_mesh(shape, ("data", "model"))
        placed = sharding.Layout(CLIP_RULES, fsdp=fsdp, fsdp_min_size=256).place(v["params"], mesh)
        layout = sharding.Layout(TRIMODAL_RULES, fsdp=fsdp, fsdp_min_size=256)
        causal.programs.sweeps = spy
        many, acts = probe(placed, mesh, layout if layout.splits(mesh) else None)
        causal.programs.sweeps = sweeps
        res.setdefault("fc1_all_gathers", {})[name] = sum(
            1 for line in hlo[-1].splitlines()
            if "all-gather(" in line and line.split("=")[1].strip().startswith(gathered))
        res["probe"][name] = {k: float(np.abs(many[k] - one[k]).max()) for k in one}
        res["probe"][name]["capture_specs"] = {k: str(a.sharding.spec) for k, a in acts.items()}
        # Captures inside a user's own jit take the layout GSPMD propagates (a column-parallel
        # site's features may come back split over model); out_shardings fixes it: rows over data.
        pinned = jax.jit(encode, out_shardings=parallel.data_sharding(mesh))(
            placed, parallel.shard_batch(clean, mesh))[1]
        res["probe"][name]["pinned_specs"] = sorted({str(a.sharding.spec) for a in pinned.values()})
    print(json.dumps(res))
"""


def test_sharded_params_give_the_one_device_outputs():
    res = run_with_devices(SCRIPT)
    assert res["tokens_distinct"] > 2
    train = res["train"]
    assert train["loss_err"] <= 1e-5 and train["resumed_err"] <= 1e-5, train
    # Params are not equal to 1e-5: Adam's normalised step turns rounding differences of near-zero
    # gradients (partial sums over the model axis) into up to a step of lr (1e-3) for those
    # entries. The bound is two steps' worth per step; the losses above carry the trajectory.
    assert train["param_err"] <= 2 * 1e-3 * 4, train
    assert train["q_spec"] == "P(None, 'model')" and train["moments_sharded"] > 0, train
    assert res["restored_err"] < 1e-5 and res["restored_mesh"] == {"data": 2, "model": 4}
    assert res["restored_spec"] == "P(None, 'model')"
    assert res["attribution_param_spec"] == "P(None, 'model')"
    for name in ("8x1", "2x4", "1x8", "2x4_fsdp", "8x1_fsdp"):
        r = res[name]
        assert r["clip_err"] < 1e-5 and r["blip2_err"] < 1e-4 and r["tokens_equal"], (name, r)
    assert res["1x8"]["fc1_spec"] == "P(None, 'model')" and res["1x8"]["fc1_shard"] == [32, 8]
    assert res["8x1_fsdp"]["fc1_spec"] == "P(None, 'data')"
    assert res["8x1"]["fc1_shard"] == [32, 64]  # no model axis, no FSDP: whole
    # Per-device bytes of BLIP-2's params: the model axis divides them; the replicated rest is small.
    assert res["1x8"]["bytes"] < 0.35 * res["bytes_one"] and res["8x1"]["bytes"] == res["bytes_one"]
    assert res["8x1_fsdp"]["bytes"] < 0.5 * res["bytes_one"]


MESHES = {"8x1": ((8, 1), False), "2x4": ((2, 4), False), "1x8": ((1, 8), False), "2x4_fsdp": ((2, 4), True)}


def check_probe(res: dict, names) -> None:
    scale = res["probe_scale"]
    assert scale["exact"] > 1e-3 and scale["attribution"] > 1e-3 and scale["train_losses"] > 1
    assert len(set(res["steer"])) > 1, res["steer"]  # the success rates compared are not constant
    assert sorted(res["probe"]) == sorted(names)
    for name, errs in res["probe"].items():
        specs, pinned = errs.pop("capture_specs"), errs.pop("pinned_specs")
        assert len(errs) == 10, sorted(errs)
        for key, err in errs.items():
            # The model axis splits each contraction into partial sums: rounding differs in the
            # last ulps, relative to each figure's size. Map losses are stored to 5 digits.
            tol = 2e-5 if key == "map_losses" else 1e-4 if key == "map_outputs" else 1e-5 * max(1.0, scale[key])
            assert err <= tol, (name, key, err, tol)
        # The documented layout of captures under out_shardings=data_sharding: rows over data.
        assert pinned == ["P('data',)"], (name, pinned)
        assert MESHES[name][0][0] == 1 or all("data" in sp for sp in specs.values()), (name, specs)
        if not MESHES[name][1]:  # FSDP gathers each param for its matmuls, by design
            assert res["fc1_all_gathers"][name] == 0, (name, res["fc1_all_gathers"])


def probe(names) -> dict:
    meshes = [(n, *MESHES[n]) for n in names]
    return run_with_devices(PROBE.replace("MESHES_HERE", repr(meshes)))


def test_every_stage_on_a_2x4_fsdp_mesh_gives_the_one_device_outputs():
    """Eq 2 (exact and attribution), an eq 5 + eq 7 edited forward with captures, Table 3's
    steering stage, an alignment-map fit and two toy CLIP steps (state sharded by the table), with
    the params sharded over model and FSDP over data: the one-device figures."""
    check_probe(probe(["2x4_fsdp"]), ["2x4_fsdp"])


@pytest.mark.slow
def test_every_stage_on_every_mesh_gives_the_one_device_outputs():
    """The same on (8, 1), (2, 4), (1, 8) and (2, 4) with FSDP. Slow (~2.5 min on 2 cores): ``make
    test-slow``."""
    check_probe(probe(list(MESHES)), list(MESHES))
