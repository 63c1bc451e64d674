"""Zero-shot classification of ToyWorld concepts: each family's class prompts are the classifier."""

from __future__ import annotations

import jax
import numpy as np

from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.models.clip import normalize
from mrepe_jax.train.toyclip import class_prompt_tokens


def embed_all(model, params, batch, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Unit-norm embeddings of every modality of a batch dict, computed in chunks."""
    encode = jax.jit(lambda tower, *x: normalize(model.apply({"params": params}, tower, *x,
                                                             method="encode")[0]), static_argnums=0)
    n = len(batch["image"])
    out = {"vision": [], "text": [], "audio": []}
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        out["vision"].append(encode("vision", batch["image"][sl]))
        out["audio"].append(encode("audio", batch["audio"][sl]))
        out["text"].append(encode("text", batch["input_ids"][sl], batch["attention_mask"][sl]))
    return {k: np.concatenate(v) for k, v in out.items()}


def prompt_embeddings(model, params, world: ToyWorld) -> dict[str, np.ndarray]:
    """``{family: [V, D]}`` unit-norm text embeddings of each family's class prompts."""
    ids, mask = class_prompt_tokens(world)
    emb = normalize(model.apply({"params": params}, "text", ids.reshape(-1, ids.shape[-1]),
                                mask.reshape(-1, ids.shape[-1]), method="encode")[0])
    emb = np.asarray(emb).reshape(ids.shape[0], ids.shape[1], -1)
    return {f: emb[i, : len(v)] for i, (f, v) in enumerate(world.families.items())}


def zero_shot_accuracy(embeddings: dict[str, np.ndarray], prompts: dict[str, np.ndarray],
                       labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{modality: {family: accuracy}}``: argmax of cosine similarity to the class prompts."""
    return {
        modality: {f: float(np.mean(np.argmax(emb @ prompts[f].T, -1) == labels[f])) for f in prompts}
        for modality, emb in embeddings.items()
    }
