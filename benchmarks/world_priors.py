"""What the shapes world draws for an attribute the prompt does not name.

Switching a concept's codes off (CodeUnlearn's deletion) or otherwise making an attribute
*unspecified* cannot push its rate below this prior: e.g. a prompt that names no colour comes out
red about as often as the world's captions left red unnamed during training. For each attribute,
the base model generates the world's partial prompts that leave it out ("a {s}" for colour,
"a {c} shape" for shape, "a {c} {s}" for background) and the classifier reads what was drawn.

    python benchmarks/world_priors.py [--images-per-prompt 4]

Writes benchmarks/results/world_priors.json and prints the rate of every value.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from concept_erase import world
from concept_erase._io import atomic_write_json
from concept_erase.evaluation.generate import generate_images
from concept_erase.world.vocab import COLOURS, SHAPES

UNNAMED = {  # attribute left out -> prompts that name the others
    "colour": [f"a {s}" for s in SHAPES],
    "shape": [f"a {c} shape" for c in COLOURS],
    "background": [f"a {c} {s}" for c in COLOURS for s in SHAPES],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "world_priors.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    pipe, classifier = world.load_pipeline(), world.load_classifier()
    out = {"images_per_prompt": args.images_per_prompt, "seed": args.seed, "priors": {}}
    for attribute, prompts in UNNAMED.items():
        rows = [q for q in prompts for _ in range(args.images_per_prompt)]
        seeds = [args.seed + i for i in range(len(rows))]
        images = generate_images(pipe, rows, seeds, batch_size=48, progress=False, **world.SAMPLING)
        counts = collections.Counter(pred[attribute] for pred in classifier.predict(images))
        rates = {k: counts[k] / len(rows) for k in sorted(counts, key=lambda k: -counts[k])}
        out["priors"][attribute] = {"prompts": len(prompts), "images": len(rows), "rates": rates}
        print(f"{attribute:10s} unnamed ({len(rows)} images): "
              + ", ".join(f"{k} {v:.1%}" for k, v in rates.items()), flush=True)
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
