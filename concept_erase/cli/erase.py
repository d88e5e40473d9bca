"""``concept-erase erase``, ``info`` and ``export``: make an adapter, describe it, convert it."""

from __future__ import annotations

import json
from pathlib import Path

from .._io import check_output_file
from ..concepts import Concept, load_preset
from ..config import add_arguments, values_from_args
from ..errors import InvalidConfigError, InvalidPromptError


def _print_summary(adapter, path: Path) -> None:
    size = path.stat().st_size
    print(adapter.summary())
    print(f"file          {path} ({size / 1024:.1f} KiB)" if size < 1 << 20 else
          f"file          {path} ({size / (1 << 20):.2f} MiB)")


def _config_classes() -> list[type]:
    from ..methods import METHODS

    return list(dict.fromkeys(m.config_class for m in METHODS.values()))


# ---------------------------------------------------------------- erase
def add_erase_parser(sub, help: str) -> None:
    from ..methods import METHODS

    e = sub.add_parser("erase", help=help, description=(
        "Train an unlearning adapter from prompts alone and save it as one safetensors file. "
        f"Methods: {', '.join(f'{n} ({m.summary})' for n, m in METHODS.items())}."))
    e.add_argument("--method", default="semu", choices=list(METHODS), help="erasure method (default: semu)")
    e.add_argument("--base", default="world", help="'world', a local diffusers pipeline directory, or a hub id")
    e.add_argument("--preset", help="a named preset (see `concept_erase.list_presets()`) or a preset JSON file")
    e.add_argument("--forget", nargs="+", help="forget prompts")
    e.add_argument("--anchor", nargs="+", help="anchor prompt(s): one, or one per forget prompt")
    e.add_argument("--retain", nargs="+", help="retain prompts (optional)")
    e.add_argument("--name", help="concept name stored in the adapter")
    e.add_argument("--out", required=True, help="output .safetensors file (checked before training)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--set", nargs="+", metavar="KEY=VALUE",
                   help="any setting of the method's config by its field name, e.g. --set lamb=0.1 (UCE)")
    g = e.add_argument_group("method settings", "each applies to the methods whose config has it; defaults are "
                             "the method's own (see the config classes in concept_erase.methods)")
    add_arguments(g, *_config_classes())
    e.set_defaults(func=cmd_erase)


def _parse_settings(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidConfigError(f"--set expects KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _concept_from_args(args):
    if args.preset:
        concept = load_preset(args.preset)
        if args.retain:
            concept.retain = list(args.retain)
        return concept
    if not args.forget or not args.anchor:
        raise InvalidPromptError("Give --preset NAME, or both --forget PROMPT [...] and --anchor PROMPT [...].")
    return Concept(name=args.name or args.forget[0], forget=args.forget, anchor=args.anchor, retain=args.retain or [])


def cmd_erase(args) -> int:
    from ..loading import load_base
    from ..methods import get_method

    method = get_method(args.method)
    given = {}
    for cls in _config_classes():
        given.update(values_from_args(args, cls))
    settings = {**given, **_parse_settings(args.set)}
    config = method.config(**settings)  # every setting checked before the model is loaded
    concept = _concept_from_args(args)
    out = check_output_file(args.out, overwrite=args.overwrite, suffix=".safetensors")  # before any training
    pipe = load_base(args.base, args.device)
    adapter = method.erase(pipe, concept, config, progress=not args.quiet)
    _print_summary(adapter, adapter.save(out))
    return 0




# ---------------------------------------------------------------- info
def add_info_parser(sub, help: str) -> None:
    i = sub.add_parser("info", help=help)
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="every metadata field, as JSON")
    i.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from ..adapter import UnlearningAdapter
    from ..codebook import CodebookEdit, is_codebook_file

    if is_codebook_file(args.file):  # a codebook erasure (CodeUnlearn), not a LoRA
        edit = CodebookEdit.load(args.file)
        print(json.dumps(edit.metadata, indent=2, sort_keys=True) if args.json else edit.summary())
        return 0
    adapter = UnlearningAdapter.load(args.file)
    if args.json:
        print(json.dumps({"metadata": adapter.metadata, "ranks": adapter.ranks,
                          "stored_parameters": adapter.num_parameters}, indent=2, sort_keys=True))
    else:
        _print_summary(adapter, Path(args.file))
    return 0


# ---------------------------------------------------------------- export
def add_export_parser(sub, help: str) -> None:
    x = sub.add_parser("export", help=help)
    x.add_argument("file")
    x.add_argument("--format", choices=["kohya", "peft"], default="kohya")
    x.add_argument("--out", help="output file (default: FILE.<format>.safetensors)")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..adapter import UnlearningAdapter

    src = Path(args.file)
    out = check_output_file(args.out or src.with_name(f"{src.stem}.{args.format}.safetensors"),
                            overwrite=args.overwrite, suffix=".safetensors")
    if out.resolve() == src.resolve():
        raise InvalidConfigError(f"--out {str(out)!r} is the file being exported; choose another path.")
    adapter = UnlearningAdapter.load(args.file)
    if args.format == "kohya":
        adapter.save_kohya(out)
    else:
        adapter.save(out)
    print(f"wrote {out} ({args.format} keys, {out.stat().st_size / 1024:.1f} KiB)")
    return 0
