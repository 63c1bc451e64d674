"""Markdown rendering of result tables (pure: data in, text out)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (tuple, list)) and len(x) == 3:  # (estimate, lo, hi)
        return f"{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]"
    return f"{x:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, *paragraphs: str) -> str:
    return "\n\n".join([f"## {title}", *[p for p in paragraphs if p]])
