"""Captions for rendered scenes, and parsing a world prompt back into its attributes."""

from __future__ import annotations

import re

import numpy as np

from ..errors import InvalidPromptError
from .render import Scene
from .vocab import (
    BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, PARTIAL_TEMPLATES, SHAPES, SYNONYMS, TRAIN_TEMPLATES, WORDS, canonical,
)

__all__ = ["caption", "fill", "parse_prompt", "PromptAttributes"]


def _word(word: str, rng: np.random.Generator | None, synonym_prob: float) -> str:
    syns = SYNONYMS.get(word, ())
    if rng is not None and syns and rng.random() < synonym_prob:
        return syns[rng.integers(len(syns))]
    return word


def fill(template: str, colour: str = "", shape: str = "", background: str = "") -> str:
    """Fill a template's ``{c}``, ``{s}`` and ``{b}`` slots."""
    return template.format(c=colour, s=shape, b=background)


def caption(
    scene: Scene,
    rng: np.random.Generator,
    *,
    synonym_prob: float = 0.3,
    partial_prob: float = 0.2,
) -> str:
    """A random training caption for ``scene``: a training template, sometimes a partial one
    (no colour or no shape), with synonyms drawn at ``synonym_prob``. Held-out templates never appear."""
    pool = PARTIAL_TEMPLATES if rng.random() < partial_prob else TRAIN_TEMPLATES
    template = pool[rng.integers(len(pool))]
    return fill(
        template,
        _word(scene.colour, rng, synonym_prob),
        _word(scene.shape, rng, synonym_prob),
        scene.background,
    )


class PromptAttributes(tuple):
    """``(colour, shape, background)`` named in a prompt; ``None`` where the prompt names none."""

    __slots__ = ()

    def __new__(cls, colour: str | None, shape: str | None, background: str | None):
        return super().__new__(cls, (colour, shape, background))

    colour = property(lambda self: self[0])
    shape = property(lambda self: self[1])
    background = property(lambda self: self[2])


_TOKEN = re.compile(r"[a-z]+|,")


def parse_prompt(prompt: str, *, strict: bool = True) -> PromptAttributes:
    """Read the colour, shape and background a world prompt asks for (synonyms understood).

    >>> parse_prompt("a crimson disc on a striped background")
    ('red', 'circle', 'striped')

    With ``strict=True`` a word the world does not know raises :class:`InvalidPromptError`.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError(f"Expected a non-empty prompt string, got {prompt!r}.")
    words = _TOKEN.findall(prompt.lower())
    unknown = [w for w in words if w not in WORDS]
    if strict and unknown:
        raise InvalidPromptError(
            f"The shapes world does not know the word(s) {', '.join(map(repr, unknown))} in prompt {prompt!r}. "
            f"Colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; backgrounds: {', '.join(BACKGROUNDS)}."
        )
    found = {"colour": None, "shape": None, "background": None}
    for w in map(canonical, words):
        for key, known in (("colour", COLOURS), ("shape", SHAPES), ("background", BACKGROUNDS)):
            if w in known:
                if found[key] is not None and found[key] != w:
                    raise InvalidPromptError(f"Prompt {prompt!r} names two {key}s: {found[key]!r} and {w!r}.")
                found[key] = w
    return PromptAttributes(found["colour"], found["shape"], found["background"])


ALL_TEMPLATES = TRAIN_TEMPLATES + PARTIAL_TEMPLATES + HELDOUT_TEMPLATES
