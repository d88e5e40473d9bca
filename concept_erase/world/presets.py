"""Builds the shapes-world presets shipped in ``concept_erase/presets/`` (``no-red``, ...).

The JSON files are generated from this module (``python -m concept_erase.world.presets``) and a
test checks they are up to date, so the prompt lists are reviewable data and reproducible code.
"""

from __future__ import annotations

from pathlib import Path

from .._io import atomic_write_json
from .captions import fill
from .vocab import ALLOWED_BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, SYNONYMS, TRAIN_TEMPLATES

__all__ = ["colour_preset", "shape_preset", "background_preset", "WORLD_PRESETS", "write_presets"]


def _bg(colours: tuple[str, ...], i: int, exclude: tuple[str, ...] = ()) -> str:
    allowed = [b for b in ALLOWED_BACKGROUNDS[colours[0]] if all(b in ALLOWED_BACKGROUNDS[c] for c in colours)]
    allowed = [b for b in allowed if b not in exclude]
    return allowed[i % len(allowed)]


def colour_preset(colour: str, anchor: str = "gray") -> dict:
    """Erase a colour: every training template with ``colour`` -> the same prompt with ``anchor``."""
    forget, anchors = [], []
    for t in TRAIN_TEMPLATES:
        for i, s in enumerate(SHAPES):
            b = _bg((colour, anchor), i)
            forget.append(fill(t, colour, s, b))
            anchors.append(fill(t, anchor, s, b))
    retain = [fill("a {c} {s}", c, s) for c in COLOURS if c != colour for s in SHAPES]
    paraphrases = [fill("a {c} {s}", syn, s) for syn in SYNONYMS.get(colour, ()) for s in SHAPES]
    paraphrases += [fill(t, colour, s, _bg((colour,), i)) for t in HELDOUT_TEMPLATES for i, s in enumerate(SHAPES)]
    return {
        "name": f"no-{colour}", "forget": forget, "anchor": anchors, "retain": retain, "paraphrases": paraphrases,
        "target": {"colour": colour}, "description": f"Shapes world: draw {anchor} where {colour} is asked for.",
    }


def shape_preset(shape: str, anchor: str = "square") -> dict:
    """Erase a shape: every training template with ``shape`` -> the same prompt with ``anchor``."""
    forget, anchors = [], []
    for t in TRAIN_TEMPLATES:
        for i, c in enumerate(COLOURS):
            b = _bg((c,), i)
            forget.append(fill(t, c, shape, b))
            anchors.append(fill(t, c, anchor, b))
    retain = [fill("a {c} {s}", c, s) for s in SHAPES if s != shape for c in COLOURS]
    paraphrases = [fill("a {c} {s}", c, syn) for syn in SYNONYMS.get(shape, ()) for c in COLOURS]
    paraphrases += [fill(t, c, shape, _bg((c,), i)) for t in HELDOUT_TEMPLATES for i, c in enumerate(COLOURS)]
    return {
        "name": f"no-{shape}", "forget": forget, "anchor": anchors, "retain": retain, "paraphrases": paraphrases,
        "target": {"shape": shape}, "description": f"Shapes world: draw a {anchor} where a {shape} is asked for.",
    }


def background_preset(background: str, anchor: str = "light") -> dict:
    """Erase a background style: prompts naming ``background`` -> the same prompt naming ``anchor``."""
    forget, anchors, retain, paraphrases = [], [], [], []
    with_bg = [t for t in TRAIN_TEMPLATES if "{b}" in t]
    for c in COLOURS:
        if background not in ALLOWED_BACKGROUNDS[c] or anchor not in ALLOWED_BACKGROUNDS[c]:
            continue
        for i, s in enumerate(SHAPES):
            for t in with_bg:
                forget.append(fill(t, c, s, background))
                anchors.append(fill(t, c, s, anchor))
            other = [b for b in ALLOWED_BACKGROUNDS[c] if b != background]
            retain.append(fill(with_bg[i % len(with_bg)], c, s, other[i % len(other)]))
            paraphrases += [fill(t, c, s, background) for t in HELDOUT_TEMPLATES if "{b}" in t]
    return {
        "name": f"no-{background}", "forget": forget, "anchor": anchors, "retain": retain,
        "paraphrases": paraphrases, "target": {"background": background},
        "description": f"Shapes world: draw a {anchor} background where a {background} one is asked for.",
    }


WORLD_PRESETS = {
    "no-red": lambda: colour_preset("red"),
    "no-blue": lambda: colour_preset("blue"),
    "no-circle": lambda: shape_preset("circle"),
    "no-star": lambda: shape_preset("star"),
    "no-striped": lambda: background_preset("striped"),
}


def write_presets(directory: str | Path | None = None) -> list[Path]:
    directory = Path(directory) if directory is not None else Path(__file__).parents[1] / "presets"
    return [atomic_write_json(directory / f"{name}.json", build()) for name, build in WORLD_PRESETS.items()]


if __name__ == "__main__":
    for p in write_presets():
        print(p)
