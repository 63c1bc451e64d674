"""Every stage on 8 virtual CPU devices gives the 1-device numbers (DESIGN.md §7): exact and
attribution patching, the ToyWorld CLIP's and the captioner's training steps and losses, InfoNCE
and alignment-map training, streaming evaluation (in tests/reading/test_activations.py). One subprocess: the rest
of the session keeps one device."""

import pytest

from tests.test_parallel import run_with_devices

SCRIPT = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.reading import causal, causal_programs
    from mrepe_jax.data.toyworld.world import ToyWorld, ToyWorldConfig
    from mrepe_jax.train import loop, toyclip
    from tests.models.tiny import tiny_clip
    from tests.train.test_toyclip import tiny_cfg

    mesh = parallel.make_mesh()
    err, res = {}, {"devices": jax.device_count()}
    model, v, pixels, ids, mask = tiny_clip()
    rng = np.random.default_rng(1)
    clean = jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32)  # 3 examples: padded to 8
    corrupt = jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32)
    metric = jax.tree_util.Partial(lambda w, e: e @ w, jnp.linspace(-1, 1, 16))
    texts = (jnp.tile(ids[:1], (3, 1)), jnp.tile(ids[1:], (3, 1)), jnp.tile(mask[:1], (3, 1)),
             jnp.tile(mask[1:], (3, 1)))
    for name, fn, kw in [
        ("exact_resid", causal.causal_effect, {}),
        ("exact_heads", causal.causal_effect, dict(point="attn.z", heads=True)),
        ("attribution", causal.attribution_effect, {}),
    ]:
        one = fn(model, v, "vision", clean, corrupt, metric, **kw)
        many = fn(model, v, "vision", clean, corrupt, metric, mesh=mesh, **kw)
        err[name] = float(np.abs(np.asarray(one.per_example) - np.asarray(many.per_example)).max())
        res[name + "_scale"] = float(np.abs(np.asarray(one.per_example)).max())
    for name, fn in [("text_exact", causal.causal_effect), ("text_attribution", causal.attribution_effect)]:
        one = fn(model, v, "text", texts[0], texts[1], metric, text_mask=(texts[2], texts[3]))
        many = fn(model, v, "text", texts[0], texts[1], metric, text_mask=(texts[2], texts[3]), mesh=mesh)
        err[name] = float(np.abs(np.asarray(one.per_example) - np.asarray(many.per_example)).max())
        res[name + "_scale"] = float(np.abs(np.asarray(one.per_example)).max())
    # A metric with one array row per example (a prompt pair per contrast pair, as the ToyWorld
    # stage uses): the examples split over devices, the metric's rows must follow them.
    # (Exact sweeps split the patches, not the examples, so only attribution is concerned.)
    for b in (8, 3):  # divisible by the 8 devices (split), and not (replicated)
        x0, x1 = (jnp.asarray(rng.normal(size=(b, 16, 16, 3)), jnp.float32) for _ in range(2))
        per_ex = jax.tree_util.Partial(lambda d, e: jnp.sum(e * d, -1), jnp.asarray(rng.normal(size=(b, 16))))
        one = causal.attribution_effect(model, v, "vision", x0, x1, per_ex)
        many = causal.attribution_effect(model, v, "vision", x0, x1, per_ex, mesh=mesh)
        key = f"per_example_metric_attribution_{b}"
        err[key] = float(np.abs(np.asarray(one.per_example) - np.asarray(many.per_example)).max())
        res[key + "_scale"] = float(np.abs(np.asarray(one.per_example)).max())
    traced, _ = causal_programs.sweeps(mesh)
    res["sweep_programs"] = traced._cache_size()

    world = ToyWorld(ToyWorldConfig())
    cfg = tiny_cfg(num_steps=4)
    tri = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    pool = toyclip.render_pool(world, 64)
    _, one = toyclip.train(world, cfg, progress=False, pool=pool)
    _, many = toyclip.train(world, cfg, progress=False, pool=pool, mesh=mesh)
    err["train_losses_4_steps"] = float(np.abs(one.losses - many.losses).max())
    # Two steps per compiled call (a scan of steps, each batch's rows over the 8 devices).
    _, scanned = toyclip.train(world, tiny_cfg(num_steps=4, steps_per_call=2), progress=False, pool=pool,
                               mesh=mesh)
    err["train_losses_2_per_call"] = float(np.abs(one.losses - scanned.losses).max())
    try:  # a global batch the data axis does not divide
        toyclip.train(world, tiny_cfg(num_steps=3, batch_size=12), progress=False, pool=pool, mesh=mesh)
    except ValueError as e:
        res["indivisible"] = str(e)
    res["param_sharding"] = str(jax.tree.leaves(many.state.params)[0].sharding.spec)
    res["train_programs"] = loop._guarded(toyclip.TrainStep(tri), mesh, 1)._cache_size()

    # The ToyWorld captioner's training steps: each batch's rows over the 8 devices.
    from mrepe_jax.train import captioner
    from tests.train.test_captioner import make_clip, tiny_cfg as captioner_cfg
    clip, clip_params = make_clip(world)
    cpool = captioner.render_pool(world, clip, clip_params, 32)
    ccfg = captioner_cfg(num_steps=4, pool_size=32, checkpoint_every=4)
    _, _, c_one = captioner.train(world, clip, clip_params, ccfg, progress=False, pool=cpool)
    c_model, _, c_many = captioner.train(world, clip, clip_params, ccfg, progress=False, pool=cpool,
                                         mesh=mesh)
    err["train_captioner_losses_4_steps"] = float(np.abs(c_one["losses"] - c_many["losses"]).max())
    res["captioner_losses"] = [float(x) for x in c_many["losses"]]
    res["captioner_programs"] = loop._guarded(captioner.TrainStep(c_model), mesh, 1)._cache_size()

    # Alignment maps (eq 3-4): two stacked maps, the rows of each batch over 8 devices, the
    # InfoNCE negatives gathered across them (with a memory of extra negatives).
    from mrepe_jax.align.train import MapTrainConfig, train_maps
    src = rng.normal(size=(2, 64, 6)).astype(np.float32)
    tgt = np.tanh(src @ rng.normal(size=(6, 5))).astype(np.float32)
    mcfg = MapTrainConfig(hidden=8, num_anchors=4, batch_size=16, epochs=2, memory_size=16,
                          learning_rate=1e-3)
    kw = dict(seeds=(0, 1), source_site="a", target_site="b", progress=False)
    one_maps, many_maps = train_maps(mcfg, src, tgt, **kw), train_maps(mcfg, src, tgt, mesh=mesh, **kw)
    err["train_map_losses"] = float(max(np.abs(np.subtract(a.info["losses"], b.info["losses"])).max()
                                        for a, b in zip(one_maps, many_maps)))
    err["train_map_outputs"] = float(max(np.abs(np.asarray(a(src[0])) - np.asarray(b(src[0]))).max()
                                         for a, b in zip(one_maps, many_maps)))
    # Sparse autoencoders: a stack of two (other sizes and k), each batch's rows over 8 devices;
    # BatchTopK picks over the whole global batch.
    from mrepe_jax.features.sae import SAEConfig
    from mrepe_jax.features.train import train_saes
    for arch in ("topk", "batchtopk"):
        scfg = SAEConfig(d_in=6, d_sae=16, architecture=arch, num_steps=5, batch_size=32, aux_k=4,
                         dead_steps=2, learning_rate=1e-2)
        sae_batches = lambda s: np.random.default_rng(s).normal(size=(32, 2, 6)).astype(np.float32)
        kw = dict(members=[(16, 2), (12, 3)], seeds=[0, 1], sites=["a", "b"], progress=False)
        one_s, many_s = train_saes(scfg, sae_batches, **kw), train_saes(scfg, sae_batches, mesh=mesh, **kw)
        err[f"train_sae_{arch}_losses"] = float(max(np.abs(np.subtract(a.info["losses"], b.info["losses"])).max()
                                                    for a, b in zip(one_s, many_s)))
        res[f"sae_{arch}_loss_scale"] = float(max(max(a.info["losses"]) for a in one_s))
    # Interventions (eq 5 + 7) and PGD (eq 11) with the batch sharded over the data axis.
    from mrepe_jax.control.interventions import attention, combine, direct
    from mrepe_jax.metrics.safety import pgd
    x8 = jnp.asarray(rng.uniform(size=(8, 16, 16, 3)), jnp.float32)
    d = jnp.asarray(rng.normal(size=32), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(8, 4, 5, 5)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)

    def steered(x, alpha):
        edits = combine(direct("vision.layers.1.resid_post", d, alpha, 2.0),
                        attention("vision.layers.0.attn.logits", bias))
        return model.apply(v, "vision", x, edits=edits, method="encode")[0]

    def attack(x):
        loss = lambda z: -jnp.sum(steered(z, 0.3) * target, -1)
        return pgd(loss, x, epsilon=0.05, steps=4, step_size=0.02, bounds=(0.0, 1.0))

    one_out, one_adv = jax.jit(steered)(x8, 0.3), jax.jit(attack)(x8)
    placed = parallel.shard_batch(x8, mesh)
    many_out, many_adv = jax.jit(steered)(placed, 0.3), jax.jit(attack)(placed)
    err["steered_outputs"] = float(jnp.abs(one_out - many_out).max())
    err["pgd_inputs"] = float(jnp.abs(one_adv - many_adv).max())
    res["pgd_moved"] = float(jnp.abs(one_adv - x8).max())
    res["steered_sharding"] = str(many_out.sharding.spec)

    # InfoNCE (eq 3) sharded over the rows, negatives all-gathered: value and gradients (through a
    # linear map, as training uses it) against the one-device loss, under jit.
    from mrepe_jax.train.contrastive import info_nce, sharded_info_nce

    def info_nce_checks():
        sharded = sharded_info_nce(mesh)
        B, D, M = 16, 6, 5
        f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
        src, tgt, mem, W = f32(B, D), f32(B, D), f32(M, D), f32(D, D)
        tau = jnp.float32(0.2)

        def rel(a, b):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))

        out = {"err": {}, "scale": {}}
        for sym in (False, True):
            for name, neg in (("none", None), ("m0", jnp.zeros((0, D), jnp.float32)), ("m5", mem)):
                key = f"sym{int(sym)}_{name}"
                def one(s, t, w, tau, loss):
                    return loss(s @ w, t, tau, neg, symmetric=sym)
                vg = jax.jit(jax.value_and_grad(one, (0, 1, 2, 3)), static_argnums=4)
                ref_v, ref_g = vg(src, tgt, W, tau, info_nce)
                v, g = vg(src, tgt, W, tau, sharded)
                out["err"][key + "_value"] = rel(v, ref_v)
                for i, n in enumerate(("src", "tgt", "W", "tau")):
                    out["err"][f"{key}_grad_{n}"] = rel(g[i], ref_g[i])
                    out["scale"][f"{key}_grad_{n}"] = float(np.max(np.abs(ref_g[i])))
                ps, pt = parallel.shard_batch((src, tgt), mesh)  # inputs placed on the mesh
                out["err"][key + "_placed_value"] = rel(
                    jax.jit(lambda a, b: sharded(a @ W, b, tau, neg, symmetric=sym))(ps, pt), ref_v)
        gm = jax.jit(jax.grad(lambda m: sharded(src, tgt, tau, m, symmetric=True)))(mem)
        out["mem_grad_max"] = float(np.max(np.abs(gm)))
        try:
            sharded(src[:12], tgt[:12], tau)
        except ValueError as e:
            out["indivisible"] = str(e)
        return out

    res["info_nce"] = info_nce_checks()
    res["err"] = err
    print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def eight():
    return run_with_devices(SCRIPT)


def test_patching_on_eight_devices_equals_one(eight):
    assert eight["devices"] == 8
    assert eight["exact_resid_scale"] > 1e-2  # not vacuous
    # 1e-6 relative to the effects' size: float32 holds ~7 digits, and the 8-device programs
    # batch fewer patches per matmul, so rounding differs in the last ulps.
    keys = [k for k in eight["err"] if not k.startswith(("train", "steered", "pgd"))]
    assert len(keys) == 7
    for key in keys:
        scale = max(1.0, eight.get(key + "_scale", 1.0))
        assert eight["err"][key] <= 1e-6 * scale, (key, eight["err"][key], scale)
    # One program per (tower, point), not per layer, under the mesh too: vision resid_pre, vision
    # attn.z and text resid_pre, two layers each.
    assert eight["sweep_programs"] == 3


def test_training_on_eight_devices_equals_one(eight):
    # The sharded steps' losses are the single-device ones to float reassociation. (The weights
    # agree less tightly: Adam divides by sqrt(v), so a 1e-9 rounding difference in a near-zero
    # gradient moves a weight by up to the learning rate.)
    assert eight["err"]["train_losses_4_steps"] <= 1e-6
    assert eight["err"]["train_losses_2_per_call"] <= 1e-6
    for arch in ("topk", "batchtopk"):  # relative to the losses' size (~6)
        assert eight["err"][f"train_sae_{arch}_losses"] <= 1e-6 * eight[f"sae_{arch}_loss_scale"]
    assert eight["param_sharding"] in ("P()", "PartitionSpec()")  # replicated state
    assert eight["train_programs"] == 1  # no retracing across steps
    assert "batch size 12 is not divisible by the 'data' mesh axis size 8" in eight["indivisible"]


def test_captioner_training_on_eight_devices_equals_one(eight):
    # 1e-6 relative to the loss, as for the patching effects above: at a loss of ~5 one float32
    # ulp is 4.8e-7, and the 8-device step sums its token losses in another order (measured:
    # 1.9e-6, 9.5e-7, 4.8e-7, 1.4e-6 over the 4 steps, i.e. at most 4 ulps).
    losses = eight["captioner_losses"]
    assert eight["err"]["train_captioner_losses_4_steps"] <= 1e-6 * max(1.0, max(losses))
    assert len(losses) == 4 and losses[-1] < losses[0]  # it trains: the comparison is not vacuous
    assert eight["captioner_programs"] == 1


def test_alignment_maps_on_eight_devices_equal_one(eight):
    # Losses of every step (rounded to 5 digits in FittedMap.info) and the trained maps' outputs.
    assert eight["err"]["train_map_losses"] <= 2e-5
    assert eight["err"]["train_map_outputs"] <= 1e-4


def test_info_nce_on_eight_devices_equals_one(eight):
    nce = eight["info_nce"]
    # 3 memories x 2 directions x (value, placed value, 4 grads), each max |diff| / max(1, |ref|)
    assert len(nce["err"]) == 6 * 6
    for key, err in nce["err"].items():
        assert err <= 1e-6, (key, err)
    for key, scale in nce["scale"].items():
        assert scale > 1e-3, key  # the gradients compared are not vacuous
    assert nce["mem_grad_max"] == 0.0
    assert "batch size 12 is not divisible by the 'data' mesh axis size 8" in nce["indivisible"]


def test_interventions_and_pgd_on_eight_devices_equal_one(eight):
    assert eight["err"]["steered_outputs"] <= 1e-6
    assert eight["err"]["pgd_inputs"] <= 1e-6
    assert eight["pgd_moved"] > 0.01  # the attack did something to compare
    assert "data" in eight["steered_sharding"]  # the batch stayed split over the mesh
