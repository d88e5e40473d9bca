"""The shapes world's vocabulary: colours, shapes, backgrounds, synonyms and caption templates.

Everything the renderer can draw and every word a caption can use is defined here, once. Colours
are far apart in hue (a feasibility probe saw red drift to orange when both existed) and include
neutrals (white, gray, black) so an erased colour has somewhere to go. A colour is never drawn on
a background it cannot be told from (white on light, black on dark): see :data:`ALLOWED_BACKGROUNDS`.
"""

from __future__ import annotations

import itertools

__all__ = [
    "COLOURS", "SHAPES", "BACKGROUNDS", "COLOUR_RGB", "BACKGROUND_RGB", "SYNONYMS",
    "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "ALLOWED_BACKGROUNDS", "WORDS", "canonical",
]

# name -> sRGB (0-255)
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 215, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "purple": (150, 45, 200),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (12, 12, 12),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

# background name -> the colours its pixels take (one for flat backgrounds, two for stripes)
BACKGROUND_RGB: dict[str, tuple[tuple[int, int, int], ...]] = {
    "dark": ((30, 32, 48),),
    "light": ((226, 224, 212),),
    "striped": ((226, 224, 212), (150, 160, 182)),  # the "style" concept
}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)

# Minimum Euclidean RGB distance between a shape's colour and every pixel colour of its background.
MIN_CONTRAST = 90.0


def _distance(a, b) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


ALLOWED_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    colour: tuple(
        bg for bg, pixels in BACKGROUND_RGB.items() if all(_distance(rgb, p) >= MIN_CONTRAST for p in pixels)
    )
    for colour, rgb in COLOUR_RGB.items()
}

# canonical word -> synonyms used in training captions (and as paraphrases when evaluating erasure)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "blue": ("azure", "cobalt"),
    "gray": ("grey",),
    "circle": ("disc", "disk"),
    "square": ("box", "block"),
}

# {c} colour, {s} shape, {b} background. Templates without {c} or {s} teach the model what a
# colour-less / shape-less prompt means, which anchors like "a circle" rely on.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {c} {s}",
    "{c} {s}",
    "the {c} {s}",
    "a {s} that is {c}",
    "a {c} {s} on a {b} background",
    "{c} {s}, {b} background",
    "a {b} background with a {c} {s}",
)
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {s}",
    "a {s} on a {b} background",
    "a {c} shape",
)
# Never seen in training: phrasings used to test how far an erasure generalises.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "the {s} is {c}",
    "{c} {s} with a {b} background",
    "a {b} background with a {s} that is {c}",
)


def _template_words() -> set[str]:
    words: set[str] = set()
    for t in TRAIN_TEMPLATES + PARTIAL_TEMPLATES + HELDOUT_TEMPLATES:
        for w in t.replace(",", " , ").split():
            if not w.startswith("{"):
                words.add(w)
    return words


WORDS: tuple[str, ...] = tuple(
    sorted(
        _template_words()
        | set(COLOURS) | set(SHAPES) | set(BACKGROUNDS)
        | set(itertools.chain.from_iterable(SYNONYMS.values()))
        | {"shape", "picture", "of", "photo", "image"}
    )
)

_CANONICAL = {syn: word for word, syns in SYNONYMS.items() for syn in syns}


def canonical(word: str) -> str:
    """Map a synonym to its canonical word (``"crimson" -> "red"``); other words are returned as-is."""
    return _CANONICAL.get(word, word)
