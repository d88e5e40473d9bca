"""The ``concept-erase`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import ConceptEraseError

logger = logging.getLogger("concept_erase")


# ---------------------------------------------------------------- helpers
def load_base(base: str, device: str | None = None):
    """``"world"`` (the shipped model), a local pipeline directory or a hub id -> pipeline on ``device``."""
    import torch

    from . import world

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if base in ("world", "", None):
        return world.load_pipeline(device)
    from diffusers import DiffusionPipeline

    from .errors import WeightsNotFoundError

    path = Path(base).expanduser()
    looks_like_path = base.startswith(("/", ".", "~")) or base.count("/") != 1
    if path.exists() and not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(f"--base {base!r} is a path but holds no model_index.json (not a diffusers pipeline).")
    if not path.exists() and looks_like_path:
        raise WeightsNotFoundError(
            f"--base {base!r} is not an existing directory, nor a hub id of the form 'owner/name'. Pass 'world', a "
            "local diffusers pipeline directory, or a hub id."
        )
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else base, torch_dtype=dtype,
                                                 safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(
            f"Could not load --base {base!r}: {e.__class__.__name__}: {str(e)[:300]}. Offline? Set HF_HUB_OFFLINE=0 "
            "or download the pipeline with `huggingface-cli download` and pass its directory."
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _concept_from_args(args):
    from .concepts import Concept, load_preset

    if args.preset:
        concept = load_preset(args.preset)
        if args.retain:
            concept.retain = list(args.retain)
        return concept
    if not args.forget or not args.anchor:
        raise ConceptEraseError("Give --preset NAME, or both --forget PROMPT [...] and --anchor PROMPT [...].")
    return Concept(name=args.name or args.forget[0], forget=args.forget, anchor=args.anchor, retain=args.retain or [])


def _semu_config(args):
    from .semu import SemuConfig

    keys = ("steps", "learning_rate", "gamma", "gamma_cross_attention", "num_forget_images", "num_retain_images",
            "sample_steps", "batch_size", "seed")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "target_modules", None):
        overrides["target_modules"] = tuple(args.target_modules)
    if getattr(args, "objective", None):
        overrides["objective"] = args.objective
    return SemuConfig(**overrides)


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.2f} MiB"


# ---------------------------------------------------------------- commands
def _parse_settings(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConceptEraseError(f"--set expects KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def cmd_erase(args) -> int:
    from .methods import erase_with

    concept = _concept_from_args(args)
    settings = _parse_settings(args.set)
    if args.method == "semu":
        config = _semu_config(args)
        overrides = settings
    else:
        config, overrides = None, settings
    pipe = load_base(args.base, args.device)
    adapter = erase_with(args.method, pipe, concept, progress=not args.quiet, config=config, **overrides)
    out = adapter.save(args.out)
    print(adapter.summary())
    print(f"file          {out} ({_file_size(out)})")
    return 0


def cmd_info(args) -> int:
    from .adapter import UnlearningAdapter

    adapter = UnlearningAdapter.load(args.file)
    if args.json:
        print(json.dumps({"metadata": adapter.metadata, "ranks": adapter.ranks,
                          "stored_parameters": adapter.num_parameters}, indent=2, sort_keys=True))
    else:
        print(adapter.summary())
        print(f"file          {args.file} ({_file_size(Path(args.file))})")
    return 0


def cmd_export(args) -> int:
    from .adapter import UnlearningAdapter

    adapter = UnlearningAdapter.load(args.file)
    src = Path(args.file)
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}.{args.format}.safetensors")
    if args.format == "kohya":
        adapter.save_kohya(out)
    else:
        adapter.save(out)
    print(f"wrote {out} ({args.format} keys, {_file_size(out)})")
    return 0


def cmd_world_train(args) -> int:
    from .world.train import WorldTrainConfig, train_world

    config = WorldTrainConfig.smoke() if args.smoke else WorldTrainConfig(seed=args.seed)
    t0 = time.perf_counter()
    out = train_world(args.out, config, progress=not args.quiet)
    print(f"world model written to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_world_sample(args) -> int:
    from . import world
    from ._io import save_image_atomic
    from .sampling import generate
    from .viz import image_grid

    pipe = world.load_pipeline(args.device or "cpu", weights_dir=args.weights)
    if args.prompt:
        prompts = list(args.prompt)
        rows = [[p] * args.n for p in prompts]
    else:
        rows = [[f"a {c} {s}" for s in world.SHAPES] for c in world.COLOURS]
    flat = [p for r in rows for p in r]
    seeds = [args.seed + (i % args.n if args.prompt else 0) for i in range(len(flat))]
    t0 = time.perf_counter()
    images = generate(pipe, flat, seeds, batch_size=48, progress=not args.quiet, desc="sample", **world.SAMPLING)
    dt = time.perf_counter() - t0
    it = iter(images)
    grid = image_grid([[next(it) for _ in r] for r in rows],
                      row_labels=[r[0] if args.prompt else r[0].split()[1] for r in rows],
                      col_labels=[] if args.prompt else list(world.SHAPES), cell=96, label_width=170 if args.prompt else 60)
    save_image_atomic(grid, args.out)
    print(f"{len(flat)} images in {dt:.1f} s -> {args.out}")
    return 0


def cmd_world_eval(args) -> int:
    from . import world
    from .world.evaluate import fidelity_table, prompt_fidelity

    pipe = world.load_pipeline(args.device or "cpu", weights_dir=args.weights)
    report = prompt_fidelity(pipe, world.load_classifier(), images_per_prompt=args.images_per_prompt,
                             seed=args.seed, progress=not args.quiet)
    print(json.dumps(report, indent=2) if args.json else fidelity_table(report))
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart

    run_quickstart(out_dir=Path(args.out), preset=args.preset, progress=not args.quiet)
    return 0


def cmd_bench(args) -> int:
    from .bench import METHOD_ORDER, run_bench

    run_bench(args.out, quick=args.quick, methods=args.methods or METHOD_ORDER, concepts=args.concepts,
              images_per_prompt=args.images_per_prompt, progress=not args.quiet)
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="concept-erase", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="erase a concept from the shipped world model and show before/after")
    q.add_argument("--preset", default="no-red", help="world preset to erase (default: no-red)")
    q.add_argument("--out", default="concept-erase-quickstart", help="output directory")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_quickstart)

    e = sub.add_parser("erase", help="train an unlearning adapter (SEMU by default, or a peer method)")
    e.add_argument("--method", default="semu",
                   choices=["semu", "esd-x", "esd-u", "uce", "gradient-ascent", "task-vector"])
    e.add_argument("--set", nargs="+", metavar="KEY=VALUE",
                   help="any setting of the method's config, e.g. --set iterations=100 (ESD) lamb=0.1 (UCE)")
    e.add_argument("--base", default="world", help="'world', a local diffusers pipeline directory, or a hub id")
    e.add_argument("--preset", help="a named preset (see --list-presets) or a preset JSON file")
    e.add_argument("--forget", nargs="+", help="forget prompts")
    e.add_argument("--anchor", nargs="+", help="anchor prompt(s): one, or one per forget prompt")
    e.add_argument("--retain", nargs="+", help="retain prompts (optional)")
    e.add_argument("--name", help="concept name stored in the adapter")
    e.add_argument("--out", required=True, help="output .safetensors file")
    e.add_argument("--steps", type=int, help="SEMU settings (for other methods use --set)")
    e.add_argument("--learning-rate", type=float)
    e.add_argument("--gamma", type=float, help="explained-variance threshold outside cross-attention")
    e.add_argument("--gamma-cross-attention", type=float, help="γ on attn2 layers (default 1.0)")
    e.add_argument("--num-forget-images", type=int, help="forget images the base model generates (default 32)")
    e.add_argument("--num-retain-images", type=int, help="retain images the base model generates (default 32)")
    e.add_argument("--sample-steps", type=int, help="sampler steps when generating those images (default 20)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--target-modules", nargs="+", help="glob patterns of UNet module names")
    e.add_argument("--objective", choices=["relabel", "esd", "gradient_ascent"])
    e.add_argument("--seed", type=int)
    e.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_erase)

    i = sub.add_parser("info", help="describe an adapter file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="write an adapter in another key format")
    x.add_argument("file")
    x.add_argument("--format", choices=["kohya", "peft"], default="kohya")
    x.add_argument("--out", help="output file (default: FILE.<format>.safetensors)")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="every erasure method on the shapes world: quality vs cost")
    b.add_argument("--quick", action="store_true", help="one concept, short training: a smoke run (minutes)")
    b.add_argument("--out", default="bench", help="output directory (bench.json, bench.md, bench.png)")
    b.add_argument("--methods", nargs="+", choices=["semu", "esd-x", "esd-u", "uce", "gradient-ascent", "task-vector"])
    b.add_argument("--concepts", nargs="+", help="world presets (default: no-red no-circle no-striped)")
    b.add_argument("--images-per-prompt", type=int)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    w = sub.add_parser("world", help="the shipped shapes world: train, sample, eval")
    wsub = w.add_subparsers(dest="world_command", required=True)
    wt = wsub.add_parser("train", help="train the world model from scratch (about 40 min on 2 CPU cores)")
    wt.add_argument("--out", required=True)
    wt.add_argument("--seed", type=int, default=0)
    wt.add_argument("--smoke", action="store_true", help="a few steps of a tiny model, to check the code runs")
    wt.add_argument("--quiet", action="store_true")
    wt.set_defaults(func=cmd_world_train)
    ws = wsub.add_parser("sample", help="write a PNG grid of samples (default: every colour x shape)")
    ws.add_argument("--prompt", nargs="+")
    ws.add_argument("-n", type=int, default=4, help="images per --prompt")
    ws.add_argument("--seed", type=int, default=0)
    ws.add_argument("--out", default="world-samples.png")
    ws.add_argument("--weights", help="a world model directory (default: the shipped one)")
    ws.add_argument("--device")
    ws.add_argument("--quiet", action="store_true")
    ws.set_defaults(func=cmd_world_sample)
    we = wsub.add_parser("eval", help="prompt fidelity of the world model, judged by its classifier")
    we.add_argument("--images-per-prompt", type=int, default=4)
    we.add_argument("--seed", type=int, default=0)
    we.add_argument("--json", action="store_true")
    we.add_argument("--weights")
    we.add_argument("--device")
    we.add_argument("--quiet", action="store_true")
    we.set_defaults(func=cmd_world_eval)
    # subcommands that live beside the code they drive
    from .evaluation.cli import add_parser as add_eval_parser
    from .demo_cli import add_parser as add_demo_parser

    add_eval_parser(sub)
    add_demo_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        return args.func(args)
    except ConceptEraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files already written are complete, nothing half-written was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
