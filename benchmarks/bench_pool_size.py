"""SEMU's target pool size on the dev concepts: what the default (256) costs or buys against no pool and a larger one.

    python benchmarks/bench_pool_size.py [--pools 0 256 1024] [--seeds 0 1 2]      # about 15 min

SEMU's tuned configuration (``benchmarks/results/tuning.json``) with ``target_pool`` set to each value,
on the dev concepts only (``bench.protocol.DEV_CONCEPTS``: choosing a default here keeps the test
concepts unseen), every seed, the tuning's held-out prompt sizes (``bench.protocol.TUNING``); each
concept and pool size in a fresh process. A pool holds at most steps × batch size examples (1,600 at
the tuned 200 steps), so 1024 means each example is drawn about 1.6 times instead of 6. Reports the
forget, paraphrase and retain rates (mean over seeds, 95% interval) per concept and their mean over the
concepts, and the mean erase time. Run it on a quiet machine. Writes ``benchmarks/results/pool_size.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from concept_erase._io import atomic_write_json
from concept_erase.bench import _run, jobs, load_tuning, report
from concept_erase.bench.protocol import DEV_CONCEPTS, TUNING
from concept_erase.bench.report import pct

OUT = Path(__file__).parent / "results" / "pool_size.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", nargs="+", type=int, default=[0, 256, 1024])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    semu = dict(load_tuning()["methods"]["semu"]["chosen"])
    sizes = TUNING.to_dict()
    start = time.perf_counter()
    rows = []
    lines = ["| concept | pool | forget ↓ | paraphrase ↓ | retain acc ↑ (base) | erase s |",
             "|---|---:|---|---|---|---:|"]
    for concept in DEV_CONCEPTS:
        base = _run(jobs.base_job, concept, args.seeds, sizes)
        for pool in args.pools:
            row = report.summarize_row(_run(jobs.method_job, "semu", concept, {**semu, "target_pool": pool},
                                            args.seeds, sizes, base), base)
            row["pool"] = pool
            rows.append(row)
            s, b = row["summary"], row["base_summary"]
            lines.append(f"| {concept} | {pool} | {pct(s['forget'])} | {pct(s['paraphrase'])} | {pct(s['retain'])} "
                         f"({100 * b['retain']['mean']:.1f}) | {row['seconds']:.1f} |")
            print(lines[-1], flush=True)
            atomic_write_json(Path(args.out), report.jsonable(
                {"semu": semu, "pools": args.pools, "seeds": args.seeds, "sizes": sizes, "rows": rows,
                 "seconds": time.perf_counter() - start}))
    lines += ["", "| pool | forget ↓ | paraphrase ↓ | retain acc ↑ | erase s | (means over the dev concepts) |",
              "|---:|---:|---:|---:|---:|---|"]
    for pool in args.pools:
        mine = [r for r in rows if r["pool"] == pool]
        mean = {k: 100 * float(np.mean([r["summary"][k]["mean"] for r in mine])) for k in ("forget", "paraphrase",
                                                                                             "retain")}
        lines.append(f"| {pool} | {mean['forget']:.1f} | {mean['paraphrase']:.1f} | {mean['retain']:.1f} | "
                     f"{np.mean([r['seconds'] for r in mine]):.1f} | |")
    print("\n".join(lines))
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
