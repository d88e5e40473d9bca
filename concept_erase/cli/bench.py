"""``concept-erase bench``."""

from __future__ import annotations


def add_bench_parser(sub, help: str) -> None:
    from ..methods import METHODS

    b = sub.add_parser(
        "bench", help=help,
        description="Every registered erasure method on the shapes world under one protocol: configurations tuned "
                    "on dev concepts (--tune), then tested on held-out prompts of the test concepts with several "
                    "seeds, trade-off curves, SEMU ablations and robustness checks; each run in a fresh process.")
    b.add_argument("--quick", action="store_true",
                   help="a smoke run of the whole path (one concept, two seeds, the tuned configurations with short "
                        "training): minutes, not the README's numbers; with --tune, a quick search on one dev concept")
    b.add_argument("--tune", action="store_true",
                   help="search every method's grid on the dev concepts and write the chosen configurations to "
                        "--tuning-out (long: see the README), instead of benchmarking")
    b.add_argument("--tuning", help="tuning file to test with (default: the repository's "
                                    "benchmarks/results/tuning.json)")
    b.add_argument("--tuning-out", default="tuning.json", help="where --tune writes (default: tuning.json)")
    b.add_argument("--out", default="bench", help="output directory (bench.json, bench.md, curve-*.png)")
    b.add_argument("--overwrite", action="store_true", help="write into an --out that holds other files")
    b.add_argument("--methods", nargs="+", choices=list(METHODS), help="methods to run (default: all)")
    b.add_argument("--concepts", nargs="+", help="test concepts (default: no-red no-circle no-striped)")
    b.add_argument("--seeds", nargs="+", type=int, help="training and image seeds (default: 0 1 2)")
    b.add_argument("--no-ablations", action="store_true", help="skip SEMU's ablations")
    b.add_argument("--no-robustness", action="store_true", help="skip the attack, relearning and membership checks")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ..bench import METHOD_ORDER, run_bench, run_tuning

    methods = args.methods or METHOD_ORDER
    if args.tune:
        run_tuning(args.tuning_out, quick=args.quick, methods=methods, progress=not args.quiet,
                   overwrite=args.overwrite)
        return 0
    run_bench(args.out, quick=args.quick, methods=methods, concepts=args.concepts, seeds=args.seeds,
              tuning=args.tuning, ablations=not args.no_ablations, robustness=not args.no_robustness,
              progress=not args.quiet, overwrite=args.overwrite)
    return 0
