"""``report.html``: the report as one self-contained interactive page (``document.write``)."""

from mrepe_jax.report.html.document import render, write

__all__ = ["render", "write"]
