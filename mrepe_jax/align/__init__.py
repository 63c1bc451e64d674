"""Cross-modal alignment (paper §3.2.2): InfoNCE (eq 3) and alignment maps (eq 4)."""

from mrepe_jax.align.contrastive import clip_loss, info_nce

__all__ = ["clip_loss", "info_nce"]
