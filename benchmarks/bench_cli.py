"""Benchmark: start-up time of the command line (target: `concept-erase --help` <= 1.5 s on 2 CPU cores).

Each command runs as a whole process, as a user runs it; the figure is the median of ``--runs``
runs after one warm-up (file-system cache), with min and max. ``import concept_erase`` and an erase
``--help`` (which builds the method flags and so imports torch) are timed for comparison.

    python benchmarks/bench_cli.py [--runs 5] [--out benchmarks/results/cli.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _time(cmd: list[str], runs: int) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - t0)
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    exe = shutil.which("concept-erase") or str(Path(sys.executable).with_name("concept-erase"))
    rows = [
        _time([exe, "--help"], args.runs),
        _time([exe, "--version"], args.runs),
        _time([sys.executable, "-c", "import concept_erase"], args.runs),
        _time([exe, "erase", "--help"], args.runs),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in rows:
        print(f"{r['command']:<40} median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f}, "
              f"{r['runs']} runs)")
    target = rows[0]["median_s"] <= 1.5
    print(f"target `concept-erase --help` <= 1.5 s: {'met' if target else 'MISSED'}"
          + (f" (load average {load:.2f} at the end)" if load is not None else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "target_met": target, "load_average": load}, indent=2)
                                  + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
