"""The dual-encoder run's decomposition stage (issue 27, for ``configs/clip.py``): the image
embedding of held-out images split into TextSpan's terms (``reading.decompose``), and every
attention head labelled by its greedy text basis (``reading.textspan``) over a pool of texts: a
file of one text per line (``decomposition.texts_path``), or by default the class prompts and the
caption families' words. A tower that is not a plain ViT (CLAP's HTSAT) is skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mrepe_jax.reading.decompose import decompose
from mrepe_jax.reading.textspan import text_span
from mrepe_jax.report.markdown import table
from mrepe_jax.stages import segmentation


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


def masks(ckpt, config, n: int) -> np.ndarray | None:
    """The object masks of the first ``n`` test images, preprocessed as the images are (resized and
    cropped alike), bool ``[n, S, S]``; None without ``decomposition.masks_path``. A mask is
    ``<masks_path>/<split folder>/<class>/<image stem>.png``, non-zero on the object."""
    cfg, lab = config.decomposition, config[ckpt.modality.section]
    if not cfg.masks_path:
        return None
    if lab.source != "folder":
        raise ValueError("decomposition.masks_path needs a folder of images (images.source=folder): masks are "
                         "matched to its test images by path")
    root, mask_root = Path(lab.path).expanduser(), Path(cfg.masks_path).expanduser()
    out = []
    for path, _ in ckpt.modality.folder_files(lab, "test")[:n]:
        m = mask_root / path.relative_to(root).with_suffix(".png")
        if not m.is_file():
            raise FileNotFoundError(f"no mask {str(m)!r} for image {str(path)!r} (decomposition.masks_path holds "
                                    "<split>/<class>/<image stem>.png, non-zero on the object)")
        on = np.asarray(Image.open(m).convert("L")) > 127
        out.append(np.repeat(on[..., None], 3, -1).astype(np.uint8) * 255)
    # Through the images' own preprocessing; the threshold is halfway between black and white there.
    black_white = ckpt.inputs([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])[..., 0]
    return ckpt.inputs(out)[..., 0] > black_white.mean((1, 2)).mean()


def run(ckpt, config, pool: np.ndarray, pool_labels: np.ndarray, prompts: np.ndarray) -> dict:
    """Head labels (module docstring) from the first ``decomposition.num_images`` of ``pool``
    (preprocessed held-out inputs of the modality's tower, labels ``pool_labels``), and, with
    masks (``masks``), zero-shot segmentation of each image's object for its class prompt
    (``prompts [K, D']``; ``stages.segmentation``)."""
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
    true = masks(ckpt, config, len(x))
    seg = None
    if true is not None:
        text = np.asarray(prompts)[np.asarray(pool_labels[:len(x)])]
        seg = {name: segmentation.scores(m, true)
               for name, m in segmentation.maps(ckpt.model, ckpt.params, d, x, text, ckpt.keys(tower), tower).items()}
    return {"texts": source, "num_texts_pool": len(texts), "num_images": len(x), "segmentation": seg,
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
                    "; ".join(f"{t} ({100 * e:.0f} %)" for t, e in zip(h["texts"], h["explained"]))] for h in top])
            ] + ([] if not r.get("segmentation") else [
                "Zero-shot segmentation of each image's object for its class prompt against the given masks "
                "(`decomposition.masks_path`; `stages.segmentation`: the decomposition's patch map, last-layer "
                "tokens, attention rollout, all background), binarised at each image's mean:",
                table(["map", "pixel accuracy", "mIoU"],
                      [[k, v["pixel_accuracy"], v["miou"]] for k, v in r["segmentation"].items()])])
