"""``concept-erase bench``."""

from __future__ import annotations


def add_bench_parser(sub, help: str) -> None:
    from ..methods import METHODS

    b = sub.add_parser("bench", help=help, description="Every registered erasure method on the shapes world, with "
                       "the same prompts, seeds and metrics; each run in a fresh process.")
    b.add_argument("--quick", action="store_true", help="one concept, short training: a smoke run (minutes)")
    b.add_argument("--out", default="bench", help="output directory (bench.json, bench.md, bench.png)")
    b.add_argument("--overwrite", action="store_true", help="write into an --out that holds other files")
    b.add_argument("--methods", nargs="+", choices=list(METHODS), help="methods to run (default: all)")
    b.add_argument("--concepts", nargs="+", help="world presets (default: no-red no-circle no-striped)")
    b.add_argument("--images-per-prompt", type=int)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ..bench import METHOD_ORDER, run_bench

    run_bench(args.out, quick=args.quick, methods=args.methods or METHOD_ORDER, concepts=args.concepts,
              images_per_prompt=args.images_per_prompt, progress=not args.quiet, overwrite=args.overwrite)
    return 0
