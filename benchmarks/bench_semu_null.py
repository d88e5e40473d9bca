"""SEMU with the null-space constraint, tuned under the benchmark protocol on the dev concepts.

    python benchmarks/bench_semu_null.py                # the dev search; then bench_robust.py --variants ... semu-null
    python benchmarks/bench_semu_null.py --adversarial  # robust SEMU in the null space; then ... semu-null-robust

``SemuConfig(null_space=E)`` removes from each cross-attention key/value layer's forget gradient the
principal directions holding a share E of the energy of the retain prompts' and the empty prompt's
text embeddings, before the SVD ("AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models", arXiv 2410.02355; "SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion
Models", arXiv 2503.07392). Those layers see only text embeddings, so the retain prompts and the
unconditional branch of guidance then reach the adapter only through the share 1 − E of their energy.

Like every method of the benchmark the variant gets :data:`GRID` (``bench.search.SEARCH_SIZE``
configurations, on top of SEMU's tuned ones) on the dev concepts and the benchmark's selection rule
(``bench.search.SELECTION_RULE``). The grid is one axis, the share E: a larger E closes more
directions, so R needs larger entries in the directions left, where held-out prompts still have some
energy. Writes ``benchmarks/results/semu_null.json``, whose chosen configuration
``benchmarks/bench_robust.py`` uses for its ``semu-null`` variant on the test concepts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_semu_simu import write_dev_search

from concept_erase.bench import search

OUT = Path(__file__).parent / "results" / "semu_null.json"
OUT_ROBUST = Path(__file__).parent / "results" / "semu_null_robust.json"
GRID = [dict(null_space=0.8), dict(null_space=0.9), dict(null_space=0.95), dict(null_space=0.99)]
# --adversarial: robust SEMU (the inner attack) inside the null space, which guards the retain prompts that
# robust SEMU alone lost (README); its adversarial_weight 0.3 was the other setting of robust SEMU's search
GRID_ROBUST = [dict(adversarial=True, null_space=0.8), dict(adversarial=True, null_space=0.9),
               dict(adversarial=True, null_space=0.95), dict(adversarial=True, null_space=0.8, adversarial_weight=0.3)]
assert len(GRID) == len(GRID_ROBUST) == search.SEARCH_SIZE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adversarial", action="store_true",
                    help=f"search GRID_ROBUST instead: robust SEMU (adversarial=True) in the null space "
                         f"(default --out results/{OUT_ROBUST.name})")
    ap.add_argument("--out")
    args = ap.parse_args()
    grid, out = (GRID_ROBUST, OUT_ROBUST) if args.adversarial else (GRID, OUT)
    write_dev_search(grid, Path(args.out or out))


if __name__ == "__main__":
    main()
