"""SAE metrics (``features.evaluate``) against their definitions computed on the whole array."""

import numpy as np
import pytest

from mrepe_jax.features.evaluate import evaluate_sae


class _Diagonal:
    """A hand-made SAE: latent i reads feature i (ReLU), latent 3 reads nothing, so its metrics are
    known exactly."""

    class cfg:
        d_sae = 4

    def encode(self, x):
        z = np.zeros((len(x), 4), np.float32)
        z[:, :3] = np.maximum(x[:, :3], 0)
        return z

    def decode(self, z):
        return z[:, :3]


def test_metrics_equal_their_definitions_over_streamed_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    x[:, 2] = np.abs(x[:, 2]) * (rng.random(300) < 0.05)  # latent 2 fires on ~5 % of rows
    m = evaluate_sae(_Diagonal(), (x[i:i + 64] for i in range(0, 300, 64)))
    z = _Diagonal().encode(x)
    x_hat = _Diagonal().decode(z)
    assert m.rows == 300
    assert m.l0 == pytest.approx((z > 0).sum(1).mean())
    assert m.fvu == pytest.approx(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-6)
    assert m.dead_fraction == 0.25  # latent 3
    # Latents 0 and 1 fire on about half the rows (dense), latent 2 on ~5 %, latent 3 never.
    assert m.dense_fraction == 0.5
    np.testing.assert_allclose(m.frequency, (z > 0).mean(0))
    with pytest.raises(ValueError, match="got no rows"):
        evaluate_sae(_Diagonal(), [])
