"""Standard prompt sets of the shapes world, each prompt with the attributes it asks for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import fill
from .vocab import ALLOWED_BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, SYNONYMS

__all__ = ["WorldPrompt", "colour_shape_prompts", "synonym_prompts", "heldout_prompts"]


@dataclass(frozen=True)
class WorldPrompt:
    prompt: str
    colour: str
    shape: str
    kind: str  # "base", "synonym" or "heldout"


def colour_shape_prompts(colours=COLOURS, shapes=SHAPES) -> list[WorldPrompt]:
    """``"a {colour} {shape}"`` for every colour x shape."""
    return [WorldPrompt(fill("a {c} {s}", c, s), c, s, "base") for c in colours for s in shapes]


def synonym_prompts(colours=COLOURS, shapes=SHAPES) -> list[WorldPrompt]:
    """Every colour or shape synonym, combined with every shape or colour: ``"a crimson star"``."""
    out = []
    for c in colours:
        for syn in SYNONYMS.get(c, ()):
            out += [WorldPrompt(fill("a {c} {s}", syn, s), c, s, "synonym") for s in shapes]
    for s in shapes:
        for syn in SYNONYMS.get(s, ()):
            out += [WorldPrompt(fill("a {c} {s}", c, syn), c, s, "synonym") for c in colours]
    return out


def heldout_prompts(colours=COLOURS, shapes=SHAPES, *, seed: int = 0) -> list[WorldPrompt]:
    """Every held-out template (never seen in training) for every colour x shape; the background
    slot takes a background the colour can be drawn on, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for t in HELDOUT_TEMPLATES:
        for c in colours:
            for s in shapes:
                allowed = ALLOWED_BACKGROUNDS[c]
                out.append(WorldPrompt(fill(t, c, s, allowed[rng.integers(len(allowed))]), c, s, "heldout"))
    return out
