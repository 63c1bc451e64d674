"""A long process (a notebook) loads, probes and drops models one after another: after ``del``,
``gc.collect()`` and ``mrepe_jax.clear_caches()``, no cache of the package or of JAX keeps a model,
its params or a closure over them alive (issue 30)."""

import dataclasses
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mrepe_jax
from mrepe_jax import caches
from mrepe_jax.control.evaluate import DirectEdits, steered_predictions
from mrepe_jax.models.clip import CLIPModel
from mrepe_jax.reading import activations
from mrepe_jax.reading.causal import attribution_effect, causal_effect, logit_diff
from tests.models.tiny import CONFIG

SITE = "vision.layers.1.resid_post"


def _checkpoint(i: int):
    """A tiny CLIP of its own width per ``i`` (one checkpoint after another), its variables and
    two images."""
    vision = dataclasses.replace(CONFIG.vision_config, hidden_size=16 + 8 * i, intermediate_size=24 + 8 * i)
    model = CLIPModel(dataclasses.replace(CONFIG, vision_config=vision))
    rng = np.random.default_rng(i)
    pixels = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    ids = jnp.array([[0, 5, 7, 8, 99], [0, 11, 99, 1, 1]], jnp.int32)
    return model, model.init(jax.random.key(i), pixels, ids, jnp.ones_like(ids)), pixels


def _probe(model, variables, pixels, width: int):
    """Everything the issue's notebook did with one model: a forward with captures, a patching
    sweep, attribution, steering and streamed statistics (with ``tower_apply`` and with a closure
    over the params)."""
    _, acts = model.apply(variables, "vision", pixels, capture=("vision.layers.*.resid_post",),
                          method="encode")
    assert len(acts) == 2
    rng = np.random.default_rng(width)
    metric = logit_diff(rng.normal(size=16), rng.normal(size=16))
    corrupt = pixels[::-1]
    assert causal_effect(model, variables, "vision", pixels, corrupt, metric,
                         positions=[0, 1]).effects.shape == (2, 2)
    assert attribution_effect(model, variables, "vision", pixels, corrupt, metric,
                              positions=[0, 1]).effects.shape == (2, 2)
    arrays = {"delta": np.ones((2, width), np.float32), "alpha": np.array([0.0, 1.0], np.float32)}
    preds = steered_predictions(model, variables, "vision", pixels, None, DirectEdits(SITE), arrays,
                                {"c": np.eye(3, 16, dtype=np.float32)})
    assert preds["c"].shape == (2, 2)
    batches = [{"x": np.asarray(pixels)}]
    stats = activations.stream_statistics(activations.tower_apply(model, "vision", "x"), batches,
                                          SITE, params=variables, progress=False)
    closed = lambda params, batch, capture: model.apply(  # noqa: E731 - params=None: closes over them
        variables, "vision", batch["x"], capture=capture, method="encode")
    stats_closed = activations.stream_statistics(closed, batches, SITE, progress=False)
    np.testing.assert_allclose(stats_closed[SITE].mean, stats[SITE].mean, rtol=1e-5, atol=1e-6)


def test_three_models_probed_and_deleted_are_freed_by_clear_caches():
    refs = []
    for i in range(3):
        model, variables, pixels = _checkpoint(i)
        refs.append((weakref.ref(model), weakref.ref(jax.tree.leaves(variables)[0])))
        _probe(model, variables, pixels, 16 + 8 * i)
        del model, variables, pixels
    gc.collect()
    # Until now JAX's caches hold them (static models, the closure's params); not asserted, as a
    # JAX that held them weakly would be no leak.
    mrepe_jax.clear_caches()
    gc.collect()
    alive = [(i, what) for i, (m, p) in enumerate(refs)
             for what, ref in (("model", m), ("param leaf", p)) if ref() is not None]
    assert not alive, f"still referenced after clear_caches: {alive}"


def test_clear_caches_empties_every_package_cache():
    # Import-time caches of modules that hold them (found, not registered: see mrepe_jax.caches).
    from mrepe_jax import sites
    from mrepe_jax.reading import causal_programs

    sites.matches("vision.layers.0.resid_pre", ("vision.*",))
    causal_programs.sweeps(None)
    activations._programs(None)
    found = caches.package_caches()
    for name in ("mrepe_jax.sites.matches", "mrepe_jax.reading.causal_programs.sweeps",
                 "mrepe_jax.reading.activations._programs"):
        assert name in found and found[name].cache_info().currsize >= 1, name
    assert all(name.startswith("mrepe_jax.") for name in found)
    mrepe_jax.clear_caches()
    assert all(c.cache_info().currsize == 0 for c in caches.package_caches().values())


def test_jax_clear_caches_clears_the_package_caches_too():
    from jax._src import util as jax_util

    if not hasattr(jax_util, "register_cache"):
        pytest.skip("this JAX has no cache registry to hook into")
    activations._programs(None)
    assert activations._programs.cache_info().currsize >= 1
    jax.clear_caches()
    assert activations._programs.cache_info().currsize == 0
