"""Benchmark of the shipped shapes world against its targets.

    python benchmarks/bench_world.py [--repeats 5] [--json out.json]

Prints: seconds to sample 16 images at the default settings (median over repeats, after one
warm-up), the classifier's accuracy on fresh renders, the shipped weights' size, and the prompt
fidelity report (`concept-erase world eval`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()

    from concept_erase import world
    from concept_erase.evaluation.world import fidelity_table, prompt_fidelity

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    pipe = world.load_pipeline()
    prompts = [f"a {c} {s}" for c, s in zip(world.COLOURS * 2, world.SHAPES * 3)][:16]

    def sample():
        gens = [torch.Generator().manual_seed(i) for i in range(16)]
        return pipe(prompts, generator=gens, output_type="np", **world.SAMPLING).images

    sample()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sample()
        times.append(time.perf_counter() - t0)
    result = {"sample16_seconds_median": statistics.median(times), "sample16_seconds_all": times,
              "sampling": world.SAMPLING}
    print(f"16 images at {world.SAMPLING}: median {result['sample16_seconds_median']:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)})")

    clf = world.load_classifier()
    images, scenes = world.render_batch(2000, seed=777)
    result["classifier_accuracy_fresh_renders"] = world.accuracy(clf, images, scenes)
    print("classifier on 2000 fresh renders:", {k: f"{v:.2%}" for k, v in result["classifier_accuracy_fresh_renders"].items()})

    size = sum(p.stat().st_size for p in world.WEIGHTS_DIR.rglob("*.safetensors"))
    result["weights_bytes"] = size
    print(f"shipped world weights: {size / 2**20:.1f} MiB")

    t0 = time.perf_counter()
    report = prompt_fidelity(pipe, clf, images_per_prompt=args.images_per_prompt, progress=False)
    result["fidelity"] = report
    result["fidelity_seconds"] = time.perf_counter() - t0
    print(fidelity_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
