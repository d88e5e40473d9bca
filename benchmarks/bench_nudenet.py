"""Throughput of the NudeNet concept classifier (images/s), batched, on synthetic images.

    python benchmarks/bench_nudenet.py [--size 512] [--images 64] [--batch-sizes 1 8 16 32]

Target: >= 8 images/s on 2 CPU cores, batched. The images are random noise at Stable
Diffusion's size (NudeNet letterboxes and resizes every image to 320x320 itself, so the content
does not change the cost). Prints one line per batch size; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from concept_erase.evaluation.classifiers import NudeNetClassifier

    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g)
    print(f"NudeNet 3.4.2 (320n.onnx) on {args.images} random {args.size}x{args.size} images; "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
    print(f"{'batch':>6} {'images/s':>9} {'ms/image':>9}")
    for bs in args.batch_sizes:
        clf = NudeNetClassifier(batch_size=bs)
        clf.score(images[:bs])  # warm-up: onnxruntime allocates on the first run
        start = time.perf_counter()
        for i in range(0, args.images, bs):
            clf.score(images[i : i + bs])
        dt = time.perf_counter() - start
        print(f"{bs:>6} {args.images / dt:>9.1f} {1000 * dt / args.images:>9.1f}")


if __name__ == "__main__":
    main()
