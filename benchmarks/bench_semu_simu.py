"""SEMU x SIMU under the benchmark protocol: tuned on the dev concepts, compared with SEMU on the test ones.

    python benchmarks/bench_semu_simu.py                 # dev search, then the test concepts (13 min measured)

SEMU x SIMU is SEMU with ``mask="simu"``: each layer's subspace keeps only the rows of SIMU's critical
neurons ("SIMU: Selective Influence Machine Unlearning", the layer-wise attribution mask; the
dual-neuron variant drops the neurons critical for the retain prompts too). The mask leaves far fewer
directions than plain SEMU (a few hundred trained parameters instead of tens of thousands), so the
grid asks the two questions that decides: a larger learning rate for the smaller R, and a larger
mask (forget-only neurons, a lower threshold t). Like every method of the benchmark it gets
:data:`GRID` (``bench.search.SEARCH_SIZE`` configurations, on top of SEMU's tuned ones) on the dev
concepts and the benchmark's selection rule (``bench.search.SELECTION_RULE``).

Then, in one run on the test concepts (``HEADLINE`` held-out prompts, every seed): SEMU tuned and
SEMU x SIMU at its chosen configuration; rates with 95% intervals, the retain-accuracy difference
(SEMU x SIMU − SEMU, paired by seed, with its t-interval over seeds) and erase time.
Writes ``benchmarks/results/semu_simu.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from concept_erase._io import atomic_write_json
from concept_erase.bench import _run, jobs, load_tuning, report, search
from concept_erase.bench.protocol import DEV_CONCEPTS, HEADLINE, TEST_CONCEPTS, TUNING
from concept_erase.bench.report import pct
from concept_erase.bench.stats import t_interval

OUT = Path(__file__).parent / "results" / "semu_simu.json"
GRID = [dict(mask="simu", mask_kind="dual", mask_threshold=0.3),  # the paper's t and dual-neuron mask
        dict(mask="simu", mask_kind="dual", mask_threshold=0.3, learning_rate=1e-2),
        dict(mask="simu", mask_kind="forget", mask_threshold=0.3, learning_rate=1e-2),
        dict(mask="simu", mask_kind="forget", mask_threshold=0.1, learning_rate=1e-2)]
assert len(GRID) == search.SEARCH_SIZE


def dev_search(semu: dict, grid: list[dict] = GRID) -> dict:
    """``grid`` on top of SEMU's tuned ``semu`` settings, on every dev concept (seed 0), and the
    benchmark's rule's choice."""
    sizes = TUNING.to_dict()
    base_retain = float(np.mean([_run(jobs.base_job, c, [0], sizes)["per_seed"][0]["metrics"]["retain"]["accuracy"]
                                 for c in DEV_CONCEPTS]))
    configs = [{**semu, **g} for g in grid]
    per_concept = [_run(jobs.tune_job, "semu", c, configs, sizes, {}) for c in DEV_CONCEPTS]
    summary = []
    for i, config in enumerate(configs):
        runs = [pc[i] for pc in per_concept]
        summary.append({"config": config, **search.mean_over_concepts(runs),
                        "trainable_parameters": [r["trainable_parameters"] for r in runs],
                        "per_concept": dict(zip(DEV_CONCEPTS, runs))})
        s = summary[-1]
        print(f"dev {grid[i]}: forget {s['forget']:.2f} paraphrase {s['paraphrase']:.2f} retain {s['retain']:.3f} "
              f"{s['seconds']:.1f} s", flush=True)
    best, feasible = search.select(summary, base_retain)
    return {"base_retain": base_retain, "search": summary, "chosen_index": best, "feasible": feasible,
            "rule": search.SELECTION_RULE}


def write_dev_search(grid: list[dict], out: Path) -> dict:
    """:func:`dev_search` of ``grid`` on SEMU's tuned settings, written to ``out`` with the choice: the
    file a variant of ``benchmarks/bench_robust.py`` reads its configuration from."""
    semu = dict(load_tuning()["methods"]["semu"]["chosen"])
    start = time.perf_counter()
    dev = dev_search(semu, grid)
    chosen = dev["search"][dev["chosen_index"]]["config"]
    result = {"semu": semu, "grid": grid, "dev": dev, "chosen": chosen, "seconds": time.perf_counter() - start}
    atomic_write_json(out, report.jsonable(result))
    print(f"chosen {chosen} ({'feasible' if dev['feasible'] else 'infeasible: best retain'}); "
          f"{result['seconds']:.0f} s; wrote {out}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=list(TEST_CONCEPTS), choices=TEST_CONCEPTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    semu = dict(load_tuning()["methods"]["semu"]["chosen"])
    start = time.perf_counter()
    result = {"seeds": args.seeds, "sizes": HEADLINE.to_dict(), "semu": semu, "grid": GRID}
    result["dev"] = dev = dev_search(semu)
    chosen = dev["search"][dev["chosen_index"]]["config"]
    atomic_write_json(Path(args.out), report.jsonable(result))
    sizes = HEADLINE.to_dict()
    header = ("| concept | variant | forget ↓ | paraphrase ↓ | retain acc ↑ | Δ retain vs SEMU | erase s | "
              "trainable |")
    rows, lines = [], [header, "|---|---|---|---|---|---|---:|---:|"]
    for concept in args.concepts:
        base = _run(jobs.base_job, concept, args.seeds, sizes)
        pair = {}
        for name, config in (("semu", semu), ("semu x simu", chosen)):
            row = report.summarize_row(_run(jobs.method_job, "semu", concept, config, args.seeds, sizes, base), base)
            row["variant"] = name
            pair[name] = row
            rows.append(row)
        a, b = pair["semu x simu"]["summary"]["retain"]["per_seed"], pair["semu"]["summary"]["retain"]["per_seed"]
        diff = [x - y for x, y in zip(a, b)]
        lo, hi = t_interval(diff)
        pair["semu x simu"]["retain_difference"] = {"mean": float(np.mean(diff)), "lo": lo, "hi": hi}
        for name, row in pair.items():
            s, d = row["summary"], row.get("retain_difference")
            delta = f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d else "–"
            lines.append(f"| {concept} | {name} | {pct(s['forget'])} | {pct(s['paraphrase'])} | {pct(s['retain'])} "
                         f"| {delta} | {row['seconds']:.1f} | {row['trainable_parameters']:,} |")
        print("\n".join(lines[-2:]), flush=True)
        result.update(rows=rows, seconds=time.perf_counter() - start)
        atomic_write_json(Path(args.out), report.jsonable(result))
    print("\n".join(lines))
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
