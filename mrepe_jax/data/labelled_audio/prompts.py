"""Class prompts for zero-shot audio classification: each class name in each template."""

from __future__ import annotations

import string
from collections.abc import Sequence

#: For ``speech_commands``: the classes are words.
SPOKEN_WORD_TEMPLATES: tuple[str, ...] = ("the spoken word {}.", "a person saying the word {}.")
#: For ``nsynth`` instrument families: single notes of an instrument.
INSTRUMENT_TEMPLATES: tuple[str, ...] = ("the sound of a {}.", "a note played on a {}.")
#: For sound events in general (a folder of labelled clips).
SOUND_TEMPLATES: tuple[str, ...] = ("the sound of a {}.", "a recording of a {}.")


def readable(name: str) -> str:
    """A dataset's label as words: ``"_silence_"`` -> ``"silence"``, ``"synth_lead"`` -> ``"synth lead"``."""
    return " ".join(name.replace("_", " ").split())


def prompt_texts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """``[len(classes) * len(templates)]`` prompts, class-major: ``templates[t].format(classes[k])``
    sits at ``k * len(templates) + t``, so the text embeddings reshape to ``[K, T, D]`` and average
    over templates. Every template holds exactly one ``{}``."""
    if not templates:
        raise ValueError("no prompt templates given; pass e.g. ('the sound of a {}.',)")
    for t in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError:  # an unmatched brace
            fields = None
        if fields != [""]:
            raise ValueError(f"prompt template {t!r} must hold exactly one '{{}}' for the class name "
                             f"(and no other braces)")
    return [t.format(c) for c in classes for t in templates]
