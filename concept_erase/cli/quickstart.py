"""``concept-erase quickstart``."""

from __future__ import annotations

from pathlib import Path


def add_quickstart_parser(sub, help: str) -> None:
    q = sub.add_parser("quickstart", help=help, description="Erase a concept with SEMU from the shipped world "
                       "model (offline, CPU), reload the adapter, measure before/after and write a side-by-side "
                       "picture.")
    q.add_argument("--preset", default="no-red", help="world preset to erase (default: no-red)")
    q.add_argument("--out", default="concept-erase-quickstart", help="output directory")
    q.add_argument("--overwrite", action="store_true", help="write into an --out that holds other files")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quickstart)


def cmd_quickstart(args) -> int:
    from ..quickstart import run_quickstart

    run_quickstart(out_dir=Path(args.out), preset=args.preset, progress=not args.quiet, overwrite=args.overwrite)
    return 0
