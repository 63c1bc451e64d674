"""Streaming activation statistics equal statistics of the whole stacked dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.models.clip import CLIPModel
from mrepe_jax.reading import activations as A
from tests.models.tiny import CONFIG as TINY
from tests.test_parallel import run_with_devices

ATOL = 1e-5
N, G = 50, 3


def tiny_clip():
    model = CLIPModel(TINY)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 10), jnp.int32))
    return model, params


def dataset(seed=0, n=N):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 11, n)
    ids = rng.integers(1, 98, (n, 10)).astype(np.int32)
    mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)
    ids[np.arange(n), lengths - 1] = 99
    return {
        "pixels": rng.normal(size=(n, 16, 16, 3)).astype(np.float32),
        "ids": ids,
        "mask": mask,
        "label": rng.integers(0, G, n).astype(np.int32),
    }


def batches(data, size=16):
    n = len(data["label"])
    return ({k: v[i:i + size] for k, v in data.items()} for i in range(0, n, size))


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def reference(x, labels, g):
    """Numpy statistics of group ``g`` on the whole stacked set, in float64."""
    xs = np.asarray(x, np.float64)[labels == g]
    return len(xs), xs.mean(0), np.cov(xs.T)


VISION_SITES = ("vision.layers.*.resid_post", "vision.proj")


@pytest.mark.parametrize("reduce", ["mean", "cls"])
def test_vision_stream_equals_whole_dataset(clip, reduce):
    model, params = clip
    data = dataset()
    stats = A.stream_statistics(A.tower_apply(model, "vision", "pixels"), batches(data), VISION_SITES,
                                params=params, group_fn="label", num_groups=G, reduce=reduce,
                                covariance=True, progress=False)
    _, acts = model.apply(params, "vision", data["pixels"], method="encode", capture=VISION_SITES)
    assert sorted(stats) == sorted(acts) == [
        "vision.layers.0.resid_post", "vision.layers.1.resid_post", "vision.proj"]
    for site, m in stats.items():
        x = np.asarray(acts[site])
        if x.ndim == 3:
            x = x.mean(1) if reduce == "mean" else x[:, 0]
        cov = np.asarray(m.covariance())
        for g in range(G):
            n, mean, c = reference(x, data["label"], g)
            assert int(m.count[g]) == n
            np.testing.assert_allclose(m.mean[g], mean, atol=ATOL)
            np.testing.assert_allclose(m.sum[g], mean * n, atol=ATOL * n)
            np.testing.assert_allclose(cov[g], c, atol=ATOL)
        pooled = m.pooled()
        np.testing.assert_allclose(pooled.mean[0], x.mean(0), atol=ATOL)
        np.testing.assert_allclose(np.asarray(pooled.covariance())[0], np.cov(x.T), atol=ATOL)


def test_text_masked_mean_equals_whole_dataset(clip):
    model, params = clip
    data = dataset(1)
    sites = ("text.layers.1.resid_post", "text.pooled")
    stats = A.stream_statistics(A.tower_apply(model, "text", "ids", "mask"), batches(data, 8), sites,
                                params=params, mask_key="mask", progress=False)
    _, acts = model.apply(params, "text", data["ids"], data["mask"], method="encode", capture=sites)
    m = data["mask"][..., None].astype(np.float64)
    x = (np.asarray(acts["text.layers.1.resid_post"]) * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(stats["text.layers.1.resid_post"].mean[0], x.mean(0), atol=ATOL)
    np.testing.assert_allclose(stats["text.pooled"].mean[0], np.asarray(acts["text.pooled"]).mean(0), atol=ATOL)
    assert stats["text.pooled"].m2 is None


def test_negative_labels_and_ragged_batches_are_skipped(clip):
    model, params = clip
    data = dataset(2, n=37)  # 16 + 16 + 5: the last batch is padded to 16 and masked
    data["label"][:7] = -1
    stats = A.stream_statistics(A.tower_apply(model, "vision", "pixels"), batches(data), "vision.proj",
                                params=params, group_fn=lambda b: b["label"], num_groups=G,
                                progress=False)
    _, acts = model.apply(params, "vision", data["pixels"], method="encode", capture=("vision.proj",))
    m = stats["vision.proj"]
    assert int(m.count.sum()) == 30
    for g in range(G):
        np.testing.assert_allclose(m.mean[g], np.asarray(acts["vision.proj"])[data["label"] == g].mean(0), atol=ATOL)


def test_update_is_pure_and_merges_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.0, (40, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 2, 40)
    stats0 = {"s": A.init_moments(2, 6, covariance=True)}
    step = jax.jit(lambda st, a, y: A.update(st, {"s": a}, y, reduce="cls"))
    st = stats0
    for i in range(0, 40, 7):
        st = step(st, x[i:i + 7], labels[i:i + 7])
    whole = A.update(stats0, {"s": x}, labels, reduce="cls")
    np.testing.assert_array_equal(np.asarray(stats0["s"].count), 0)  # inputs untouched
    np.testing.assert_array_equal(st["s"].count, whole["s"].count)
    np.testing.assert_allclose(st["s"].mean, whole["s"].mean, atol=ATOL)
    np.testing.assert_allclose(st["s"].m2, whole["s"].m2, atol=1e-4)
    np.testing.assert_allclose(np.asarray(st["s"].covariance())[1], np.cov(x[labels == 1, 0].T), atol=ATOL)


def test_collect_activations_keeps_rows_aligned(clip):
    model, params = clip
    data = dataset(3, n=21)
    out = A.collect_activations(A.tower_apply(model, "vision", "pixels"), batches(data, 8),
                                ("vision.layers.0.resid_post", "vision.proj"), params=params,
                                reduce="cls", keep=("label",))
    _, acts = model.apply(params, "vision", data["pixels"], method="encode", capture=("vision.*",))
    assert out["vision.proj"].shape == (21, 16) and out["vision.layers.0.resid_post"].shape == (21, 32)
    np.testing.assert_allclose(out["vision.layers.0.resid_post"],
                               np.asarray(acts["vision.layers.0.resid_post"])[:, 0], atol=ATOL)
    np.testing.assert_array_equal(out["label"], data["label"])


def test_errors(clip):
    model, params = clip
    fn = A.tower_apply(model, "vision", "pixels")
    data = dataset(4, n=8)
    with pytest.raises(ValueError, match="reduce='none'"):
        A.stream_statistics(fn, batches(data), "vision.layers.0.resid_post", params=params,
                            reduce="none", progress=False)
    with pytest.raises(ValueError, match="reduce must be"):
        A.stream_statistics(fn, batches(data), "vision.proj", params=params, reduce="max", progress=False)
    with pytest.raises(ValueError, match="no batches"):
        A.stream_statistics(fn, [], "vision.proj", params=params, progress=False)
    with pytest.raises(ValueError, match="expected \\(8,\\)"):
        A.stream_statistics(fn, batches(data), "vision.proj", params=params,
                            group_fn=lambda b: np.zeros(3, np.int32), progress=False)
    with pytest.raises(ValueError, match="unknown site"):
        A.stream_statistics(fn, batches(data), "vision.layers.9.resid_post", params=params, progress=False)
    with pytest.raises(ValueError, match="without covariance"):
        A.init_moments(2, 3).covariance()


SHARDED_SCRIPT = """
    import json
    import numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.reading import activations as A
    from tests.reading.test_activations import tiny_clip, dataset, batches, G, VISION_SITES

    model, params = tiny_clip()
    mesh = parallel.make_mesh()
    data = dataset(5, n=45)  # ragged: the last batch of 13 is padded to 16 (a multiple of 8)
    err = {}
    for name, fn, kw in [
        ("vision", A.tower_apply(model, "vision", "pixels"),
         dict(sites=VISION_SITES, group_fn="label", num_groups=G, covariance=True)),
        ("text", A.tower_apply(model, "text", "ids", "mask"),
         dict(sites=("text.layers.*.resid_post",), mask_key="mask")),
    ]:
        one = A.stream_statistics(fn, batches(data), params=params, progress=False, **kw)
        many = A.stream_statistics(fn, batches(data), params=params, progress=False, mesh=mesh, **kw)
        for site in one:
            for field in ("count", "mean", "m2"):
                a, b = getattr(one[site], field), getattr(many[site], field)
                if a is not None:  # relative to the statistic's size (scatter sums grow with N)
                    a = np.asarray(a, np.float64)
                    err[f"{name}:{site}:{field}"] = float(np.abs(a - np.asarray(b)).max() / max(1.0, np.abs(a).max()))
        if name == "vision":  # the sharded statistics against float64 numpy on the same activations
            acts = A.collect_activations(fn, batches(data), VISION_SITES, params=params)
            for site, m in many.items():
                for g in range(G):
                    x = acts[site].astype(np.float64)[data["label"] == g]
                    err[f"f64:{site}:{g}:mean"] = float(np.abs(m.mean[g] - x.mean(0)).max())
                    err[f"f64:{site}:{g}:m2"] = float(np.abs(np.asarray(m.covariance())[g] - np.cov(x.T)).max())
    one = A.collect_activations(A.tower_apply(model, "vision", "pixels"), batches(data), VISION_SITES, params=params)
    many = A.collect_activations(A.tower_apply(model, "vision", "pixels"), batches(data), VISION_SITES,
                                 params=params, mesh=mesh)
    for site in one:
        err[f"collect:{site}"] = float(np.abs(one[site] - many[site]).max() / max(1.0, np.abs(one[site]).max()))
        err[f"collect_rows:{site}"] = float(len(many[site]))
    print(json.dumps({"devices": len(mesh.devices.flat), "err": err}))
"""


@pytest.mark.slow  # an 8-device subprocess (~12 s): `make test-slow`
def test_sharded_statistics_equal_single_device():
    res = run_with_devices(SHARDED_SCRIPT)
    assert res["devices"] == 8
    err = res["err"]
    assert any(k.startswith("vision:") and k.endswith(":m2") for k in err)
    assert any(k.startswith("f64:") and k.endswith(":m2") for k in err)
    for k, v in err.items():
        if k.startswith("collect_rows"):
            assert v == 45, k
        else:  # the same numbers at any device count, and against float64: 1e-6 (relative)
            assert v <= (0.0 if k.endswith(":count") else 1e-6), (k, v)


def test_non_finite_activations_stop_the_stream_naming_site_and_batch(clip):
    """Issue 7 item 7: under jit the model cannot read values, so the aggregating stage refuses."""
    model, params = clip
    data = dataset(3)
    data["pixels"][20, 3, 3, 0] = np.nan  # batch 1 of 16-row batches
    with pytest.raises(FloatingPointError, match=r"non-finite activations \(NaN or inf\) at "
                                                 r"'vision.proj' in batch 1 \(examples 16..31\)"):
        A.stream_statistics(A.tower_apply(model, "vision", "pixels"), batches(data), "vision.proj",
                            params=params, progress=False)
    text = dataset(4)
    text["ids"][40, 1] = 500  # out of the vocabulary: NaN, never another token
    with pytest.raises(FloatingPointError, match=r"'text.layers.0.resid_post' in batch 2 "
                                                 r"\(examples 32..47\)"):
        A.stream_statistics(A.tower_apply(model, "text", "ids", "mask"), batches(text),
                            "text.layers.0.resid_post", params=params, mask_key="mask",
                            progress=False)
    with pytest.raises(FloatingPointError, match=r"'vision.proj' in batch 1 \(examples 16..31\)"):
        A.collect_activations(A.tower_apply(model, "vision", "pixels"), batches(data), "vision.proj",
                              params=params)
