"""The shapes world's presets of the evaluation: in-memory scoring of a world concept's prompt sets
(quickstart, bench, tests) and of the world model's prompt fidelity (``concept-erase world eval``).

Both are thin layers over :mod:`.scoring` with the world classifier (:class:`WorldConceptClassifier`):
the images are scored per image exactly as ``concept-erase eval`` scores its PNGs, and only the
aggregation differs. For a :class:`~concept_erase.Concept` with a world ``target`` (``{"colour": "red"}``):

- **concept rate**: share of images the classifier reads as the target, on the forget prompts and
  on the paraphrases (synonyms and held-out templates, never trained on);
- **kept**: share of images whose *other* named colour/shape is still right (the shape of
  "a red circle" after erasing red);
- **accuracy**: share of images whose named colour and shape are both right.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..concepts import Concept
from ..diffusion import generate_images
from ..errors import InvalidConfigError, InvalidPromptError
from ..world import SAMPLING
from ..world.prompt_sets import WorldPrompt, colour_shape_prompts, heldout_prompts, synonym_prompts
from .classifiers import concept_classifier
from .generate import ImageJob
from .prompts import PromptRow, target_name
from .scoring import ImageRecord, score_batch

__all__ = ["prompt_sets", "score_images", "erasure_metrics", "evaluate_sets", "prompt_fidelity", "fidelity_table"]

JUDGED = ("colour", "shape")  # the attributes accuracy and "kept" are judged on


def prompt_sets(concept: Concept, *, max_prompts: int | None = None) -> dict[str, list[str]]:
    """The forget, paraphrase and retain prompts of a world concept (evenly subsampled if asked)."""

    def take(prompts: list[str]) -> list[str]:
        if max_prompts is None or len(prompts) <= max_prompts:
            return list(prompts)
        idx = np.linspace(0, len(prompts) - 1, max_prompts).round().astype(int)
        return [prompts[i] for i in idx]

    return {"forget": take(concept.forget), "paraphrase": take(concept.paraphrases), "retain": take(concept.retain)}


def score_images(classifier, images, prompts: list[str], *, target: str | None = None,
                 labels: list[str] | None = None) -> list[ImageRecord]:
    """Score in-memory ``images`` generated from ``prompts`` with the evaluation's per-image scoring
    (``labels``: what each image should show, e.g. ``"colour:red+shape:circle"``; default: read from the prompt)."""
    clf = concept_classifier(classifier)
    if clf is None:
        raise InvalidConfigError(f"Expected a concept classifier or the world classifier model, got "
                                 f"{type(classifier).__name__}; pass `world.load_classifier()`.")
    rows = [PromptRow(p, label=labels[i] if labels else None) for i, p in enumerate(prompts)]
    jobs = [ImageJob(i, 0, p, 0, "all", None) for i, p in enumerate(prompts)]
    return score_batch(clf, images, jobs, rows, target)


def _head(name: str) -> str:
    return name.split(":", 1)[0]


def _judged(record: ImageRecord, exclude: str | None = None) -> bool:
    return all(hit for name, hit in record.hits if _head(name) in JUDGED and _head(name) != exclude)


def erasure_metrics(classifier, images, prompts: list[str], target: dict) -> dict[str, float]:
    """Concept rate, kept-attribute rate and joint colour/shape accuracy of ``images`` generated from ``prompts``."""
    if not target or len(target) != 1:
        raise InvalidPromptError(f"A world concept needs a target like {{'colour': 'red'}}, got {target!r}.")
    (key, _), = target.items()
    records = score_images(classifier, images, prompts, target=target_name(target))
    return {"concept_rate": float(np.mean([bool(r.detected) for r in records])),
            "kept": float(np.mean([_judged(r, exclude=key) for r in records])),
            "accuracy": float(np.mean([_judged(r) for r in records])), "n": len(prompts)}


def evaluate_sets(pipe, classifier, concept: Concept, *, images_per_prompt: int = 1, seed: int = 0,
                  max_prompts: int | None = None, sampling: dict | None = None, progress: bool = False,
                  return_images: bool = False, sets: dict[str, list[str]] | None = None):
    """Generate every prompt set of ``concept`` with ``pipe`` (as it is now) and score it.

    ``sets`` replaces the concept's own prompt lists (``{"forget": [...], "retain": [...]}``), e.g. the
    held-out prompts of :func:`concept_erase.bench.protocol.eval_prompts`.

    >>> evaluate_sets(pipe, world.load_classifier(), load_preset("no-red"))["forget"]["concept_rate"]  # doctest: +SKIP
    """
    sampling = {**SAMPLING, **(sampling or {})}
    result, images_out = {}, {}
    for name, prompts in (sets if sets is not None else prompt_sets(concept, max_prompts=max_prompts)).items():
        if not prompts:
            continue
        rows = [p for p in prompts for _ in range(images_per_prompt)]
        seeds = [seed + i for _ in prompts for i in range(images_per_prompt)]
        images = generate_images(pipe, rows, seeds, batch_size=48, progress=progress, desc=name, **sampling)
        result[name] = erasure_metrics(classifier, images, rows, concept.target)
        images_out[name] = (rows, seeds, images)
    return (result, images_out) if return_images else result


# ---------------------------------------------------------------- prompt fidelity of the world model
def _fidelity(records: list[ImageRecord]) -> dict[str, float]:
    colour = np.array([all(h for n, h in r.hits if _head(n) == "colour") for r in records])
    shape = np.array([all(h for n, h in r.hits if _head(n) == "shape") for r in records])
    return {"colour": float(colour.mean()), "shape": float(shape.mean()), "joint": float((colour & shape).mean()),
            "n": len(records)}


def prompt_fidelity(pipe, classifier, *, images_per_prompt: int = 4, seed: int = 0, batch_size: int = 48,
                    progress: bool = True, sampling: dict | None = None) -> dict:
    """Sample the pipeline on every colour x shape prompt, the synonym prompts and the held-out
    templates (fixed seeds), and report the share of images the classifier confirms."""
    sampling = {**SAMPLING, **(sampling or {})}
    sets = {"base": colour_shape_prompts(), "synonym": synonym_prompts(), "heldout": heldout_prompts(seed=seed)}
    report: dict = {"settings": {"images_per_prompt": images_per_prompt, "seed": seed, **sampling}}
    for name, prompts in sets.items():
        rows: list[WorldPrompt] = [p for p in prompts for _ in range(images_per_prompt)]
        seeds = [seed + i for _ in prompts for i in range(images_per_prompt)]
        images = generate_images(pipe, [r.prompt for r in rows], seeds, batch_size=batch_size, progress=progress,
                                 desc=f"world eval ({name})", **sampling)
        records = score_images(classifier, images, [r.prompt for r in rows],
                               labels=[f"colour:{r.colour}+shape:{r.shape}" for r in rows])
        report[name] = _fidelity(records)
        if name == "base":
            per: dict[str, list[bool]] = defaultdict(list)
            for rec, r in zip(records, rows):
                per[f"colour:{r.colour}"].append(bool(rec.correct))
                per[f"shape:{r.shape}"].append(bool(rec.correct))
            report["per_attribute"] = {k: float(np.mean(v)) for k, v in sorted(per.items())}
    return report


def fidelity_table(report: dict) -> str:
    """The prompt-fidelity report as a Markdown table."""
    lines = ["| prompt set | n | colour | shape | joint |", "|---|---:|---:|---:|---:|"]
    for name in ("base", "synonym", "heldout"):
        r = report[name]
        lines.append(f"| {name} | {r['n']} | {r['colour']:.1%} | {r['shape']:.1%} | {r['joint']:.1%} |")
    lines += ["", "| attribute | joint fidelity |", "|---|---:|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in report.get("per_attribute", {}).items()]
    return "\n".join(lines)
