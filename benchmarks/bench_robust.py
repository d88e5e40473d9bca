"""Robust SEMU against plain SEMU and ESD-x on the shapes world, under the benchmark protocol.

    python benchmarks/bench_robust.py [--concepts no-red no-circle no-striped] [--seeds 0 1 2] [--pool 256]
    python benchmarks/bench_robust.py --dev --concepts no-blue --seeds 0      # a look at a dev concept

Variants, each a fresh process per concept (``concept_erase.bench.jobs.method_job``), at the tuned
configurations of ``benchmarks/results/tuning.json`` (chosen on the dev concepts):

- ``semu``: SEMU's tuned configuration with ``target_pool`` (the base model's targets precomputed);
- ``semu-robust``: the same plus ``adversarial=True`` (robust SEMU at its declared defaults, which
  were not tuned on a test concept);
- ``esd-x``: ESD-x's tuned configuration (erase time and held-out rates, for the time ratio).

For every seed: erase, then the held-out forget / paraphrase / retain rates, specificity and FID/KID
(``bench.protocol.HEADLINE`` sizes); for both SEMU variants also, on every seed's adapter, the
eval's adversarial attack at its default budget (``AttackConfig()``: 5 tokens, 40 steps, 8 held-out
forget prompts, 1 image each, as UnlearnDiffAtk), relearning (30 steps of cross-attention
fine-tuning) and membership inference. Run it on a quiet machine (``uptime`` below 1.5); it writes
``benchmarks/results/robust.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from concept_erase._io import atomic_write_json
from concept_erase.bench import _run, jobs, load_tuning, report
from concept_erase.bench.protocol import DEV_CONCEPTS, HEADLINE, TEST_CONCEPTS
from concept_erase.bench.stats import summarize
from concept_erase.evaluation.adversarial import AttackConfig

OUT = Path(__file__).parent / "results" / "robust.json"
BUDGET = {**jobs.ROBUSTNESS, "attack": AttackConfig().to_dict()}


def _variants(tuning: dict, pool: int) -> dict:
    semu = {**tuning["semu"]["chosen"], "target_pool": pool}
    return {"semu": ("semu", semu, True), "semu-robust": ("semu", {**semu, "adversarial": True}, True),
            "esd-x": ("esd-x", dict(tuning["esd-x"]["chosen"]), False)}


def _robust_summary(row: dict) -> dict | None:
    per = row.get("robustness_per_seed")
    if not per:
        return None
    asr = [r["attack_success_rate"] for r in per.values()]
    n = [r["attack_prompts"] for r in per.values()]
    steps = [r["relearn_steps_to_recover"] for r in per.values()]
    cap = next(iter(per.values()))["relearn_max_steps"]
    return {"attack_success": summarize(asr, n),
            "attack_success_no_attack": summarize([r["attack_success_no_attack"] for r in per.values()], n),
            "relearn_steps": steps, "relearn_cap": cap,
            "membership_auc": float(np.mean([r["membership_auc"] for r in per.values()])),
            "membership_auc_base": next(iter(per.values()))["membership_auc_base"]}


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.1f} [{100 * s['lo']:.0f}, {100 * s['hi']:.0f}]"


def table(rows: list[dict]) -> str:
    out = ["| concept | variant | forget ↓ | paraphrase ↓ | retain acc ↑ | specificity ↑ | attack success ↓ "
           "(no attack) | relearn steps to 50% ↑ | erase s (×ESD-x) | trainable |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    esd = {r["concept"]: r["seconds"] for r in rows if r["variant"] == "esd-x"}
    for r in rows:
        s, rob = r["summary"], r.get("robust_summary")
        attack = relearn = "–"
        if rob:
            attack = f"{_pct(rob['attack_success'])} ({100 * rob['attack_success_no_attack']['mean']:.0f}%)"
            relearn = ", ".join(str(x) if x is not None else f"> {rob['relearn_cap']}" for x in rob["relearn_steps"])
        ratio = f"{r['seconds']:.1f} (×{r['seconds'] / esd[r['concept']]:.2f})" if esd.get(r["concept"]) else \
            f"{r['seconds']:.1f}"
        spec = _pct(s["specificity"]) if "specificity" in s else "–"
        out.append(f"| {r['concept']} | {r['variant']} | {_pct(s['forget'])} | {_pct(s['paraphrase'])} | "
                   f"{_pct(s['retain'])} | {spec} | {attack} | {relearn} | {ratio} | "
                   f"{r['trainable_parameters']:,} ({100 * r['trainable_fraction']:.2f}%) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=list(TEST_CONCEPTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=["semu", "semu-robust", "esd-x"])
    ap.add_argument("--dev", action="store_true", help="allow dev concepts (to look at robust SEMU before testing)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    allowed = DEV_CONCEPTS if args.dev else TEST_CONCEPTS
    bad = [c for c in args.concepts if c not in allowed]
    if bad:
        raise SystemExit(f"{bad} are not {'dev' if args.dev else 'test'} concepts ({', '.join(allowed)}).")
    tuning = load_tuning()["methods"]
    variants = _variants(tuning, args.pool)
    sizes = HEADLINE.to_dict()
    start = time.perf_counter()
    rows = []
    for concept in args.concepts:
        base = _run(jobs.base_job, concept, args.seeds, sizes, robustness=BUDGET)
        for name in args.variants:
            method, config, robust = variants[name]
            row = _run(jobs.method_job, method, concept, config, args.seeds, sizes, base,
                       robustness=BUDGET if robust else None, robustness_every_seed=robust)
            row = report.summarize_row(row, base)
            row["variant"] = name
            row["robust_summary"] = _robust_summary(row)
            rows.append(row)
            print(f"{concept} {name}: forget {100 * row['summary']['forget']['mean']:.1f}%, retain "
                  f"{100 * row['summary']['retain']['mean']:.1f}%, {row['seconds']:.1f} s", flush=True)
            atomic_write_json(Path(args.out), report.jsonable(
                {"concepts": args.concepts, "seeds": args.seeds, "sizes": sizes, "budget": BUDGET,
                 "variants": {k: {"method": v[0], "config": v[1]} for k, v in variants.items()},
                 "rows": rows, "seconds": time.perf_counter() - start}))
    print(table(rows))
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
