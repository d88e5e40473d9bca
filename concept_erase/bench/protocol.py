"""The benchmark's protocol: which concepts tune and which test, and the held-out evaluation prompts.

- **Concepts are split.** Every method's settings are chosen on the *dev* concepts
  (:data:`DEV_CONCEPTS`: a colour, a shape and a background style) and frozen; the tables report the
  *test* concepts (:data:`TEST_CONCEPTS`), which no tuning decision has seen.
- **Every method gets the same concept**, given the way a user gives one (``concept_erase/presets``):
  a phrase, at most 8 forget prompts with their anchors, a few retain prompts. Each method uses
  them as its authors do (ESD the phrase, UCE its preserve set, ...).
- **Evaluation prompts are held out** from every training input (:func:`eval_prompts`): *forget* =
  other prompts that ask for the concept in training-template phrasing; *paraphrase* = synonyms and
  templates no caption of the world model and no method used; *retain* = prompts without the
  concept, none of them a retain prompt or an anchor given to training. :func:`check_held_out`
  enforces it before any run.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from ..concepts import Concept
from ..errors import InvalidConfigError
from ..world.captions import fill, parse_prompt
from ..world.vocab import ALLOWED_BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, SYNONYMS, TRAIN_TEMPLATES

__all__ = ["DEV_CONCEPTS", "TEST_CONCEPTS", "EvalSizes", "HEADLINE", "CURVE", "TUNING", "QUICK",
           "training_inputs", "eval_prompts", "check_held_out", "PROTOCOL_SEED", "image_seeds"]

DEV_CONCEPTS = ("no-blue", "no-star", "no-dark")  # tuning only
TEST_CONCEPTS = ("no-red", "no-circle", "no-striped")  # reported only
PROTOCOL_SEED = 20241125  # draws the evaluation prompts; fixed, so every method sees the same ones


@dataclass(frozen=True)
class EvalSizes:
    """How many held-out prompts each evaluation set draws (one image per prompt and seed)."""

    forget: int
    paraphrase: int
    retain: int

    def to_dict(self) -> dict:
        return asdict(self)


HEADLINE = EvalSizes(forget=24, paraphrase=24, retain=48)  # per seed, at the tuned configuration
CURVE = EvalSizes(forget=8, paraphrase=8, retain=16)  # per point of a trade-off curve
TUNING = EvalSizes(forget=12, paraphrase=12, retain=24)  # per configuration of the search on dev concepts
QUICK = EvalSizes(forget=6, paraphrase=6, retain=12)


def image_seeds(seed: int, n: int) -> list[int]:
    """The image seeds of evaluation round ``seed``: disjoint from every training-data seed
    (methods draw theirs below 10^6 + offsets; see ``diffusion.data_seeds``)."""
    return [50_000_000 + 100_000 * seed + i for i in range(n)]


def training_inputs(concept: Concept) -> set[str]:
    """Every text a method may train on: forget prompts, anchors, retain prompts and the phrase."""
    texts = set(concept.forget) | set(concept.anchor) | set(concept.retain)
    if concept.phrase:
        texts.add(concept.phrase)
    return {t.strip().lower() for t in texts}


def _world_prompts(key: str):
    """Every prompt the shapes world can phrase: ``(prompt, (colour, shape, background), heldout)``.
    ``heldout``: a held-out template, or a synonym for the attribute ``key`` (the concept's); other
    attributes keep their canonical word."""
    for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        for c, s in itertools.product(COLOURS, SHAPES):
            for b in (ALLOWED_BACKGROUNDS[c] if "{b}" in t else (None,)):
                words = {"colour": (c,), "shape": (s,)}
                if key in words:
                    words[key] += SYNONYMS.get(words[key][0], ())
                for cw, sw in itertools.product(words["colour"], words["shape"]):
                    heldout = t in HELDOUT_TEMPLATES or cw != c or sw != s
                    yield fill(t, cw, sw, b or ""), (c, s, b), heldout


def _has(target: dict, attrs: tuple) -> bool:
    (key, value), = target.items()
    return dict(zip(("colour", "shape", "background"), attrs))[key] == value


def _draw(prompts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    prompts = sorted(set(prompts))
    if len(prompts) <= n:
        return prompts
    return sorted(prompts[i] for i in rng.choice(len(prompts), n, replace=False))


def eval_prompts(concept: Concept, sizes: EvalSizes, *, seed: int = PROTOCOL_SEED) -> dict[str, list[str]]:
    """The held-out ``forget``, ``paraphrase`` and ``retain`` prompts of a world ``concept``.

    >>> sets = eval_prompts(load_preset("no-red"), HEADLINE)  # doctest: +SKIP
    >>> sets["paraphrase"][:2]  # doctest: +SKIP
    ['a crimson heart', 'a dark background with a star that is red']
    """
    if not concept.target or len(concept.target) != 1 or next(iter(concept.target)) not in (
            "colour", "shape", "background"):
        raise InvalidConfigError(f"The benchmark needs a shapes-world concept with a target like {{'colour': 'red'}}; "
                                 f"{concept.name!r} has target {concept.target!r}.")
    seen = training_inputs(concept)
    forget, paraphrase, retain = [], [], []
    for prompt, attrs, heldout in _world_prompts(next(iter(concept.target))):
        if prompt.lower() in seen:
            continue
        if _has(concept.target, attrs):
            (paraphrase if heldout else forget).append(prompt)
        elif not heldout:
            retain.append(prompt)
    rng = np.random.default_rng([seed, sum(map(ord, concept.name))])
    sets = {"forget": _draw(forget, sizes.forget, rng), "paraphrase": _draw(paraphrase, sizes.paraphrase, rng),
            "retain": _draw(retain, sizes.retain, rng)}
    check_held_out(concept, sets)
    return sets


def check_held_out(concept: Concept, sets: dict[str, list[str]]) -> None:
    """Raise if an evaluation prompt is a training input, or a retain prompt asks for the concept."""
    seen = training_inputs(concept)
    leaked = sorted({p for prompts in sets.values() for p in prompts if p.strip().lower() in seen})
    if leaked:
        raise InvalidConfigError(f"Evaluation prompts of {concept.name!r} appear in its training inputs: {leaked[:5]}.")
    (key, value), = concept.target.items()
    wrong = [p for p in sets.get("retain", []) if getattr(parse_prompt(p), key) == value]
    if wrong:
        raise InvalidConfigError(f"Retain prompts of {concept.name!r} ask for the erased {key}: {wrong[:5]}.")
