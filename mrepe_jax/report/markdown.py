"""Markdown rendering of result tables (pure: data in, text out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fmt(x, digits: int = 3) -> str:
    """A number laid out for reading: a float to ``digits`` decimals (a loss 0.7771299481391907
    is ``0.777``), an integer as is, ``(estimate, lo, hi)`` as ``est [lo, hi]``, None as ``-``."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (tuple, list)) and len(x) == 3:  # (estimate, lo, hi)
        return f"{fmt(x[0], digits)} [{fmt(x[1], digits)}, {fmt(x[2], digits)}]"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):  # counts and steps: "1000", not "1000.000"
        return str(int(x))
    return f"{float(x):.{digits}f}"  # float() also reads numpy / jax scalars and 0-d arrays


def table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, *paragraphs: str) -> str:
    return "\n\n".join([f"## {title}", *[p for p in paragraphs if p]])
