"""``report.md`` of a ToyWorld run, rendered from ``results.json``: ``document`` assembles it from
one renderer per part (``align``: Table 2 and transfer, ``control``: Tables 3 and 4, ``costs``:
Tables 5 and 6, ``generative``: the captioner and transfer across architectures, ``claims``: the
paper's quantitative claims checked against the run)."""
