"""What ``report.html``'s page of one SAE feature shows (issue 28), computed in the SAE stage
(``experiments/toyworld/features.py``) for each feature that is some concept value's best:

- *top examples*: the ``examples`` test images of highest activation (an image's activation is its
  tokens' mean, as the stage's AUROCs read it), each with the latent's activation per patch token
  as a ``[rows, cols]`` grid (the vision tower's tokens are CLS first, then the patches
  row-major) and the CLS token's apart; each image a PNG under the stage's workdir, written once
  however many features show it (``gallery/features/test_{index}.png``);
- *histogram*: the per-image activation on every test image, counted in ``bins`` equal bins from
  0 (or the minimum, if lower) to the maximum; the counts sum to the number of test images;
- *words*: the decoder row read through the text tower. The row, added at the site (eq 5: unit
  row times ``alpha`` times the site's mean norm, as Table 3 steers it), shifts each test image's
  unit-norm embedding; the shift's mean over the steered test images is ranked against the text
  tower's unit-norm embedding of ``PROMPT.format(word)`` for every word of ToyWorld's caption
  vocabulary (cosine). The site is the last layer's ``resid_post``, so the image's embedding is
  the readout (``post_layernorm`` of CLS, then the projection) of the edited stream: exact, and
  no encoder re-run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.data.toyworld.text import caption_vocabulary
from mrepe_jax.experiments.toyworld.gallery import patch_grid
from mrepe_jax.models.layers import normalize
from mrepe_jax.report.images import save_png
from mrepe_jax.train.zero_shot import encode_text

#: The text each vocabulary word is embedded in (the shape family's class-prompt template).
PROMPT = "a photo of a {}"
GALLERY = "gallery/features"
#: Per page: top examples shown, histogram bins, words each side; the alpha of the words' shift
#: (in units of the site's mean norm, as Table 3's alphas).
EXAMPLES, BINS, WORDS, WORDS_ALPHA = 6, 20, 8, 1.0


def image_path(index: int) -> str:
    """The PNG of test image ``index``, relative to the stage's workdir."""
    return f"{GALLERY}/test_{int(index):05d}.png"


def top_examples(token_acts: np.ndarray, count: int, labels: dict, names: dict,
                 grid: tuple[int, int]) -> list[dict]:
    """The ``count`` test images of highest mean activation, highest first (ties: lower index).

    ``token_acts [N, T]``: one latent's activation per image and token (CLS first, then the
    ``grid``'s ``rows x cols`` patches row-major: the vision config's ``grid``);
    ``labels``: ``{family: [N]}`` value indices, ``names``: ``{family: [value name]}``."""
    token_acts = np.asarray(token_acts, np.float64)
    image = token_acts.mean(1)
    order = np.argsort(-image, kind="stable")[:count]
    out = []
    for i in order:
        cls, heat = patch_grid(token_acts[i], grid)
        out.append({"index": int(i), "image": image_path(i), "activation": float(image[i]), "cls": cls,
                    "heat": heat.round(5).tolist(), "labels": {f: names[f][int(labels[f][i])] for f in names}})
    return out


def histogram(values: np.ndarray, bins: int) -> dict:
    """Counts of ``values`` in ``bins`` equal bins over [min(0, lowest), highest] (the last bin
    closed), and how many are exactly zero (a sparse latent's silent images, in the first bin)."""
    values = np.asarray(values, np.float64)
    lo, hi = min(0.0, float(values.min())), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": edges.round(6).tolist(), "counts": counts.astype(int).tolist(),
            "zeros": int(np.sum(values == 0)), "n": int(len(values))}


def rank_words(shift: np.ndarray, word_embeddings: np.ndarray, words, count: int) -> dict:
    """The ``count`` words of highest and of lowest cosine between ``shift [D]`` and each word's
    embedding (``word_embeddings [W, D]``, unit rows), each ``[word, cosine]``."""
    cos = np.asarray(word_embeddings) @ (shift / max(float(np.linalg.norm(shift)), 1e-12))
    order = np.argsort(-cos, kind="stable")
    return {"top": [[words[i], round(float(cos[i]), 4)] for i in order[:count]],
            "bottom": [[words[i], round(float(cos[i]), 4)] for i in order[::-1][:count]],
            "shift_norm": float(np.linalg.norm(shift))}


def word_embeddings(model, params, world, chunk: int) -> tuple[tuple[str, ...], np.ndarray]:
    """``(words, [W, D] unit rows)``: ``PROMPT.format(word)`` for every caption-vocabulary word,
    through the text tower. Chunks of ``chunk`` rows (the class prompts' count: their compiled
    program serves these too), the last one padded."""
    words = caption_vocabulary()
    ids, mask = world.tokenizer.encode([PROMPT.format(w) for w in words], world.config.max_len)
    out = []
    for s in range(0, len(words), chunk):
        i, m = ids[s:s + chunk], mask[s:s + chunk]
        pad = chunk - len(i)
        if pad:
            i, m = np.concatenate([i, np.repeat(i[-1:], pad, 0)]), np.concatenate([m, np.repeat(m[-1:], pad, 0)])
        out.append(np.asarray(encode_text(model, params, i, m))[:chunk - pad])
    return words, np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _readout_shift(model, params, h, units, alpha, scale):
    """``[P, D']``: per unit row, the mean over images of unit(readout(h + alpha scale row)) -
    unit(readout(h)), ``h [N, 1, D]`` the CLS token at the last layer's output."""
    clean = normalize(model.apply({"params": params}, "vision", h, method="readout")[0])

    def one(u):
        steered, _ = model.apply({"params": params}, "vision", h + alpha * scale * u, method="readout")
        return (normalize(steered) - clean).mean(0)

    return jax.lax.map(one, units)


def embedding_shift(model, params, cls_tokens: np.ndarray, rows: np.ndarray, alpha: float,
                    scale: float) -> np.ndarray:
    """``[P, D']``: the mean change of the unit image embedding when each decoder row
    (``rows [P, D]``, unit-normalised here) is added to ``cls_tokens [N, D]`` at the last layer's
    output (module docstring; eq 5's ``r + alpha Delta``)."""
    rows = np.asarray(rows, np.float32)
    units = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
    h = jnp.asarray(np.asarray(cls_tokens, np.float32)[:, None])
    return np.asarray(_readout_shift(model, params, h, jnp.asarray(units), jnp.float32(alpha),
                                     jnp.float32(scale)))


def write_images(workdir, pixels: np.ndarray, indices) -> None:
    """The PNG of each test image in ``indices`` (``image_path``), once each (process 0 only)."""
    for i in sorted(set(int(i) for i in indices)):
        save_png(workdir / image_path(i), pixels[i])
