"""ToyWorld captions: templates with synonyms and distractors, a parser, and zero-shot prompts.

Every template names every family exactly once, with single-word synonyms (position uses a
fixed three-word phrase), so a caption's length depends only on its nuisance draws and a word
lookup recovers all labels (``parse_caption``). Distractor words come from a list disjoint from
every synonym.

Caption noise (``ToyWorldConfig.caption_noise``, train split only) arrives as nuisance entries
``caption_shift_{family}``: the caption names value ``(true + shift) % n_values`` of that family,
so a noisy caption still names every family once but may disagree with the sample's labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from mrepe_jax.data.toyworld.concepts import (
    CONCEPT_FAMILIES,
    FAMILIES,
    POSITION_PHRASES,
    SYNONYMS,
    family_values,
)

TEMPLATES: tuple[str, ...] = (
    "a photo of a {size} {colour} {shape} {position} with a {emblem} mark",
    "there is a {size} {colour} {shape} {position} and a {emblem} sign",
    "{position} sits a {colour} {shape} of {size} size bearing a {emblem}",
    "{emblem} badge above a {size} {shape} coloured {colour} {position}",
    "a {colour} {size} {shape} {position} showing a {emblem} symbol",
    "{size} {colour} {shape} {position} {emblem} emblem",
    "the {shape} is {colour} and {size} {position} with {emblem} mark",
)
DISTRACTORS: tuple[str, ...] = (
    "nice", "picture", "image", "today", "really", "cool", "simple", "clear", "shot", "quite",
    "very", "indeed", "here", "lovely", "scene", "drawing",
)
MAX_DISTRACTORS = 2
#: One canonical prompt per family; ``{}`` receives the value's first synonym / phrase.
PROMPT_TEMPLATES: Mapping[str, str] = {
    "colour": "a photo of a {} object",
    "shape": "a photo of a {}",
    "size": "a photo of a {} object",
    "position": "a photo of an object {}",
    "emblem": "a photo of an object with a {} mark",
}

_WORD_RE = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lower-cased word split shared by the tokenizer and the parser."""
    return _WORD_RE.findall(text.lower())


def _template_words(template: str) -> int:
    # Slots are one word each except position, which is a three-word phrase.
    return len(template.split()) + 2 * template.count("{position}")


def max_template_words() -> int:
    """Words in the longest template, before distractors."""
    return max(_template_words(t) for t in TEMPLATES)


def caption_vocabulary() -> tuple[str, ...]:
    """Every word a caption or a class prompt can contain, sorted (the tokenizer's vocabulary)."""
    words: set[str] = set(DISTRACTORS)
    for template in (*TEMPLATES, *PROMPT_TEMPLATES.values()):
        words.update(split_words(re.sub(r"\{[a-z]*\}", " ", template)))
    for by_value in SYNONYMS.values():
        for synonyms in by_value.values():
            words.update(synonyms)
    for phrases in POSITION_PHRASES.values():
        for phrase in phrases:
            words.update(split_words(phrase))
    return tuple(sorted(words))


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def render_captions(labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray],
                    max_words: int) -> list[str]:
    """One caption per sample from labels and nuisance (pure); at most ``max_words`` words."""
    captions = []
    for row in range(len(labels[FAMILIES[0]])):
        u = {k: float(v[row]) for k, v in nuisance.items() if k.startswith("cap_")}
        slots = {}
        for family in FAMILIES:
            values = CONCEPT_FAMILIES[family]
            index = int(labels[family][row])
            shift = nuisance.get(f"caption_shift_{family}")
            if shift is not None:  # caption noise: name another value of the family
                index = (index + int(shift[row])) % len(values)
            value = values[index]
            options = (POSITION_PHRASES if family == "position" else SYNONYMS[family])[value]
            slots[family] = _pick(options, u[f"cap_syn_{family}"])
        words = _pick(TEMPLATES, u["cap_template"]).format(**slots).split()
        budget = max(0, max_words - len(words))
        n_distract = min(int(u["cap_n_distract"] * (MAX_DISTRACTORS + 1)), MAX_DISTRACTORS, budget)
        for j in range(n_distract):
            slot = min(int(u[f"cap_distract_slot_{j}"] * (len(words) + 1)), len(words))
            words.insert(slot, _pick(DISTRACTORS, u[f"cap_distract_word_{j}"]))
        captions.append(" ".join(words))
    return captions


def _synonym_table() -> dict[str, tuple[str, int]]:
    table = {}
    for family, by_value in SYNONYMS.items():
        for index, value in enumerate(CONCEPT_FAMILIES[family]):
            for word in by_value[value]:
                if word in table:
                    raise AssertionError(f"synonym {word!r} is listed under two values")
                table[word] = (family, index)
    return table


def parse_caption(caption: str) -> dict[str, int]:
    """Recover ``{family: value index}`` from a caption by synonym lookup.

    Raises ValueError naming the caption when a family is missing or named twice with
    different values.
    """
    table = _synonym_table()
    found: dict[str, int] = {}
    for word in split_words(caption):
        if word not in table:
            continue
        family, index = table[word]
        if found.get(family, index) != index:
            raise ValueError(f"caption {caption!r} names two values of family {family!r}")
        found[family] = index
    missing = [f for f in FAMILIES if f not in found]
    if missing:
        raise ValueError(f"caption {caption!r} names no value for families {missing}")
    return {f: found[f] for f in FAMILIES}


def class_prompts(family: str) -> list[str]:
    """One canonical text prompt per value of ``family``, in value order (zero-shot classes)."""
    values = family_values(family)
    template = PROMPT_TEMPLATES[family]
    if family == "position":
        return [template.format(POSITION_PHRASES[v][0]) for v in values]
    return [template.format(SYNONYMS[family][v][0]) for v in values]
