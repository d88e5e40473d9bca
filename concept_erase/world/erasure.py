"""Is a concept gone from the world model, and is everything else intact? (quickstart, tests, bench)

For a :class:`~concept_erase.Concept` with a world ``target`` (``{"colour": "red"}``):

- **concept rate**: share of images the classifier reads as the target, on the forget prompts and
  on the paraphrases (synonyms and held-out templates, never trained on);
- **kept**: on forget prompts, share of images whose *other* named attributes are still right
  (e.g. the shape of "a red circle" after erasing red);
- **retain accuracy**: on retain prompts, share of images whose colour and shape are both right.
"""

from __future__ import annotations

import numpy as np

from ..concepts import Concept
from ..errors import InvalidPromptError
from ..sampling import generate
from .captions import parse_prompt

__all__ = ["erasure_metrics", "evaluate_sets", "prompt_sets"]


def prompt_sets(concept: Concept, *, max_prompts: int | None = None) -> dict[str, list[str]]:
    """The forget, paraphrase and retain prompts of a world concept (evenly subsampled if asked)."""

    def take(prompts: list[str]) -> list[str]:
        if max_prompts is None or len(prompts) <= max_prompts:
            return list(prompts)
        idx = np.linspace(0, len(prompts) - 1, max_prompts).round().astype(int)
        return [prompts[i] for i in idx]

    return {"forget": take(concept.forget), "paraphrase": take(concept.paraphrases), "retain": take(concept.retain)}


def erasure_metrics(classifier, images, prompts: list[str], target: dict) -> dict[str, float]:
    """Concept rate, kept-attribute rate and joint accuracy of ``images`` generated from ``prompts``."""
    if not target or len(target) != 1:
        raise InvalidPromptError(f"A world concept needs a target like {{'colour': 'red'}}, got {target!r}.")
    (key, value), = target.items()
    preds = classifier.predict(images)
    concept, kept, joint = [], [], []
    for p, prompt in zip(preds, prompts):
        asked = parse_prompt(prompt, strict=False)
        concept.append(p[key] == value)
        named = {k: getattr(asked, k) for k in ("colour", "shape") if getattr(asked, k) is not None}
        kept.append(all(p[k] == v for k, v in named.items() if k != key))
        joint.append(all(p[k] == v for k, v in named.items()))
    return {"concept_rate": float(np.mean(concept)), "kept": float(np.mean(kept)), "accuracy": float(np.mean(joint)),
            "n": len(prompts)}


def evaluate_sets(pipe, classifier, concept: Concept, *, images_per_prompt: int = 1, seed: int = 0,
                  max_prompts: int | None = None, sampling: dict | None = None, progress: bool = False,
                  return_images: bool = False):
    """Generate every prompt set of ``concept`` with ``pipe`` (as it is now) and score it."""
    from . import SAMPLING

    sampling = {**SAMPLING, **(sampling or {})}
    result, images_out = {}, {}
    for name, prompts in prompt_sets(concept, max_prompts=max_prompts).items():
        if not prompts:
            continue
        rows = [p for p in prompts for _ in range(images_per_prompt)]
        seeds = [seed + i for _ in prompts for i in range(images_per_prompt)]
        images = generate(pipe, rows, seeds, batch_size=48, progress=progress, desc=name, **sampling)
        result[name] = erasure_metrics(classifier, images, rows, concept.target)
        images_out[name] = (rows, seeds, images)
    return (result, images_out) if return_images else result
