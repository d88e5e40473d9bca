"""SIMU, SEMU x SIMU and the CodeUnlearn codebook against plain SEMU on the shapes world.

For one concept: the base model, plain SEMU, SEMU with the SIMU mask, SEMU trained with Sophia,
SIMU (relabel and GradDiff), the codebook bottleneck alone ("base with codebook") and the codebook
erasure. Every run uses the same held-out prompts (the benchmark protocol's: 24 forget, 24 paraphrase,
48 retain, none of them a training input) and image seeds; each method's retain accuracy is compared
with plain SEMU's image by image (paired), with a 95% bootstrap interval over prompts.

    python benchmarks/bench_simu_codebook.py --concept no-red [--runs semu simu ...] [--images-per-prompt 2]

Writes benchmarks/results/simu_codebook_<concept>.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from concept_erase import load_preset, world
from concept_erase._io import atomic_write_json
from concept_erase.bench.protocol import HEADLINE, eval_prompts, image_seeds
from concept_erase.cli.erase import _parse_settings  # the --set reader of `concept-erase erase`
from concept_erase.codebook import CodebookEdit, attach_codebook_, detach_codebook_
from concept_erase.evaluation.fid import WorldFeatures, fid_of_images
from concept_erase.evaluation.world import _judged, evaluate_sets, score_images
from concept_erase.methods import erase_with
from concept_erase.methods.codebook import WORLD_CODEBOOK

RUNS = {
    "semu": ("semu", {}),
    "semu+simu-mask": ("semu", {"mask": "simu"}),
    "semu+sophia": ("semu", {"optimizer": "sophia", "learning_rate": 3e-3}),
    "semu+simu-mask+sophia": ("semu", {"mask": "simu", "optimizer": "sophia", "learning_rate": 3e-3}),
    "simu": ("simu", {}),
    "simu-graddiff": ("simu", {"loss": "graddiff"}),
    "codebook": ("codebook", {}),  # redirect, 32 codes (the defaults)
    "codebook-delete": ("codebook", {"deactivate": "zero"}),  # the paper's deletion, 32 codes
}


def retain_hits(classifier, images, rows):
    return np.array([_judged(r) for r in score_images(classifier, images, rows)], dtype=float)


def paired_interval(a: np.ndarray, b: np.ndarray, per_prompt: int, *, n: int = 2000, seed: int = 0):
    """Mean of a − b and its 95% bootstrap interval, resampling prompts (each with its images)."""
    d = (a - b).reshape(-1, per_prompt).mean(1)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(d.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concept", default="no-red")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every run, key=value (tuning)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    pipe, classifier = world.load_pipeline(), world.load_classifier()
    concept = load_preset(args.concept)
    ipp = args.images_per_prompt
    feats = WorldFeatures(classifier)
    extra = _parse_settings(args.set)

    # the benchmark protocol's held-out prompts (none of them a training input) and image seeds
    sets = eval_prompts(concept, HEADLINE)

    def evaluate(tag):
        metrics, imgs = evaluate_sets(pipe, classifier, concept, images_per_prompt=ipp, return_images=True, sets=sets,
                                      seed=image_seeds(0, 1)[0])
        rows, _, images = imgs["retain"]
        return metrics, images, retain_hits(classifier, images, rows)

    base, base_imgs, base_hits = evaluate("base")
    results = {"concept": args.concept, "images_per_prompt": ipp, "prompts": {k: len(v) for k, v in sets.items()},
               "base": base, "runs": {}}
    hits = {}
    book = CodebookEdit.load(WORLD_CODEBOOK)
    attach_codebook_(pipe, book, name="codebook-only")
    with_cb, cb_imgs, cb_hits = evaluate("base+codebook")
    detach_codebook_(pipe)
    results["base_with_codebook"] = {**with_cb, "fid_retain": fid_of_images(feats, base_imgs, cb_imgs),
                                     "codebook_relative_error_heldout": book.metadata["relative_error_heldout"]}
    for run in args.runs:
        method, overrides = RUNS[run]
        overrides = {**overrides, **{k: v for k, v in extra.items() if method != "codebook"}}
        t0 = time.perf_counter()
        adapter = erase_with(method, pipe, concept, progress=False, **overrides)
        seconds = time.perf_counter() - t0
        pipe.load_unlearning_adapter(adapter, adapter_name="x")
        metrics, imgs, h = evaluate(run)
        pipe.unload_unlearning_adapter()
        hits[run] = h
        row = {"method": method, "overrides": overrides, "seconds": seconds, **metrics,
               "fid_retain": fid_of_images(feats, base_imgs, imgs),
               "trainable_parameters": adapter.metadata.get("trainable_parameters"),
               "trainable_fraction": adapter.metadata.get("trainable_fraction"),
               "compression_error": adapter.metadata.get("compression_error")}
        if method == "codebook":
            row["codes_off"] = adapter.metadata["codes_off"]
            row["retain_vs_base_with_codebook"] = paired_interval(h, cb_hits, ipp)
        if "semu" in hits and run != "semu":
            row["retain_vs_semu"] = paired_interval(h, hits["semu"], ipp)
        results["runs"][run] = row
        print(f"{run:24s} {seconds:6.1f}s forget {metrics['forget']['concept_rate']:.1%} paraphrase "
              f"{metrics['paraphrase']['concept_rate']:.1%} kept {metrics['forget']['kept']:.1%} retain "
              f"{metrics['retain']['accuracy']:.1%} fid {row['fid_retain']:.2f}"
              + (f" Δretain vs semu {row['retain_vs_semu'][0]:+.1%} [{row['retain_vs_semu'][1]:+.1%}, "
                 f"{row['retain_vs_semu'][2]:+.1%}]" if "retain_vs_semu" in row else ""), flush=True)
    print(f"{'base':24s} forget {base['forget']['concept_rate']:.1%} paraphrase {base['paraphrase']['concept_rate']:.1%}"
          f" retain {base['retain']['accuracy']:.1%}")
    print(f"{'base+codebook':24s} forget {with_cb['forget']['concept_rate']:.1%} paraphrase "
          f"{with_cb['paraphrase']['concept_rate']:.1%} retain {with_cb['retain']['accuracy']:.1%} "
          f"fid {results['base_with_codebook']['fid_retain']:.2f}")
    out = Path(args.out or Path(__file__).parent / "results" / f"simu_codebook_{args.concept}.json")
    atomic_write_json(out, results)


if __name__ == "__main__":
    main()
