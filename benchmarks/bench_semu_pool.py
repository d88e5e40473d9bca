"""SEMU's target pool on the shapes world: erase time and held-out rates with and without it.

    python benchmarks/bench_semu_pool.py [--concepts no-red no-circle no-striped] [--pool 256] [--seed 0]

Each test concept is erased with SEMU's tuned configuration (``benchmarks/results/tuning.json``)
three times in one process — without the pool (``target_pool=0``: a base forward every step), ``target_pool=N`` (the base
model's targets computed once for N noised forget and N retain examples), and the pool with the rank
budget ``max_trainable_fraction`` (0.5% of the UNet by default) — and ESD-x at its tuned
configuration once per concept, so the times are ratios inside one run. Each adapter is scored on the
benchmark's held-out prompts (``bench.protocol.HEADLINE`` sizes, image seeds of round ``seed``).
Run it on a quiet machine (``uptime`` load below 1.5). Writes ``benchmarks/results/semu_pool.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from concept_erase import world
from concept_erase.bench import load_tuning
from concept_erase.bench.jobs import evaluate
from concept_erase.bench.protocol import HEADLINE, eval_prompts
from concept_erase.concepts import resolve_concept
from concept_erase.methods import erase_with

OUT = Path(__file__).parent / "results" / "semu_pool.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", nargs="+", default=["no-red", "no-circle", "no-striped"])
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=0.005, help="max_trainable_fraction of the third SEMU run")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe, model = world.load_pipeline(), world.load_classifier()
    tuning = load_tuning()["methods"]
    runs = [("semu", {"target_pool": 0}), ("semu", {"target_pool": args.pool}),
            ("semu", {"target_pool": args.pool, "max_trainable_fraction": args.budget}), ("esd-x", {})]
    rows = []
    for name in args.concepts:
        concept = resolve_concept(name)
        sets = eval_prompts(concept, HEADLINE)
        for method, extra in runs:
            overrides = {**tuning[method]["chosen"], **extra}
            if method == "semu":
                overrides["seed"] = args.seed
            t0 = time.perf_counter()
            adapter = erase_with(method, pipe, concept, progress=False, **overrides)
            seconds = time.perf_counter() - t0
            path = Path(f"/tmp/bench_pool_{name}_{method}_{len(rows)}.safetensors")
            path.unlink(missing_ok=True)
            adapter.save(path)
            pipe.load_unlearning_adapter(str(path), adapter_name="bench")
            try:
                scores = evaluate(pipe, model, concept, sets, args.seed)
            finally:
                pipe.unload_unlearning_adapter("bench")
            meta = adapter.metadata
            row = {"concept": name, "method": method, "overrides": overrides, "erase_s": round(seconds, 2),
                   "trainable_fraction": meta.get("trainable_fraction"), "ranks": meta.get("ranks"),
                   **{k: scores[k] for k in ("forget", "paraphrase", "retain")}}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("concept", "method", "erase_s")}),
                  {k: {m: round(v, 3) for m, v in scores[k].items()} for k in ("forget", "paraphrase", "retain")},
                  flush=True)
    Path(args.out).write_text(json.dumps({"seed": args.seed, "pool": args.pool, "sizes": HEADLINE.to_dict(),
                                          "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
