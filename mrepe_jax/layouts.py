"""The named axes of every site's activation (the layout table of ``mrepe_jax.sites``).

Edits name these axes (``edits.along``, ``token_mask``, ``head_mask``) instead of relying on numpy's
right-aligned broadcasting, so a mask or direction meant for tokens cannot land on heads.
"""

from __future__ import annotations

TOKEN_AXES = ("batch", "token", "feature")
HEAD_AXES = ("batch", "token", "head", "feature")
PATTERN_AXES = ("batch", "head", "query", "key")
POOLED_AXES = ("batch", "feature")
# Attention inside the windows of a hierarchical (Swin) tower's block: ``token``, ``query`` and
# ``key`` are positions inside a window (``mrepe_jax.sites``).
WINDOW_HEAD_AXES = ("batch", "window", "token", "head", "feature")
WINDOW_PATTERN_AXES = ("batch", "window", "head", "query", "key")
_TOWER_POINT_AXES = {"embed": TOKEN_AXES, "pooled": POOLED_AXES, "proj": POOLED_AXES}


def site_axes(name: str) -> tuple[str, ...]:
    """The named axes of the activation at site ``name``, e.g. ``("batch", "token", "feature")``."""
    parts = name.split(".")
    if len(parts) == 2 and parts[1] in _TOWER_POINT_AXES:
        return _TOWER_POINT_AXES[parts[1]]
    if len(parts) >= 4 and parts[1] == "layers":
        last = parts[-1]
        if last in ("q", "k", "v", "z"):
            return HEAD_AXES
        if last in ("logits", "pattern"):
            return PATTERN_AXES
        return TOKEN_AXES
    if len(parts) >= 6 and parts[1] == "stages" and parts[3] == "blocks":
        last = parts[-1]
        if last in ("q", "k", "v", "z"):
            return WINDOW_HEAD_AXES
        if last in ("logits", "pattern"):
            return WINDOW_PATTERN_AXES
        return TOKEN_AXES
    raise ValueError(f"{name!r} is not a site name ('{{tower}}.embed', '{{tower}}.layers.{{i}}.{{point}}', "
                     "'{tower}.stages.{s}.blocks.{b}.{point}', '{tower}.pooled' or '{tower}.proj')")
