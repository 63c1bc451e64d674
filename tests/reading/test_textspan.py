"""TextSpan's greedy text basis (``reading.textspan``) against a plain numpy implementation of
Algorithm 1 written from the paper and ``compute_complete_text_set.py``, on random data."""

import jax
import numpy as np
import pytest

from mrepe_jax.reading.textspan import text_span


def reference(data, texts, iters, rank, center_svd=False):
    """Step by step, in float64, as their code: SVD, projection of the texts onto the span with
    ``V^T (V V^T)^-1 V``, centring, then ``iters`` picks by the (unbiased) std of ``data @ t`` with
    removal of ``t`` from the data and the texts, dividing by ``t . t``."""
    data, texts = np.asarray(data, np.float64), np.asarray(texts, np.float64)
    mean = data.mean(0, keepdims=True)
    _, _, vh = np.linalg.svd(data - mean if center_svd else data, full_matrices=False)
    vh = vh[:rank]
    texts = (vh.T @ np.linalg.inv(vh @ vh.T) @ vh @ texts.T).T
    data = data - mean
    recon = np.repeat(mean, len(data), 0)
    picked, variance = [], []
    for _ in range(iters):
        top = int(np.argmax((data @ texts.T).std(0, ddof=1)))
        t = texts[top]
        norm = t @ t
        coef = data @ t / norm
        picked.append(top)
        variance.append(np.mean(coef ** 2) * norm)  # the removed component's variance
        recon = recon + coef[:, None] * t
        data = data - coef[:, None] * t
        texts = texts - (texts @ t / norm)[:, None] * t
    return np.array(picked), np.array(variance), recon


def random_head(seed, n=80, d=16, m=60, rank=10):
    """A head whose outputs vary along a few directions, and texts some of which point along them."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d))
    data = (rng.normal(size=(n, rank)) * np.linspace(3, 0.3, rank)) @ basis + rng.normal(size=d)
    data += 0.05 * rng.normal(size=(n, d))
    texts = rng.normal(size=(m, d))
    texts[: m // 3] += 2 * rng.normal(size=(m // 3, rank)) @ basis / np.sqrt(d)
    return data.astype(np.float32), texts.astype(np.float32)


@pytest.mark.parametrize("center_svd", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_basis_equals_numpy_reference(seed, center_svd):
    data, texts = random_head(seed)
    # Fewer picks than the rank: once ``rank`` directions are removed every text is zero in the
    # span, and later picks are rounding noise (in TextSpan as here).
    basis = text_span(data, texts, num_texts=7, rank=9, center_svd=center_svd)
    idx, var, recon = reference(data, texts, 7, 9, center_svd)
    np.testing.assert_array_equal(basis.indices, idx)
    np.testing.assert_allclose(basis.variance, var, rtol=1e-4)
    np.testing.assert_allclose(basis.reconstruction, recon, atol=1e-4)
    total = ((data - data.mean(0)) ** 2).mean(0).sum()
    np.testing.assert_allclose(basis.total_variance, total, rtol=1e-5)
    assert len(set(idx.tolist())) == 7  # a picked text is removed, never picked twice
    assert 0 < basis.explained().sum() <= 1 + 1e-6


def test_vmapped_over_heads_equals_one_head_at_a_time():
    heads = [random_head(s) for s in range(3)]
    data = np.stack([h[0] for h in heads])
    texts = heads[0][1]
    many = jax.vmap(lambda x: text_span(x, texts, num_texts=5, rank=6))(data)
    for h in range(3):
        one = text_span(data[h], texts, num_texts=5, rank=6)
        np.testing.assert_array_equal(many.indices[h], one.indices)
        np.testing.assert_allclose(many.variance[h], one.variance, rtol=1e-5)
