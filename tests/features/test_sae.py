"""Sparse autoencoders (``features.sae``, ``features.train``): each architecture recovers a known
sparse dictionary, a member of a stack ends as it would alone, a killed and resumed run equals an
uninterrupted one, the input scale folds into the weights, and the clamp and splice edits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.features import sae as sae_lib
from mrepe_jax.features.edits import SAEClamp, SAESplice
from mrepe_jax.features.sae import Member, SAEConfig
from mrepe_jax.features.train import train_saes
from tests.features.synthetic import dictionary, recovered, samples

D, ATOMS, K = 24, 48, 3


def _batches(atoms, batch_size=256, members=1):
    """Step ``s``: ``[batch_size, members, D]``, member ``i`` its own draw of the dictionary."""
    def batches(step):
        return np.stack([samples(atoms, batch_size, K, seed=1000 * (i + 1) + step) for i in range(members)], 1)
    return batches


def _fit(atoms, steps, **kw):
    cfg = SAEConfig(d_in=D, d_sae=96, num_steps=steps, batch_size=256, aux_k=32, dead_steps=50,
                    learning_rate=3e-3, **kw)
    (sae,) = train_saes(cfg, _batches(atoms), members=[(96, K)], seeds=[0], sites=["x"], progress=False)
    return sae


@pytest.mark.parametrize("seed", [0, 3])
def test_topk_recovers_the_dictionary(seed):
    atoms = dictionary(ATOMS, D, seed)
    sae = _fit(atoms, 600, architecture="topk")
    assert recovered(atoms, sae.params["W_dec"]) >= 0.9
    x = samples(atoms, 1000, K, seed=7)
    z = np.asarray(sae.encode(x))
    assert np.all((z > 0).sum(1) <= K)
    fvu = ((x - np.asarray(sae.decode(z))) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.15
    assert recovered(dictionary(ATOMS, D, seed + 1), sae.params["W_dec"]) < 0.2  # not any dictionary
    # Latents that fired lately are not counted dead (96 latents for 48 atoms: some are).
    assert 0 < sae.info["dead_fraction"] < 0.6


def test_auxk_trains_only_dead_latents_toward_the_residual():
    rng = np.random.default_rng(0)
    cfg = SAEConfig(d_in=8, d_sae=16, architecture="topk", aux_k=4)
    params = sae_lib.init_params(cfg, jax.random.key(0), rng.normal(size=(32, 8)))
    params["b_enc"] = jnp.full((16,), 0.5)  # every latent has a positive pre-activation somewhere
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    member = Member.of(16, k=2)
    dead = jnp.arange(16) >= 10

    def aux(p):
        z = sae_lib.encode(p, x, cfg, member)
        return sae_lib._aux_loss(p, x, sae_lib.decode(p, z), sae_lib.pre_activations(p, x), dead, cfg,
                                 member.live)

    value = aux(params)
    grads = jax.grad(aux)(params)
    assert 0 < float(value) and np.isfinite(float(value))
    enc = np.abs(np.asarray(grads["W_enc"])).sum(0)
    assert np.all(enc[:10] == 0) and np.any(enc[10:] > 0)
    assert float(sae_lib._aux_loss(params, x, x, sae_lib.pre_activations(params, x), jnp.zeros(16, bool), cfg,
                                   member.live)) == 0.0  # nothing dead: no term


def test_jumprelu_recovers_the_dictionary_with_its_learned_thresholds():
    atoms = dictionary(ATOMS, D, 5)
    sae = _fit(atoms, 3000, architecture="jumprelu", l0_coefficient=0.5, bandwidth=0.1, init_threshold=0.1)
    assert recovered(atoms, sae.params["W_dec"]) >= 0.9
    z = np.asarray(sae.encode(samples(atoms, 1000, K, seed=7)))
    assert 1.5 < (z > 0).sum(1).mean() < 6  # the L0 penalty found about the true sparsity
    theta = np.exp(sae.params["log_threshold"])
    assert theta.max() > 10 * 0.1  # the thresholds moved from their start (the STE trains them)


@functools.cache
def _stack_runs():
    atoms = dictionary(ATOMS, D, 1)
    cfg = SAEConfig(d_in=D, d_sae=96, architecture="topk", num_steps=60, batch_size=128, aux_k=32,
                    dead_steps=10, learning_rate=3e-3)
    batches = _batches(atoms, 128, members=2)
    stack = train_saes(cfg, batches, members=[(96, 3), (96, 5)], seeds=[0, 1], sites=["a", "b"], progress=False)
    alone = [train_saes(cfg, lambda s, i=i: batches(s)[:, i:i + 1], members=[m], seeds=[seed], sites=[site],
                        progress=False)[0]
             for i, (m, seed, site) in enumerate([((96, 3), 0, "a"), ((96, 5), 1, "b")])]
    return stack, alone


def test_a_stack_member_ends_as_it_would_alone():
    stack, alone = _stack_runs()
    for s, a in zip(stack, alone):
        assert s.info["site"] == a.info["site"] and s.info["k"] == a.info["k"]
        for name in a.params:
            np.testing.assert_allclose(s.params[name], a.params[name], atol=2e-5, err_msg=name)
        np.testing.assert_allclose(s.info["losses"], a.info["losses"], rtol=1e-4)
    # The two members are different SAEs (sites, k and seeds differ).
    assert np.abs(stack[0].params["W_dec"] - stack[1].params["W_dec"]).max() > 0.1


def test_smaller_members_and_other_k_share_the_stack():
    atoms = dictionary(ATOMS, D, 2)
    cfg = SAEConfig(d_in=D, d_sae=96, architecture="topk", num_steps=30, batch_size=128, aux_k=16,
                    dead_steps=10, learning_rate=3e-3)
    small, big = train_saes(cfg, _batches(atoms, 128, members=2), members=[(48, 2), (96, 4)], seeds=[0, 1],
                            sites=["a", "a"], progress=False)
    assert small.params["W_dec"].shape == (48, D) and small.params["W_enc"].shape == (D, 48)
    assert small.cfg.d_sae == 48 and big.cfg.d_sae == 96
    x = samples(atoms, 64, K, seed=3)
    assert (np.asarray(small.encode(x)) > 0).sum(1).max() <= 2
    assert (np.asarray(big.encode(x)) > 0).sum(1).max() <= 4


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    atoms = dictionary(ATOMS, D, 4)
    cfg = SAEConfig(d_in=D, d_sae=64, architecture="batchtopk", num_steps=40, batch_size=128, aux_k=16,
                    dead_steps=5, learning_rate=3e-3)
    kw = dict(members=[(64, 3)], seeds=[0], sites=["x"], progress=False)
    (whole,) = train_saes(cfg, _batches(atoms, 128), **kw)
    train_saes(cfg, _batches(atoms, 128), checkpoint_dir=tmp_path, stop_after=15, **kw)
    (resumed,) = train_saes(cfg, _batches(atoms, 128), checkpoint_dir=tmp_path, **kw)
    assert resumed.info["resumed_from"] == 15 and resumed.info["steps"] == 40
    for name in whole.params:
        np.testing.assert_allclose(resumed.params[name], whole.params[name], atol=1e-6, err_msg=name)
    assert "threshold" in whole.params and whole.params["threshold"].max() > 0


def test_the_input_scale_folds_into_the_weights():
    rng = np.random.default_rng(0)
    cfg = SAEConfig(d_in=8, d_sae=16, architecture="jumprelu")
    params = sae_lib.init_params(cfg, jax.random.key(0), rng.normal(size=(32, 8)))
    params["b_enc"] = jnp.asarray(rng.normal(size=16) * 0.1, jnp.float32)
    x, scale = rng.normal(size=(5, 8)).astype(np.float32), 3.7
    folded = sae_lib.fold_scale(params, scale)
    np.testing.assert_allclose(sae_lib.encode(folded, x, cfg), sae_lib.encode(params, x * scale, cfg), atol=1e-5)
    np.testing.assert_allclose(sae_lib.reconstruct(folded, x, cfg),
                               sae_lib.reconstruct(params, x * scale, cfg) / scale, atol=1e-5)


def test_topk_keeps_each_rows_k_largest_with_k_traced():
    pre = jnp.asarray([[3.0, -1.0, 2.0, 5.0, 0.5], [0.1, 0.2, 0.3, -0.4, 0.0]])
    assert sae_lib._rank_mask(pre, 2).tolist() == [[True, False, False, True, False],
                                                   [False, True, True, False, False]]
    ks = jnp.asarray([1, 3])
    masks = jax.vmap(lambda k: sae_lib._rank_mask(pre, k))(ks)
    assert masks.sum(-1).tolist() == [[1, 1], [3, 3]]


def _trained_clamp_setup():
    rng = np.random.default_rng(1)
    cfg = SAEConfig(d_in=8, d_sae=16, architecture="relu")
    params = sae_lib.init_params(cfg, jax.random.key(1), rng.normal(size=(32, 8)))
    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)  # [batch, token, feature]
    return cfg, params, x


def test_a_clamp_to_the_current_value_is_the_identity_and_keeps_the_error_term():
    cfg, params, x = _trained_clamp_setup()
    z = sae_lib.encode(params, x, cfg)
    latent = int(np.argmax(np.asarray(z).reshape(-1, 16).mean(0)))
    same = SAEClamp(params, latent, z[..., latent], cfg=cfg)(x, "site")
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    moved = SAEClamp(params, latent, jnp.asarray(4.0), cfg=cfg)(x, "site")
    # The error term x - x_hat survives; the reconstruction is that of the clamped latents.
    z_new = z.at[..., latent].set(4.0)
    expected = x - sae_lib.decode(params, z) + sae_lib.decode(params, z_new)
    np.testing.assert_allclose(moved, expected, atol=1e-5)
    assert np.abs(np.asarray(moved - x)).max() > 0.1


def test_splice_replaces_the_site_with_the_reconstruction_where_selected():
    cfg, params, x = _trained_clamp_setup()
    where = jnp.asarray([[True] * 5, [False] * 5])[..., None]
    out = SAESplice(params, where=where, cfg=cfg)(x, "site")
    np.testing.assert_allclose(out[0], sae_lib.reconstruct(params, x[0], cfg), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(x[1]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"SAE architecture 'gated' is not one of"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    cfg = SAEConfig(d_in=D, d_sae=16, num_steps=2, batch_size=8)
    with pytest.raises(ValueError, match=r"topk needs 1 <= k <= latents for every member, got \[\(16, 20\)\]"):
        train_saes(cfg, lambda s: np.ones((8, 1, D)), members=[(16, 20)], seeds=[0], sites=["x"], progress=False)
    with pytest.raises(ValueError, match=r"batches\(0\) has shape \(8, 1, 5\); expected .* \(8, 1, 24\)"):
        train_saes(cfg, lambda s: np.ones((8, 1, 5)), members=[(16, 2)], seeds=[0], sites=["x"], progress=False)
    with pytest.raises(ValueError, match=r"one seed and one site per member: 1 members, 2 seeds"):
        train_saes(cfg, lambda s: np.ones((8, 1, D)), members=[(16, 2)], seeds=[0, 1], sites=["x"], progress=False)


def test_a_trained_sae_saved_in_saelens_format_loads_back_with_the_same_outputs(tmp_path):
    from mrepe_jax.features.train import load_sae

    atoms = dictionary(ATOMS, D, 4)
    for arch in ("topk", "batchtopk", "jumprelu"):
        cfg = SAEConfig(d_in=D, d_sae=32, architecture=arch, num_steps=20, batch_size=128, aux_k=8,
                        dead_steps=5, learning_rate=3e-3)
        (sae,) = train_saes(cfg, _batches(atoms, 128), members=[(32, 3)], seeds=[0],
                            sites=["vision.layers.1.resid_post"], progress=False)
        x = samples(atoms, 50, K, seed=9)
        sae.save(tmp_path / arch, model_name="tiny", frequency=np.full(32, 0.01))
        back = load_sae(tmp_path / arch)
        assert back.cfg.architecture == arch and back.info["site"] == "vision.layers.1.resid_post"
        np.testing.assert_allclose(back.encode(x), sae.encode(x), atol=1e-6, err_msg=arch)
        np.testing.assert_allclose(back.reconstruct(x), sae.reconstruct(x), atol=1e-5, err_msg=arch)
