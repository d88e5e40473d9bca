"""Benchmark of SEMU on the shapes world against its targets.

    python benchmarks/bench_semu.py [--preset no-red] [--images-per-prompt 2] [--json out.json]

Erases the preset from the shipped world model (fresh, timed), then reports: the concept rate on
forget prompts and on paraphrases (synonyms and held-out templates), the other attributes kept on
forget prompts, joint accuracy on retain prompts (base vs erased), trainable parameters, the
adapter file size, and inference time for 16 images: base, unfused adapter, fused adapter
(median over repeats, same seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="no-red")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    from concept_erase import SemuConfig, erase, load_preset, world
    from concept_erase.quickstart import before_after_table
    from concept_erase.evaluation.world import evaluate_sets

    pipe = world.load_pipeline()
    clf = world.load_classifier()
    concept = load_preset(args.preset)
    t0 = time.perf_counter()
    adapter = erase(pipe, concept, SemuConfig(), progress=False)
    erase_seconds = time.perf_counter() - t0
    path = adapter.save(Path(tempfile.mkdtemp()) / f"{concept.name}.safetensors")

    before = evaluate_sets(pipe, clf, concept, images_per_prompt=args.images_per_prompt)
    prompts = (concept.forget * 16)[:16]

    def sample():
        return pipe(prompts, generator=[torch.Generator().manual_seed(i) for i in range(16)], output_type="np",
                    **world.SAMPLING).images

    t_base = _median_time(sample, args.repeats)
    pipe.load_unlearning_adapter(str(path))
    after = evaluate_sets(pipe, clf, concept, images_per_prompt=args.images_per_prompt)
    t_unfused = _median_time(sample, args.repeats)
    pipe.fuse_unlearning_adapter()
    t_fused = _median_time(sample, args.repeats)
    pipe.unload_unlearning_adapter()

    result = {
        "preset": args.preset, "erase_seconds": erase_seconds, "before": before, "after": after,
        "trainable_parameters": adapter.num_trainable, "trainable_fraction": adapter.metadata["trainable_fraction"],
        "unet_parameters": adapter.metadata["unet_parameters"], "ranks": adapter.ranks,
        "file_bytes": path.stat().st_size,
        "inference_16_seconds": {"base": t_base, "unfused": t_unfused, "fused": t_fused},
        "unfused_overhead": t_unfused / t_base - 1, "fused_overhead": t_fused / t_base - 1,
    }
    print(f"erase {args.preset}: {erase_seconds:.1f} s, {adapter.num_trainable:,} trainable parameters "
          f"({result['trainable_fraction']:.3%} of {result['unet_parameters']:,}), file {result['file_bytes'] / 1024:.0f} KiB, "
          f"ranks {min(adapter.ranks.values())}..{max(adapter.ranks.values())}")
    print(before_after_table(before, after, concept.name))
    print(f"16 images: base {t_base:.2f} s, unfused {t_unfused:.2f} s ({result['unfused_overhead']:+.1%}), "
          f"fused {t_fused:.2f} s ({result['fused_overhead']:+.1%})  [median of {args.repeats}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
