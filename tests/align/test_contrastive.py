"""InfoNCE (eq 3) against a direct numpy transcription of the equation."""

import numpy as np
import pytest

from mrepe_jax.align.contrastive import clip_loss, info_nce


def eq3(src, tgt, tau, negatives=None):
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    cands = tgt if negatives is None else np.concatenate([tgt, negatives])
    losses = [-np.log(np.exp(cos(s, tgt[i]) / tau) / sum(np.exp(cos(s, r) / tau) for r in cands))
              for i, s in enumerate(src)]
    return np.mean(losses)


def test_info_nce_matches_equation_3():
    rng = np.random.default_rng(0)
    src, tgt, neg = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    np.testing.assert_allclose(info_nce(src, tgt, 0.1), eq3(src, tgt, 0.1), rtol=1e-5)
    np.testing.assert_allclose(info_nce(src, tgt, 0.1, neg), eq3(src, tgt, 0.1, neg), rtol=1e-5)
    np.testing.assert_allclose(clip_loss(src, tgt, 10.0),
                               0.5 * (eq3(src, tgt, 0.1) + eq3(tgt, src, 0.1)), rtol=1e-5)


def test_info_nce_shape_errors():
    with pytest.raises(ValueError, match=r"matching \[B, D\] inputs, got \(5, 8\) and \(4, 8\)"):
        info_nce(np.zeros((5, 8)), np.zeros((4, 8)), 0.1)
