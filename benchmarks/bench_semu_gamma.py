"""What SEMU's γ selects on the shapes world, and γ on cross-attention tuned under the benchmark protocol.

    python benchmarks/bench_semu_gamma.py --spectra   # per-layer ranks at several γ, every concept (~1 min)
    python benchmarks/bench_semu_gamma.py             # the dev search; then bench_robust.py --variants ... semu-gamma
    python benchmarks/bench_semu_gamma.py --adversarial  # robust SEMU at the chosen γ; then ... semu-gamma-robust
    python benchmarks/bench_semu_gamma.py --adversarial --adversarial-retain   # ... semu-gamma-robust-retain

SEMU keeps, per layer, the top singular directions of the projected forget gradient G⊥ = G − αW that
explain a share γ of its variance ("SEMU: Singular Value Decomposition for Efficient Machine
Unlearning", arXiv 2502.07587, eq. 4-6), with γ = 1 on cross-attention. ``--spectra`` shows what that
selects (:func:`concept_erase.methods.semu.gradient_spectra`, SEMU's tuned configuration, seed 0): the
summed gradient G itself holds nearly all its variance in a few directions, but its rank is that of
the token embeddings it was summed over, and the projection adds the multiple αW of the full-rank
weight, which fills every remaining direction with a sliver of variance. So γ = 1 keeps the full rank
of every layer, and the trained share is set by which layers are adapted.

The dev search treats γ on cross-attention as a setting like the learning rate: :data:`GRID`
(``bench.search.SEARCH_SIZE`` configurations on top of SEMU's tuned ones, chosen from the dev
concepts' spectra only) on the dev concepts and the benchmark's selection rule
(``bench.search.SELECTION_RULE``). Writes ``benchmarks/results/semu_gamma.json``, whose chosen
configuration ``benchmarks/bench_robust.py`` uses for its ``semu-gamma`` variant on the test concepts.

``--adversarial`` searches robust SEMU (the inner attack, optionally inside the null space) in the
subspace of the chosen γ, :data:`GRID_ROBUST`: at γ = 1 the adversarial term cost retain accuracy on
held-out prompts, and a subspace of 10-60 directions a layer instead of 64-128 leaves it less room to
move what it was not asked to. Writes ``benchmarks/results/semu_gamma_robust.json`` (the
``semu-gamma-robust`` variant). It did not: on ``no-red`` held-out yellow prompts came out red or gray.
With ``--adversarial-retain`` the same grid also keeps the retain prompts unchanged under the attack's
tokens (``SemuConfig(adversarial_retain=True)``), into ``semu_gamma_robust_retain.json``
(``semu-gamma-robust-retain``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_semu_simu import write_dev_search

from concept_erase._io import atomic_write_json
from concept_erase.bench import _run, load_tuning, report, search
from concept_erase.bench.protocol import DEV_CONCEPTS, TEST_CONCEPTS

OUT = Path(__file__).parent / "results" / "semu_gamma.json"
OUT_SPECTRA = Path(__file__).parent / "results" / "semu_spectra.json"
GAMMAS = (0.9, 0.99, 0.999, 0.9999, 1.0)
# from the dev concepts' spectra (--spectra): 0.99 keeps 5-10 directions a layer, 0.999 9-64, 0.9999 13-98;
# the fourth configuration asks whether the smaller R of 0.999 wants the larger learning rate
GRID = [dict(gamma_cross_attention=0.99), dict(gamma_cross_attention=0.999), dict(gamma_cross_attention=0.9999),
        dict(gamma_cross_attention=0.999, learning_rate=1e-2)]
OUT_ROBUST = Path(__file__).parent / "results" / "semu_gamma_robust.json"
# --adversarial: the γ search's choice (checked against semu_gamma.json at run time) with robust SEMU's two
# settings searched before, adversarial_weight 1 (its default) and 0.3, each alone and inside the null space
# at the share E = 0.8 that the null-space searches chose
GAMMA_CHOSEN = dict(gamma_cross_attention=0.999, learning_rate=1e-2)
GRID_ROBUST = [{**GAMMA_CHOSEN, "adversarial": True, **extra}
               for extra in ({}, {"adversarial_weight": 0.3}, {"null_space": 0.8},
                             {"null_space": 0.8, "adversarial_weight": 0.3})]
OUT_ROBUST_RETAIN = Path(__file__).parent / "results" / "semu_gamma_robust_retain.json"
assert len(GRID) == len(GRID_ROBUST) == search.SEARCH_SIZE


def spectra_job(concepts: list[str], semu: dict) -> dict:
    """Per concept and layer: its shape and the ranks γ selects on G and on G⊥ (what SEMU decomposes),
    and per γ the trained share of the UNet, Σ r² over the layers."""
    from concept_erase import SemuConfig, world
    from concept_erase.concepts import load_preset
    from concept_erase.methods.semu import gradient_spectra, select_rank

    pipe = world.load_pipeline()
    total = sum(p.numel() for p in pipe.unet.parameters())
    config = SemuConfig(**semu)  # only steps 1-4 run: no training, no target pool
    out = {}
    for concept in concepts:
        spectra = gradient_spectra(pipe, load_preset(concept), config, progress=False)
        layers = {}
        for name, s in spectra.items():
            module = pipe.unet.get_submodule(name)
            layers[name] = {"shape": list(module.weight.shape[:2]),
                            "ranks_unprojected": [select_rank(s["unprojected"], g) for g in GAMMAS],
                            "ranks": [select_rank(s["decomposed"], g) for g in GAMMAS],
                            "unprojected_energy_top16": float((s["unprojected"][:16] ** 2).sum()
                                                              / (s["unprojected"] ** 2).sum())}
        shares = [sum(v["ranks"][i] ** 2 for v in layers.values()) / total for i in range(len(GAMMAS))]
        out[concept] = {"layers": layers, "trained_share": shares, "unet_parameters": total}
        print(f"{concept}: trained share at γ {GAMMAS}: " + " / ".join(f"{100 * x:.3f}%" for x in shares), flush=True)
    return out


def spectra_table(result: dict) -> str:
    gam = " / ".join(str(g) for g in GAMMAS)
    lines = [f"| concept | layer (out × in) | rank of G at γ = {gam} | rank of G⊥ (SEMU's) at γ = {gam} |",
             "|---|---|---|---|"]
    for concept, r in result.items():
        for name, v in r["layers"].items():
            lines.append(f"| {concept} | `{name}` ({v['shape'][0]} × {v['shape'][1]}) | "
                         f"{' / '.join(map(str, v['ranks_unprojected']))} | {' / '.join(map(str, v['ranks']))} |")
        lines.append(f"| {concept} | **trained share of the UNet** | | "
                     f"{' / '.join(f'{100 * x:.2f}%' for x in r['trained_share'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spectra", action="store_true",
                    help=f"only the per-layer ranks at γ {GAMMAS} (default --out results/{OUT_SPECTRA.name})")
    ap.add_argument("--adversarial", action="store_true",
                    help=f"search robust SEMU at the chosen γ (default --out results/{OUT_ROBUST.name})")
    ap.add_argument("--adversarial-retain", action="store_true",
                    help=f"with --adversarial: the same grid with adversarial_retain=True "
                         f"(default --out results/{OUT_ROBUST_RETAIN.name})")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.adversarial_retain and not args.adversarial:
        ap.error("--adversarial-retain goes with --adversarial")
    if args.adversarial:
        chosen = json.loads(OUT.read_text(encoding="utf-8"))["chosen"] if OUT.is_file() else None
        if chosen is None or any(chosen.get(k) != v for k, v in GAMMA_CHOSEN.items()):
            raise SystemExit(f"--adversarial builds on the γ search's choice {GAMMA_CHOSEN}, but {OUT.name} "
                             f"holds {chosen}: run the γ search first and update GAMMA_CHOSEN.")
        if args.adversarial_retain:
            write_dev_search([{**g, "adversarial_retain": True} for g in GRID_ROBUST],
                             Path(args.out or OUT_ROBUST_RETAIN))
        else:
            write_dev_search(GRID_ROBUST, Path(args.out or OUT_ROBUST))
        return
    if not args.spectra:
        write_dev_search(GRID, Path(args.out or OUT))
        return
    semu = dict(load_tuning()["methods"]["semu"]["chosen"])
    start = time.perf_counter()
    spectra = _run(spectra_job, [*DEV_CONCEPTS, *TEST_CONCEPTS], semu)
    result = {"semu": semu, "gammas": GAMMAS, "dev_concepts": DEV_CONCEPTS, "concepts": spectra,
              "seconds": time.perf_counter() - start}
    out = Path(args.out or OUT_SPECTRA)
    atomic_write_json(out, report.jsonable(result))
    print(spectra_table(spectra))
    print(f"{result['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
