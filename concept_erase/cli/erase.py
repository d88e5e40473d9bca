"""``concept-erase erase``, ``info`` and ``export``: make an adapter, describe it, convert it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .._io import check_output_dir, check_output_file
from ..concepts import Concept, list_presets, load_preset
from ..config import BASE_CONFIG_HELP, MIXED_PRECISIONS, SAVE_PRECISIONS, add_arguments, values_from_args
from ..errors import InvalidConfigError, InvalidPromptError, OutputPathError


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
    e.add_argument("--base", default="world", help="'world', a local diffusers pipeline directory, a hub id, or a "
                   "single-file checkpoint (.safetensors, the original LDM layout of A1111/Civitai)")
    e.add_argument("--preset", help="a shipped preset (see --list-presets) or a preset JSON file")
    e.add_argument("--list-presets", action=_ListPresets, help="print the shipped presets (name, phrase, "
                   "description) and exit")
    e.add_argument("--forget", nargs="+", help="forget prompts")
    e.add_argument("--anchor", nargs="+", help="anchor prompt(s): one, or one per forget prompt")
    e.add_argument("--retain", nargs="+", help="retain prompts (optional)")
    e.add_argument("--name", help="concept name stored in the adapter")
    e.add_argument("--out", help="where to save (checked before training): a .safetensors file, or a directory "
                   "that gets the Hub layout (pytorch_lora_weights.safetensors + a model card README.md)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("--push-to-hub", metavar="REPO", help="also upload the adapter and its model card to the hub repo "
                   "REPO ('owner/name', created if needed; log in with 'hf auth login' or set HF_TOKEN)")
    e.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    e.add_argument("--revision", help="branch, tag or commit of a hub --base (default: its main branch)")
    e.add_argument("--variant", help="weight-file variant of --base, e.g. fp16 for *.fp16.safetensors")
    e.add_argument("--base-config", help=BASE_CONFIG_HELP)
    e.add_argument("--mixed-precision", choices=MIXED_PRECISIONS,
                   help="dtype of the frozen base model: no (float32), fp16 or bf16 (default: fp16 on CUDA, no on "
                   "the CPU, where fp16 is refused). The trained parameters and the optimiser state are float32 "
                   "either way, as in diffusers' training scripts")
    e.add_argument("--save-precision", choices=SAVE_PRECISIONS, default="fp32",
                   help="dtype of the tensors in the saved adapter (default: fp32)")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--set", nargs="+", metavar="KEY=VALUE",
                   help="any setting of the method's config by its field name, e.g. --set lamb=0.1 (UCE)")
    g = e.add_argument_group("method settings", "each applies to the methods whose config has it; defaults are "
                             "the method's own (see the config classes in concept_erase.methods)")
    add_arguments(g, *_config_classes())
    e.set_defaults(func=cmd_erase)


class _ListPresets(argparse.Action):
    """``--list-presets``: print every shipped preset and exit (like ``--version``, before the required flags)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        rows = []
        for name in list_presets():
            concept = load_preset(name)
            summary = concept.description.split(". ")[0].rstrip(".")  # the first sentence
            rows.append((name, concept.phrase or "-", summary))
        width = [max(len(r[i]) for r in [("preset", "phrase"), *rows]) for i in range(2)]
        print(f"{'preset':<{width[0]}}  {'phrase':<{width[1]}}  description")
        for name, phrase, summary in rows:
            print(f"{name:<{width[0]}}  {phrase:<{width[1]}}  {summary}")
        parser.exit()


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
    from ..adapter import UnlearningAdapter
    from ..loading import load_base
    from ..methods import get_method

    method = get_method(args.method)
    given = {}
    for cls in _config_classes():
        given.update(values_from_args(args, cls))
    settings = {**given, **_parse_settings(args.set)}
    config = method.config(**settings)  # every setting checked before the model is loaded
    concept = _concept_from_args(args)
    out = _check_destination(args)  # before any training
    pipe = load_base(args.base, args.device, mixed_precision=args.mixed_precision, revision=args.revision,
                     variant=args.variant, base_config=args.base_config)
    adapter = method.erase(pipe, concept, config, progress=not args.quiet)
    if args.save_precision != "fp32" and isinstance(adapter, UnlearningAdapter):  # trained in float32, stored as asked
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.save_precision]
        adapter = dataclasses.replace(adapter, tensors={k: v.to(dtype) for k, v in adapter.tensors.items()})
    _save(adapter, out, args)
    return 0


# --out ending in one of these is meant as a file (and must be .safetensors); anything else is a
# directory (names such as "no-red-v1.5" have a suffix too)
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".safetensor", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def _check_destination(args) -> Path | None:
    """``--out`` / ``--push-to-hub`` checked before any training: a ``.safetensors`` path is a file,
    anything else a directory for :meth:`UnlearningAdapter.save_pretrained`."""
    from ..hub import WEIGHT_NAME, is_offline, looks_like_hub_id

    if not args.out and not args.push_to_hub:
        raise OutputPathError("Give --out FILE.safetensors or --out DIRECTORY (or --push-to-hub REPO).")
    if args.push_to_hub is not None:
        if not looks_like_hub_id(args.push_to_hub):
            raise InvalidConfigError(f"--push-to-hub expects a hub repo id 'owner/name', but is {args.push_to_hub!r}.")
        if is_offline():
            raise InvalidConfigError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set. Unset it, or save "
                                     "with --out DIRECTORY and upload later with `hf upload REPO DIRECTORY`.")
    if not args.out:
        return None
    if Path(args.out).suffix.lower() in _WEIGHT_FILE_SUFFIXES:  # a file; other suffixes must be .safetensors
        return check_output_file(args.out, overwrite=args.overwrite, suffix=".safetensors")
    return check_output_dir(args.out, overwrite=args.overwrite, owned=(WEIGHT_NAME,), what="a saved adapter")


def _save(adapter, out: Path | None, args) -> None:
    if out is not None and out.suffix == ".safetensors":
        _print_summary(adapter, adapter.save(out))
    elif out is not None:
        folder = adapter.save_pretrained(out, repo_id=args.push_to_hub, overwrite=True)  # --out was checked above
        _print_summary(adapter, folder / "pytorch_lora_weights.safetensors")
        print(f"model card    {folder / 'README.md'}")
    else:
        print(adapter.summary())
    if args.push_to_hub:
        print(f"uploaded      {adapter.push_to_hub(args.push_to_hub)}")


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
_EXPORT_FORMATS = {
    "kohya": "lora_unet_* keys with one alpha for every layer and kohya ss_* / modelspec.* metadata: for A1111 / "
             "Forge, ComfyUI (LoraLoader), kohya sd-scripts, Civitai, and diffusers",
    "peft": "unet.<module>.lora_A/B keys, no alpha: for diffusers' load_lora_weights and PEFT",
}


def add_export_parser(sub, help: str) -> None:
    x = sub.add_parser("export", help=help, description=(
        "Convert an adapter, or any UNet LoRA file diffusers reads (PEFT, diffusers training-script or kohya keys), "
        "to another key format. Each format gives the same images as the input in the loaders it is for, whatever "
        "the layers' ranks. For ComfyUI use --format kohya."))
    x.add_argument("file", help="an adapter or UNet LoRA .safetensors file")
    x.add_argument("--format", choices=list(_EXPORT_FORMATS), default="kohya",
                   help="; ".join(f"{k}: {v}" for k, v in _EXPORT_FORMATS.items()) + " (default: kohya)")
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
    else:  # the keys are PEFT's now, whatever the input's were
        metadata = {k: v for k, v in adapter.metadata.items() if k != "source_format"}
        UnlearningAdapter(adapter.tensors, metadata).save(out)
    print(f"wrote {out} ({args.format} keys, {len(adapter.modules)} layers, ranks "
          f"{min(adapter.ranks.values())}..{max(adapter.ranks.values())}, {out.stat().st_size / 1024:.1f} KiB)")
    return 0
