"""Data drawn from a known sparse dictionary: the ground truth an SAE should recover."""

import numpy as np


def dictionary(num_atoms: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[num_atoms, dim]`` random unit atoms."""
    a = np.random.default_rng(seed).standard_normal((num_atoms, dim))
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def samples(atoms: np.ndarray, n: int, k: int, seed: int) -> np.ndarray:
    """``[n, dim]``: each row a sum of ``k`` distinct atoms with coefficients in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n, len(atoms))), axis=1)[:, :k]
    coef = rng.uniform(0.5, 1.5, (n, k))
    return np.einsum("nk,nkd->nd", coef, atoms[idx]).astype(np.float32)


def recovered(atoms: np.ndarray, decoder: np.ndarray, threshold: float = 0.9) -> float:
    """The share of atoms whose best-matching decoder row has cosine >= ``threshold``."""
    d = decoder / np.maximum(np.linalg.norm(decoder, axis=-1, keepdims=True), 1e-12)
    return float(np.mean((atoms @ d.T).max(1) >= threshold))
