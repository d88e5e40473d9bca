"""Builds the shapes-world presets shipped in ``concept_erase/presets/`` (``no-red``, ...).

A preset is a concept the way a user gives one: a phrase ("red"), a few forget prompts (at most
:data:`MAX_FORGET`) each with its anchor, a few retain prompts, and the paraphrases (synonyms and
held-out templates) that no method trains on. The forget prompts cover every training template
once and every shape or colour at least once, so a method sees the concept in varied contexts but
not every prompt the benchmark scores (``concept_erase.bench.protocol`` holds the evaluation sets,
disjoint from all of these).

The JSON files are generated from this module (``python -m concept_erase.world.presets``) and a
test checks they are up to date, so the prompt lists are reviewable data and reproducible code.
"""

from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_json
from .captions import fill
from .vocab import ALLOWED_BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, SYNONYMS, TRAIN_TEMPLATES

__all__ = ["colour_preset", "shape_preset", "background_preset", "WORLD_PRESETS", "write_presets", "MAX_FORGET"]

MAX_FORGET = 8  # forget prompts a preset gives (users give a handful, not the world's whole caption space)
MAX_RETAIN = 8


def _bg(colours: tuple[str, ...], i: int, exclude: tuple[str, ...] = ()) -> str:
    allowed = [b for b in ALLOWED_BACKGROUNDS[colours[0]] if all(b in ALLOWED_BACKGROUNDS[c] for c in colours)]
    allowed = [b for b in allowed if b not in exclude]
    return allowed[i % len(allowed)]


def _templates(n: int, templates=TRAIN_TEMPLATES) -> list[str]:
    return [templates[i % len(templates)] for i in range(n)]


def colour_preset(colour: str, anchor: str = "gray") -> dict:
    """Erase a colour: 8 prompts with ``colour`` (every training template, every shape) -> ``anchor``."""
    forget, anchors = [], []
    for i, t in enumerate(_templates(MAX_FORGET)):
        s, b = SHAPES[i % len(SHAPES)], _bg((colour, anchor), i)
        forget.append(fill(t, colour, s, b))
        anchors.append(fill(t, anchor, s, b))
    others = [c for c in COLOURS if c not in (colour, anchor)]
    retain = [fill(t, others[i % len(others)], SHAPES[(i + 3) % len(SHAPES)], _bg((others[i % len(others)],), i))
              for i, t in enumerate(_templates(MAX_RETAIN))]
    paraphrases = [fill("a {c} {s}", syn, s) for syn in SYNONYMS.get(colour, ()) for s in SHAPES]
    paraphrases += [fill(t, colour, s, _bg((colour,), i)) for t in HELDOUT_TEMPLATES for i, s in enumerate(SHAPES)]
    return {
        "name": f"no-{colour}", "phrase": colour, "forget": forget, "anchor": anchors, "retain": retain,
        "paraphrases": paraphrases, "target": {"colour": colour},
        "description": f"Shapes world: draw {anchor} where {colour} is asked for.",
    }


def shape_preset(shape: str, anchor: str = "square") -> dict:
    """Erase a shape: 8 prompts with ``shape`` (every training template, 8 colours) -> ``anchor``."""
    forget, anchors = [], []
    for i, t in enumerate(_templates(MAX_FORGET)):
        c = COLOURS[i % len(COLOURS)]
        b = _bg((c,), i)
        forget.append(fill(t, c, shape, b))
        anchors.append(fill(t, c, anchor, b))
    others = [s for s in SHAPES if s not in (shape, anchor)]
    retain = [fill(t, COLOURS[(i + 3) % len(COLOURS)], others[i % len(others)], _bg((COLOURS[(i + 3) % len(COLOURS)],), i))
              for i, t in enumerate(_templates(MAX_RETAIN))]
    paraphrases = [fill("a {c} {s}", c, syn) for syn in SYNONYMS.get(shape, ()) for c in COLOURS]
    paraphrases += [fill(t, c, shape, _bg((c,), i)) for t in HELDOUT_TEMPLATES for i, c in enumerate(COLOURS)]
    return {
        "name": f"no-{shape}", "phrase": shape, "forget": forget, "anchor": anchors, "retain": retain,
        "paraphrases": paraphrases, "target": {"shape": shape},
        "description": f"Shapes world: draw a {anchor} where a {shape} is asked for.",
    }


def background_preset(background: str, anchor: str = "light") -> dict:
    """Erase a background style: 8 prompts naming ``background`` -> the same prompts naming ``anchor``."""
    with_bg = [t for t in TRAIN_TEMPLATES if "{b}" in t]
    colours = [c for c in COLOURS if background in ALLOWED_BACKGROUNDS[c] and anchor in ALLOWED_BACKGROUNDS[c]]
    forget, anchors = [], []
    for i, t in enumerate(_templates(MAX_FORGET, with_bg)):
        c, s = colours[i % len(colours)], SHAPES[(i + i // len(with_bg)) % len(SHAPES)]
        forget.append(fill(t, c, s, background))
        anchors.append(fill(t, c, s, anchor))
    retain = []
    drawable = [c for c in COLOURS if set(ALLOWED_BACKGROUNDS[c]) - {background}]  # on another background
    for i, t in enumerate(_templates(MAX_RETAIN, with_bg)):
        c = drawable[(i + 2) % len(drawable)]
        other = [b for b in ALLOWED_BACKGROUNDS[c] if b not in (background, anchor)] or \
            [b for b in ALLOWED_BACKGROUNDS[c] if b != background]
        retain.append(fill(t, c, SHAPES[(i + 1) % len(SHAPES)], other[i % len(other)]))
    paraphrases = [fill(t, c, s, background) for t in HELDOUT_TEMPLATES if "{b}" in t
                   for c in colours for s in SHAPES[:2]]
    return {
        "name": f"no-{background}", "phrase": f"{background} background", "forget": forget, "anchor": anchors,
        "retain": retain, "paraphrases": paraphrases, "target": {"background": background},
        "description": f"Shapes world: draw a {anchor} background where a {background} one is asked for.",
    }


WORLD_PRESETS = {
    "no-red": lambda: colour_preset("red"),
    "no-blue": lambda: colour_preset("blue"),
    "no-circle": lambda: shape_preset("circle"),
    "no-star": lambda: shape_preset("star"),
    "no-striped": lambda: background_preset("striped"),
    "no-dark": lambda: background_preset("dark"),
}


def write_presets(directory: str | Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else Path(__file__).parents[1] / "presets"
    return [atomic_write_json(directory / f"{name}.json", build()) for name, build in WORLD_PRESETS.items()]


if __name__ == "__main__":
    for p in write_presets():
        print(p)
