"""The full ``concept-erase eval`` on the shapes world with the shipped adapters: time and peak memory.

    python benchmarks/bench_eval.py                 # every shipped adapter, 4 images per prompt
    python benchmarks/bench_eval.py --adapters no-red --weights /tmp/smokeworld ...

For each shipped adapter, one eval of base vs adapter on all the forget, paraphrase and retain
prompts of its preset, 4 images per prompt, FID/KID with world features (what
``concept-erase eval --adapter NAME --prompts NAME`` does). Target: <= 5 minutes on 2
CPU cores. Peak memory must stay flat as the number of images grows (the metrics keep sums, not
images): the same evaluation also runs with 1 image per prompt and the two peaks are compared.
Each run is a fresh subprocess in a fresh directory (no resumed images), measured with
``resource.getrusage``. Prints its figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    import concept_erase  # noqa: F401
    from concept_erase import world
    from concept_erase.adapter import UnlearningAdapter
    from concept_erase.evaluation import EvalConfig, evaluate
    from concept_erase.loading import resolve_adapter

    torch.set_num_threads(args.threads)
    pipe = world.load_pipeline(weights_dir=args.weights)
    rows = []
    start = time.perf_counter()
    for name in args.adapters:
        concept = UnlearningAdapter.load(resolve_adapter(name)).metadata.get("concept", {}).get("name") or name
        t0 = time.perf_counter()
        report = evaluate(EvalConfig(out=str(Path(args.out) / name), prompts=[concept], adapters=[name],
                                     images_per_prompt=args.images_per_prompt, batch_size=args.batch_size,
                                     classifier_weights=args.classifier_weights, base="world"),
                          pipe=pipe, progress=False)
        res = report["results"][list(report["models"])[1]]  # models: base, then the adapter
        rows.append({"adapter": name, "seconds": time.perf_counter() - t0,
                     "images": report["timing"]["images_total"],
                     "generation_s": report["timing"]["generation_s"], "scoring_s": report["timing"]["scoring_s"],
                     "forget_rate": res["splits"]["forget"].get("concept_rate"),
                     "base_forget_rate": report["results"]["base"]["splits"]["forget"].get("concept_rate"),
                     "paraphrase_rate": res["splits"].get("paraphrase", {}).get("concept_rate"),
                     "retain_accuracy": res["splits"].get("retain", {}).get("accuracy"),
                     "fid_retain": res.get("fid_vs_base", {}).get("retain", {}).get("fid")})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_mb}))


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def run(args, images_per_prompt: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--images-per-prompt", str(images_per_prompt), "--out", str(out),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--adapters", *args.adapters]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.classifier_weights:
        cmd += ["--classifier-weights", args.classifier_weights]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        sys.exit(f"worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0  # including Python start-up and model loading
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", nargs="+", help="adapters to evaluate (default: every shipped one)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--weights", help="world model directory (default: the shipped one)")
    parser.add_argument("--classifier-weights", help="world classifier file (default: the shipped one)")
    parser.add_argument("--out", help="keep the outputs here (default: a temporary directory)")
    parser.add_argument("--no-memory-check", action="store_true", help="skip the 1-image-per-prompt run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not args.adapters:
        from concept_erase.loading import SHIPPED_ADAPTERS_DIR

        args.adapters = sorted(p.stem for p in SHIPPED_ADAPTERS_DIR.glob("*.safetensors"))
        if not args.adapters:
            sys.exit(f"No shipped adapters in {SHIPPED_ADAPTERS_DIR}; pass --adapters FILE ...")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-eval-"))
    print(f"concept-erase eval on the shapes world: adapters {', '.join(args.adapters)}; {args.threads} threads; "
          f"outputs in {root}")
    full = run(args, args.images_per_prompt, root / f"ipp{args.images_per_prompt}")
    print(f"\n{args.images_per_prompt} images per prompt (the target run):")
    print(f"{'adapter':<14}{'images':>7}{'time s':>8}{'gen s':>7}{'score s':>8}{'forget':>14}{'paraphr.':>9}"
          f"{'retain acc':>11}{'FID':>8}")
    for r in full["rows"]:
        print(f"{r['adapter']:<14}{r['images']:>7}{r['seconds']:>8.1f}{r['generation_s']:>7.1f}{r['scoring_s']:>8.1f}"
              f"{pct(r['base_forget_rate']) + ' -> ' + pct(r['forget_rate']):>14}{pct(r['paraphrase_rate']):>9}"
              f"{pct(r['retain_accuracy']):>11}{'–' if r['fid_retain'] is None else format(r['fid_retain'], '.2f'):>8}")
    print(f"total: {full['seconds']:.1f} s of evaluation ({full['wall_s']:.1f} s with start-up and model loading); "
          f"peak RSS {full['peak_rss_mb']:.0f} MB")
    if not args.no_memory_check:
        small = run(args, 1, root / "ipp1")
        n_small, n_full = sum(r["images"] for r in small["rows"]), sum(r["images"] for r in full["rows"])
        print("\npeak memory vs number of images (fresh process each):")
        print(f"  {n_small:>6} images: peak RSS {small['peak_rss_mb']:.0f} MB ({small['seconds']:.1f} s)")
        print(f"  {n_full:>6} images: peak RSS {full['peak_rss_mb']:.0f} MB ({full['seconds']:.1f} s)")
        print(f"  {n_full / n_small:.1f}x the images -> {full['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the peak memory")


if __name__ == "__main__":
    main()
