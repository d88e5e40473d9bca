"""Where a SEMU erasure spends its time, measured with ``torch.profiler`` on the shapes world.

    python benchmarks/profile_semu.py [--concept no-red] [--pool 256] [--profile-steps 40]

Erases ``--concept`` with SEMU's tuned configuration (``benchmarks/results/tuning.json``) in three
variants — as tuned (a base forward every step), with ``target_pool``, and robust
(``adversarial=True`` with the pool) — each once without the profiler (the wall time of the whole
erasure at the tuned steps) and once under ``torch.profiler`` (CPU activities) with
``--profile-steps`` training steps (the profiler keeps every event: a whole erasure of 200 steps
needs over 20 GB), in one process. The trainer marks its phases with ``record_function`` ranges
("semu: sample training data", "semu: forget gradient", "semu: projection + SVD", "semu: target
pool", and per training step the forget term, the inner attack, the retain term, the backward and
update); the table gives each phase's inclusive CPU time as a share of the profiled erase, and the
heaviest aten operators by self CPU time. The unprofiled wall time shows the profiler's overhead.
Run it on a quiet machine (``uptime`` load below 1.5). Writes ``benchmarks/results/profile_semu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from concept_erase import world
from concept_erase._io import atomic_write_json
from concept_erase.bench import load_tuning
from concept_erase.methods import erase_with

OUT = Path(__file__).parent / "results" / "profile_semu.json"
TOP_OPS = 8


def _profiled(pipe, concept: str, overrides: dict) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        erase_with("semu", pipe, concept, progress=False, **overrides)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    del prof
    us = 1e-6
    phases = {e.key: e.cpu_time_total * us for e in events if e.key.startswith("semu:")}
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    top = [{"op": e.key, "self_seconds": e.self_cpu_time_total * us, "calls": e.count} for e in ops[:TOP_OPS]]
    steps = overrides["steps"]
    per_step = {k: v / steps for k, v in phases.items() if k.startswith("semu: step")}
    return {"profiled_steps": steps, "profiled_wall_seconds": wall, "phase_seconds": phases,
            "phase_share": {k: v / wall for k, v in phases.items()}, "per_step_seconds": per_step, "top_ops": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="no-red")
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--profile-steps", type=int, default=40, help="training steps of the profiled erasure")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = world.load_pipeline()
    tuned = dict(load_tuning()["methods"]["semu"]["chosen"])
    variants = {"as tuned, no pool": {"target_pool": 0}, f"target_pool={args.pool}": {"target_pool": args.pool},
                f"robust (adversarial, target_pool={args.pool})": {"target_pool": args.pool, "adversarial": True}}
    rows = {}
    for name, extra in variants.items():
        overrides = {**tuned, **extra}
        t0 = time.perf_counter()
        erase_with("semu", pipe, args.concept, progress=False, **overrides)
        plain = time.perf_counter() - t0
        r = rows[name] = {"config": overrides, "wall_seconds": plain,
                          **_profiled(pipe, args.concept, {**overrides, "steps": args.profile_steps})}
        print(f"\n{name}: {plain:.1f} s for {overrides['steps']} steps unprofiled; profiled with "
              f"{args.profile_steps} steps: {r['profiled_wall_seconds']:.1f} s")
        for phase, sec in sorted(r["phase_seconds"].items(), key=lambda kv: -kv[1]):
            step = f"  {1000 * r['per_step_seconds'][phase]:6.1f} ms/step" if phase in r["per_step_seconds"] else ""
            print(f"  {phase:<36} {sec:7.2f} s  {100 * r['phase_share'][phase]:5.1f}%{step}")
        for op in rows[name]["top_ops"]:
            print(f"    {op['op']:<34} {op['self_seconds']:7.2f} s self  ({op['calls']} calls)")
    result = {"concept": args.concept, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "variants": rows}
    atomic_write_json(Path(args.out), result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
