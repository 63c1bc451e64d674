"""The ToyWorld experiment (DESIGN.md §5): the tri-modal CLIP trained on ToyWorld, every stage of
the paper scored against the world's ground truth, in a default and a hard world.

``pipeline`` runs the stages in order and resumes from the workdir; one module per stage
(``identify``: Table 1 and causal effects, ``align``: Table 2 and transfer, ``control``: Table 3,
``safety``: Tables 4 and 6, ``efficiency``: Table 5, ``captioning``: the captioner, ``transfer``:
transfer across architectures); ``seeds`` (the run seed's roles) and ``paper_protocol`` (a CLIP
retrained per seed); ``report`` renders ``report.md`` from ``results.json``.
"""

from mrepe_jax.experiments.toyworld.pipeline import run, summary, train_config

__all__ = ["run", "summary", "train_config"]
