"""The dual-encoder run's decomposition stage (issue 27, for ``configs/clip.py``): the image
embedding of held-out images split into TextSpan's terms (``reading.decompose``), and every
attention head labelled by its greedy text basis (``reading.textspan``) over a pool of texts: a
file of one text per line (``decomposition.texts_path``), or by default the class prompts and the
caption families' words. A tower that is not a plain ViT (CLAP's HTSAT) is skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrepe_jax.reading.decompose import decompose
from mrepe_jax.reading.textspan import text_span
from mrepe_jax.report.markdown import table


def text_pool(config, section: str) -> tuple[list[str], str]:
    """The texts heads are labelled with, and where they came from."""
    cfg = config.decomposition
    if cfg.texts_path:
        path = Path(cfg.texts_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"decomposition.texts_path {str(path)!r} does not exist (one text per line)")
        texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(texts) <= cfg.num_texts:
            raise ValueError(f"decomposition.texts_path {str(path)!r} holds {len(texts)} texts; the basis picks "
                             f"decomposition.num_texts={cfg.num_texts} per head, so give more")
        return texts, f"file {path}"
    lab = config[section]
    texts = [lab.templates[0].format(c) for c in lab.classes]
    texts += [f"a photo of {w}." for values in config.captions.families.values() for w in values]
    return texts, "the class prompts and the caption families' words"


def run(ckpt, config, pool: np.ndarray) -> dict:
    """Head labels (module docstring) from the first ``decomposition.num_images`` of ``pool``
    (preprocessed held-out inputs of the modality's tower)."""
    cfg = config.decomposition
    tower = ckpt.modality.tower
    if not ckpt.decomposes:
        return {"skipped": f"the {tower} tower is not a plain ViT: TextSpan's decomposition does not apply"}
    texts, source = text_pool(config, ckpt.modality.section)
    emb = ckpt.prompts(texts, ("{}",))  # [M, D'] unit norm
    x = np.asarray(pool[:cfg.num_images])
    d = decompose(ckpt.model, {"params": ckpt.params}, x, tower, mesh=ckpt.mesh)
    heads = np.asarray(d.heads())  # [N, L, H, D']
    rank = min(int(cfg.rank), emb.shape[1], len(x))
    labelled = []
    for layer in range(heads.shape[1]):
        for h in range(heads.shape[2]):
            basis = text_span(heads[:, layer, h], emb, min(int(cfg.num_texts), rank - 1), rank)
            labelled.append({"layer": layer, "head": h, "texts": [texts[int(i)] for i in np.asarray(basis.indices)],
                             "explained": [float(e) for e in np.asarray(basis.explained())],
                             "norm": float(np.linalg.norm(heads[:, layer, h], axis=-1).mean())})
    return {"texts": source, "num_texts_pool": len(texts), "num_images": len(x),
            "sum_error": float(np.abs(np.asarray(d.total()) - np.asarray(d.target)).max()),
            "embedding_scale": float(np.abs(np.asarray(d.target)).max()), "heads": labelled}


def report_parts(r: dict) -> list:
    """report.md's parts for the stage's results."""
    if "skipped" in r:
        return [f"Decomposition: skipped ({r['skipped']})."]
    top = sorted(r["heads"], key=lambda h: -h["norm"])[:16]
    return [f"Each attention head's term (TextSpan's decomposition of the image embedding of {r['num_images']} "
            f"held-out images; the terms sum back within {r['sum_error']:.1e} of an embedding of largest entry "
            f"{r['embedding_scale']:.3f}) labelled by TextSpan's greedy text basis over {r['num_texts_pool']} "
            f"texts ({r['texts']}); in brackets the share of the head's variance each text explains. The 16 "
            "heads of largest mean term norm:",
            table(["head", "norm", "texts"],
                  [[f"{h['layer']}.{h['head']}", h["norm"],
                    "; ".join(f"{t} ({100 * e:.0f} %)" for t, e in zip(h["texts"], h["explained"]))] for h in top])]
