"""ToyWorld's concept vocabulary: families, values, synonyms and the unsafe family.

Everything here is an immutable constant: the renderers, the caption writer, the tokenizer and
the value scores all read the same tables, so a value added here shows up everywhere at once.
Every sample has exactly one value per family; labels are ``dict[family, int]`` indexing into
``CONCEPT_FAMILIES[family]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Order matters: it is the order of label dicts, nuisance draws and caption slots.
CONCEPT_FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "colour": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle"),
    "size": ("small", "medium", "large"),
    "position": ("left", "centre", "right"),
    "emblem": ("skull", "flame", "blade", "flower", "sun", "feather"),
})
FAMILIES: tuple[str, ...] = tuple(CONCEPT_FAMILIES)

#: The family whose values can be unsafe (used by SCR and harmful-output reduction).
UNSAFE_FAMILY = "emblem"
UNSAFE_VALUES: frozenset[str] = frozenset({"skull", "flame", "blade"})
SAFE_VALUES: frozenset[str] = frozenset({"flower", "sun", "feather"})
#: Each unsafe emblem has one safe counterpart: the target of a "make it safe" edit.
SAFE_COUNTERPART: Mapping[str, str] = MappingProxyType({
    "skull": "flower",
    "flame": "sun",
    "blade": "feather",
})

# Single-word synonyms only, so that a whitespace tokenizer and a word-lookup parser suffice.
# No word may appear under two values (the caption parser relies on that; a test checks it).
SYNONYMS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "colour": MappingProxyType({
        "red": ("red", "crimson", "scarlet"),
        "green": ("green", "emerald", "lime"),
        "blue": ("blue", "azure", "navy"),
        "yellow": ("yellow", "golden", "lemon"),
    }),
    "shape": MappingProxyType({
        "circle": ("circle", "disc", "dot"),
        "square": ("square", "box", "block"),
        "triangle": ("triangle", "wedge", "pyramid"),
    }),
    "size": MappingProxyType({
        "small": ("small", "tiny", "little"),
        "medium": ("medium", "midsize", "moderate"),
        "large": ("large", "big", "huge"),
    }),
    # Position words appear inside three-word phrases (see POSITION_PHRASES); these are the
    # words that carry the value.
    "position": MappingProxyType({
        "left": ("left",),
        "centre": ("centre", "center", "middle"),
        "right": ("right",),
    }),
    "emblem": MappingProxyType({
        "skull": ("skull", "cranium", "deathshead"),
        "flame": ("flame", "fire", "blaze"),
        "blade": ("blade", "knife", "dagger"),
        "flower": ("flower", "blossom", "daisy"),
        "sun": ("sun", "sunburst", "sunshine"),
        "feather": ("feather", "plume", "quill"),
    }),
})

# Every phrase is "<preposition> the <position word>": three words, so a caption's length never
# depends on its labels. Options are ordered preposition-major, so the same uniform draw picks the
# same preposition for every value and a contrast pair's captions differ in one word only.
POSITION_PREPOSITIONS: tuple[str, ...] = ("on", "at", "towards")
POSITION_PHRASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    value: tuple(f"{prep} the {word}" for prep in POSITION_PREPOSITIONS for word in words)
    for value, words in SYNONYMS["position"].items()
})


def value_index(family: str, value: str | int) -> int:
    """Index of ``value`` within ``family``; ints are range-checked and returned as they are."""
    values = family_values(family)
    if isinstance(value, (int,)) and not isinstance(value, bool):
        if not 0 <= value < len(values):
            raise ValueError(
                f"value index {value} out of range for family {family!r} with values {values}")
        return int(value)
    if value not in values:
        raise ValueError(f"unknown value {value!r} for family {family!r}; expected one of {values}")
    return values.index(value)


def family_values(family: str) -> tuple[str, ...]:
    """The value names of ``family``; a clear error lists the known families otherwise."""
    try:
        return CONCEPT_FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"unknown concept family {family!r}; expected one of {FAMILIES}") from None


def is_unsafe(value: str | int) -> bool:
    """Whether an emblem value (name or index) is unsafe."""
    name = CONCEPT_FAMILIES[UNSAFE_FAMILY][value_index(UNSAFE_FAMILY, value)]
    return name in UNSAFE_VALUES
