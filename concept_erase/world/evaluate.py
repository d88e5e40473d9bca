"""``concept-erase world eval``: how faithfully the world pipeline draws what a prompt asks for."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..sampling import generate
from .prompt_sets import WorldPrompt, colour_shape_prompts, heldout_prompts, synonym_prompts

__all__ = ["prompt_fidelity", "score_images", "fidelity_table"]


def score_images(classifier, images, prompts: list[WorldPrompt]) -> dict[str, float]:
    """Colour, shape and joint accuracy of ``images`` against what each prompt asked for."""
    preds = classifier.predict(images)
    colour = np.array([p["colour"] == q.colour for p, q in zip(preds, prompts)])
    shape = np.array([p["shape"] == q.shape for p, q in zip(preds, prompts)])
    return {"colour": float(colour.mean()), "shape": float(shape.mean()), "joint": float((colour & shape).mean()),
            "n": len(prompts)}


def prompt_fidelity(pipe, classifier, *, images_per_prompt: int = 4, seed: int = 0, batch_size: int = 48,
                    progress: bool = True, sampling: dict | None = None) -> dict:
    """Sample the pipeline on every colour x shape prompt, the synonym prompts and the held-out
    templates (fixed seeds), and report the share of images the classifier confirms."""
    from . import SAMPLING

    sampling = {**SAMPLING, **(sampling or {})}
    sets = {"base": colour_shape_prompts(), "synonym": synonym_prompts(), "heldout": heldout_prompts(seed=seed)}
    report: dict = {"settings": {"images_per_prompt": images_per_prompt, "seed": seed, **sampling}}
    for name, prompts in sets.items():
        rows = [p for p in prompts for _ in range(images_per_prompt)]
        seeds = [seed + i for _ in prompts for i in range(images_per_prompt)]
        images = generate(pipe, [r.prompt for r in rows], seeds, batch_size=batch_size, progress=progress,
                          desc=f"world eval ({name})", **sampling)
        report[name] = score_images(classifier, images, rows)
        if name == "base":
            preds = classifier.predict(images)
            per: dict[str, list[bool]] = defaultdict(list)
            for p, r in zip(preds, rows):
                ok = p["colour"] == r.colour and p["shape"] == r.shape
                per[f"colour:{r.colour}"].append(ok)
                per[f"shape:{r.shape}"].append(ok)
            report["per_attribute"] = {k: float(np.mean(v)) for k, v in sorted(per.items())}
    return report


def fidelity_table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = ["| prompt set | n | colour | shape | joint |", "|---|---:|---:|---:|---:|"]
    for name in ("base", "synonym", "heldout"):
        r = report[name]
        lines.append(f"| {name} | {r['n']} | {r['colour']:.1%} | {r['shape']:.1%} | {r['joint']:.1%} |")
    lines += ["", "| attribute | joint fidelity |", "|---|---:|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in report.get("per_attribute", {}).items()]
    return "\n".join(lines)
