"""ToyWorld (DESIGN.md §5): a procedural world of images, captions and audio clips that share
ground-truth concepts, generated deterministically from a seed in numpy.

``world`` assembles a sample from its parts: ``concepts`` (the families, their values, the unsafe
family and its safe counterparts), ``sampling`` (labels and distractors drawn per seed),
``image``, ``text`` and ``sound`` (the three renderings), ``tokenizer`` (the caption vocabulary)
and ``values`` (the value-alignment scores of eq 9).
"""

from mrepe_jax.data.toyworld.world import MAX_DISTRACTORS, ContrastPairs, ToyWorld, ToyWorldConfig

__all__ = ["MAX_DISTRACTORS", "ContrastPairs", "ToyWorld", "ToyWorldConfig"]
