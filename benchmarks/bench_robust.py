"""Robust SEMU against plain SEMU and ESD-x on the shapes world, under the benchmark protocol.

    python benchmarks/bench_robust.py [--concepts no-red no-circle no-striped] [--seeds 0 1 2] [--pool 256]
    python benchmarks/bench_robust.py --dev --concepts no-blue --seeds 0      # a look at a dev concept
    python benchmarks/bench_robust.py --keep DIR                              # also keep every adapter (DIR/VARIANT/)
    python benchmarks/bench_robust.py --ship semu-robust --keep DIR           # the shipped adapters, from a run

Variants, each a fresh process per concept (``concept_erase.bench.jobs.method_job``), at the tuned
configurations of ``benchmarks/results/tuning.json`` (chosen on the dev concepts):

- ``semu``: SEMU's tuned configuration with ``target_pool`` (the base model's targets precomputed);
- ``semu-robust``: the same plus ``adversarial=True`` at robust SEMU's defaults, which won its search
  on the dev concept ``no-blue`` (4 configurations, seed 0: ``benchmarks/results/robust_dev.json``;
  ``--robust KEY=VALUE`` sets others);
- ``semu-null``: SEMU's tuned configuration with the null-space constraint at the share its own dev
  search chose (``benchmarks/bench_semu_null.py``, ``benchmarks/results/semu_null.json``);
- ``semu-null-robust``: robust SEMU inside the null space, as its dev search chose it
  (``bench_semu_null.py --adversarial``, ``benchmarks/results/semu_null_robust.json``);
- ``semu-gamma``: SEMU's tuned configuration with γ on cross-attention at the value its dev search chose
  (``benchmarks/bench_semu_gamma.py``, ``benchmarks/results/semu_gamma.json``);
- ``semu-gamma-robust``: robust SEMU at that γ, as its own dev search chose it
  (``bench_semu_gamma.py --adversarial``, ``benchmarks/results/semu_gamma_robust.json``);
- ``semu-gamma-robust-retain``: the same with the retain prompts kept under the attack's tokens
  (``adversarial_retain=True``; ``bench_semu_gamma.py --adversarial --adversarial-retain``);
- ``esd-x``: ESD-x's tuned configuration (erase time and held-out rates, for the time ratio).

For every seed: erase, then the held-out forget / paraphrase / retain rates, specificity and FID/KID
(``bench.protocol.HEADLINE`` sizes); for both SEMU variants also, on every seed's adapter, the
eval's adversarial attack at its default budget (``AttackConfig()``: 5 tokens, 40 steps, 8 held-out
forget prompts, 1 image each, as UnlearnDiffAtk), relearning (30 steps of cross-attention
fine-tuning) and membership inference. Run it on a quiet machine (``uptime`` below 1.5); it writes
``benchmarks/results/robust.json`` and prints the table.

``--ship VARIANT`` makes no new run: from the results file and the adapters ``--keep`` kept, it writes
seed 0's adapter of ``VARIANT`` for each concept to ``concept_erase/adapters/{concept}.safetensors``,
with the run's evaluation (base model, the three seeds' means and intervals, this file's own seed) in
its metadata, which the model card shows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from concept_erase._io import atomic_write_json
from concept_erase.adapter import UnlearningAdapter
from concept_erase.bench import _run, jobs, load_tuning, report
from concept_erase.bench.protocol import DEV_CONCEPTS, HEADLINE, TEST_CONCEPTS
from concept_erase.bench.report import pct
from concept_erase.bench.stats import summarize
from concept_erase.evaluation.adversarial import AttackConfig

OUT = Path(__file__).parent / "results" / "robust.json"
SHIPPED = Path(__file__).parents[1] / "concept_erase" / "adapters"
BUDGET = {**jobs.ROBUSTNESS, "attack": AttackConfig().to_dict()}
ROBUST: tuple[str, ...] = ()  # robust SEMU's settings beyond adversarial=True (its defaults when empty)


SEARCHED = {"semu-null": ("semu_null.json", "benchmarks/bench_semu_null.py"),
            "semu-null-robust": ("semu_null_robust.json", "benchmarks/bench_semu_null.py --adversarial"),
            "semu-gamma": ("semu_gamma.json", "benchmarks/bench_semu_gamma.py"),
            "semu-gamma-robust": ("semu_gamma_robust.json", "benchmarks/bench_semu_gamma.py --adversarial"),
            "semu-gamma-robust-retain": ("semu_gamma_robust_retain.json",
                                         "benchmarks/bench_semu_gamma.py --adversarial --adversarial-retain")}


def _searched_choice(variant: str) -> dict:
    """A searched variant's settings beyond SEMU's tuned ones, as its dev search chose them."""
    name, script = SEARCHED[variant]
    path = Path(__file__).parent / "results" / name
    if not path.is_file():
        raise SystemExit(f"The {variant} variant needs {name}: run {script} first.")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data["chosen"].items() if data["semu"].get(k) != v}


def _variants(tuning: dict, pool: int, robust: dict, plain: dict, names: list[str]) -> dict:
    semu = {**tuning["semu"]["chosen"], "target_pool": pool, **plain}
    variants = {"semu": ("semu", semu, True), "semu-robust": ("semu", {**semu, "adversarial": True, **robust}, True),
                "esd-x": ("esd-x", dict(tuning["esd-x"]["chosen"]), False)}
    for name in SEARCHED:
        if name in names:
            variants[name] = ("semu", {**semu, **_searched_choice(name)}, True)
    return variants


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



def table(rows: list[dict]) -> str:
    out = ["| concept | variant | forget ↓ | paraphrase ↓ | retain acc ↑ | specificity ↑ | attack success ↓ "
           "(no attack) | relearn steps to 50% ↑ | erase s (×ESD-x) | trainable |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    esd = {r["concept"]: r["seconds"] for r in rows if r["variant"] == "esd-x"}
    for r in rows:
        s, rob = r["summary"], r.get("robust_summary")
        attack = relearn = "–"
        if rob:
            attack = f"{pct(rob['attack_success'])} ({100 * rob['attack_success_no_attack']['mean']:.0f}%)"
            relearn = ", ".join(str(x) if x is not None else f"> {rob['relearn_cap']}" for x in rob["relearn_steps"])
        ratio = f"{r['seconds']:.1f} (×{r['seconds'] / esd[r['concept']]:.2f})" if esd.get(r["concept"]) else \
            f"{r['seconds']:.1f}"
        spec = pct(s["specificity"]) if "specificity" in s else "–"
        out.append(f"| {r['concept']} | {r['variant']} | {pct(s['forget'])} | {pct(s['paraphrase'])} | "
                   f"{pct(s['retain'])} | {spec} | {attack} | {relearn} | {ratio} | "
                   f"{r['trainable_parameters']:,} ({100 * r['trainable_fraction']:.2f}%) |")
    return "\n".join(out)


def _evaluation(row: dict, seeds: list[int]) -> dict:
    """The model card's table: the base model, the run's mean over seeds, and the shipped file's seed."""
    first = row["per_seed"][str(seeds[0])]
    first_rob = (row.get("robustness_per_seed") or {}).get(str(seeds[0]))
    b, s, rob = row["base_summary"], row["summary"], row.get("robust_summary")
    cap = f"> {first_rob['relearn_max_steps']}" if first_rob else "–"
    m = first["metrics"]

    def own(rate):
        return "–" if rate is None else f"{100 * rate:.1f}"

    mean = {"forget ↓": pct(s["forget"]), "paraphrase ↓": pct(s["paraphrase"]),
            "retain accuracy ↑": pct(s["retain"]), "specificity ↑": pct(s["specificity"]) if "specificity" in s
            else "–"}
    this = {"forget ↓": own(m["forget"]["concept_rate"]), "paraphrase ↓": own(m["paraphrase"]["concept_rate"]),
            "retain accuracy ↑": own(m["retain"]["accuracy"]), "specificity ↑": own(first["specificity"]["rate"])}
    if rob and first_rob:
        mean["attack success ↓"] = pct(rob["attack_success"])
        mean["relearn steps ↑"] = ", ".join(cap if x is None else str(x) for x in rob["relearn_steps"])
        this["attack success ↓"] = own(first_rob["attack_success_rate"])
        steps = first_rob["relearn_steps_to_recover"]
        this["relearn steps ↑"] = cap if steps is None else str(steps)
    return {
        "base model": {"forget ↓": pct(b["forget"]), "paraphrase ↓": pct(b["paraphrase"]),
                       "retain accuracy ↑": pct(b["retain"])},
        f"{row['variant']}, mean [95% interval] over seeds {', '.join(map(str, seeds))}": mean,
        f"this file (seed {seeds[0]})": this,
        "prompts per seed": {"forget ↓": m["forget"]["n"], "paraphrase ↓": m["paraphrase"]["n"],
                             "retain accuracy ↑": m["retain"]["n"]},
    }


def ship(results: Path, keep: Path, variant: str) -> None:
    data = json.loads(results.read_text(encoding="utf-8"))
    seeds = data["seeds"]
    rows = [r for r in data["rows"] if r["variant"] == variant]
    if not rows:
        raise SystemExit(f"{results} has no rows of {variant!r}.")
    for row in rows:
        name = row["kept"][str(seeds[0])]
        adapter = UnlearningAdapter.load(keep / variant / name)
        meta = {**adapter.metadata, "evaluation": _evaluation(row, seeds),
                "evaluation_protocol": "benchmarks/bench_robust.py: held-out prompts of the benchmark protocol, "
                                       f"seeds {seeds}, the eval's attack at its default budget"}
        out = UnlearningAdapter(adapter.tensors, meta).save(SHIPPED / f"{row['concept']}.safetensors")
        print(f"wrote {out.relative_to(SHIPPED.parents[1])} ({row['concept']}, {variant}, seed {seeds[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=list(TEST_CONCEPTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=["semu", "semu-robust", "esd-x"])
    ap.add_argument("--robust", nargs="*", default=list(ROBUST), metavar="KEY=VALUE",
                    help="SemuConfig settings of the semu-robust variant on top of SEMU's tuned ones")
    ap.add_argument("--semu", nargs="*", default=[], metavar="KEY=VALUE",
                    help="SemuConfig settings of both SEMU variants on top of SEMU's tuned ones (e.g. steps=400)")
    ap.add_argument("--dev", action="store_true", help="allow dev concepts (to look at robust SEMU before testing)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--keep", help="directory to keep every adapter file in (needed by --ship)")
    ap.add_argument("--ship", metavar="VARIANT", help="write the shipped adapters from --out and --keep; no new run")
    args = ap.parse_args()
    if args.ship:
        if not args.keep:
            raise SystemExit("--ship needs --keep DIR: the directory the run kept its adapters in.")
        return ship(Path(args.out), Path(args.keep), args.ship)
    allowed = DEV_CONCEPTS if args.dev else TEST_CONCEPTS
    bad = [c for c in args.concepts if c not in allowed]
    if bad:
        raise SystemExit(f"{bad} are not {'dev' if args.dev else 'test'} concepts ({', '.join(allowed)}).")
    tuning = load_tuning()["methods"]
    def settings(items):
        return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}

    known = ("semu", "semu-robust", *SEARCHED, "esd-x")
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}: choose from {', '.join(known)}.")
    variants = _variants(tuning, args.pool, settings(args.robust), settings(args.semu), args.variants)
    sizes = HEADLINE.to_dict()
    start = time.perf_counter()
    rows = []
    for concept in args.concepts:
        base = _run(jobs.base_job, concept, args.seeds, sizes, robustness=BUDGET)
        for name in args.variants:
            method, config, robust = variants[name]
            # adapters kept per variant: variants may share a method, and files are named {concept}.{method}.{seed}
            row = _run(jobs.method_job, method, concept, config, args.seeds, sizes, base,
                       robustness=BUDGET if robust else None, robustness_every_seed=robust,
                       keep=str(Path(args.keep) / name) if robust and args.keep else None)
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
