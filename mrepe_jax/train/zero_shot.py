"""Zero-shot classification of ToyWorld concepts: each family's class prompts are the classifier."""

from __future__ import annotations

import functools

import jax
import numpy as np

from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.models.layers import normalize
from mrepe_jax.train.toyclip import class_prompt_tokens


@functools.partial(jax.jit, static_argnums=0)  # module level: one compile per model, not per call
def encode_text(model, params, ids, mask):
    """Unit-norm text embeddings ``[N, D]`` of token ids ``[N, T]`` (one compiled program per model)."""
    return normalize(model.apply({"params": params}, "text", ids, mask, method="encode")[0])


def prompt_embeddings(model, params, world: ToyWorld) -> dict[str, np.ndarray]:
    """``{family: [V, D]}`` unit-norm text embeddings of each family's class prompts."""
    ids, mask = class_prompt_tokens(world)
    emb = encode_text(model, params, ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1]))
    emb = np.asarray(emb).reshape(ids.shape[0], ids.shape[1], -1)
    return {f: emb[i, : len(v)] for i, (f, v) in enumerate(world.families.items())}


def predict(embeddings: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """``[N]`` zero-shot predictions: the value whose prompt (``[V, D]``, unit rows) has the
    highest cosine with each embedding ``[N, D]`` (the embedding's own norm cannot change it)."""
    return np.argmax(np.asarray(embeddings) @ np.asarray(prompts).T, -1)


def zero_shot_accuracy(embeddings: dict[str, np.ndarray], prompts: dict[str, np.ndarray],
                       labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{modality: {family: accuracy}}``: argmax of cosine similarity to the class prompts."""
    return {
        modality: {f: float(np.mean(predict(emb, prompts[f]) == labels[f])) for f in prompts}
        for modality, emb in embeddings.items()
    }
