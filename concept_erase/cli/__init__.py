"""The ``concept-erase`` command line: one module per command group over library functions.

``concept-erase --help`` and ``--version`` import nothing heavy: only the parser of the command
being run is built (its module imports what it needs), the others are listed by name and help.
Errors the tool raises on purpose exit with status 2 and one line on stderr; an error of the
operating system (disk full, permission denied) exits with status 1 and one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from typing import Iterable

from ..errors import ConceptEraseError
from ..version import __version__

__all__ = ["main", "build_parser", "COMMANDS", "plain_text"]

# command -> (module of this package that builds and runs it, one-line help), in --help order
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "erase a concept from the shipped world model and show before/after"),
    "erase": ("erase", "train an unlearning adapter (SEMU by default, or a peer method)"),
    "info": ("erase", "describe an adapter file"),
    "export": ("erase", "write an adapter in another key format"),
    "eval": ("eval", "evaluate a base model and adapters: concept rate, accuracy, FID, robustness"),
    "fid": ("eval", "FID/KID between two image folders"),
    "demo": ("demo", "open the side-by-side Gradio demo (original vs unlearned, same seed)"),
    "bench": ("bench", "every erasure method on the shapes world: quality vs cost"),
    "world": ("world", "the shipped shapes world: train, sample, eval"),
    "codebook": ("codebook", "train the codebook bottleneck of a base model (for --method codebook)"),
}

DESCRIPTION = ("Erase concepts from text-to-image diffusion models with SEMU adapters that load like LoRA "
               "weights. Run 'concept-erase COMMAND --help' for a command's options.")


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` text: reST literals (````x````, ```x```) and ``::`` markers become plain text."""
    doc = re.sub(r"``(.+?)``", r"\1", doc)
    doc = re.sub(r"`([^`\n]+)`", r"'\1'", doc)
    return doc.replace("::\n", ":\n")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``commands`` are built in full (default: all), the others only named."""
    full = set(COMMANDS) if commands is None else set(commands)
    p = argparse.ArgumentParser(prog="concept-erase", description=DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the progress bars and warnings "
                   "of diffusers and transformers (off otherwise)")
    p.add_argument("--version", action="version", version=f"concept-erase {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help) in COMMANDS.items():
        if name in full:
            getattr(importlib.import_module(f".{module}", __name__), f"add_{name}_parser")(sub, help)
        else:
            stub = sub.add_parser(name, help=help, add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        return args.func(args)
    except ConceptEraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, permissions, a file that vanished: the environment, not a bug
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}; files already written are complete", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; files already written are complete, nothing half-written was left", file=sys.stderr)
        return 130
