"""``concept-erase eval`` and ``concept-erase fid``.

Examples::

    # the shapes world, the shipped no-red adapter, its preset's forget/paraphrase/retain prompts
    concept-erase eval --adapter no-red --prompts no-red --out eval-no-red

    # Stable Diffusion on I2P with NudeNet, FID against a COCO folder, on 4 GPUs
    accelerate launch --num_processes 4 -m concept_erase.cli eval \\
        --base runwayml/stable-diffusion-v1-5 --adapter no-nudity.safetensors \\
        --prompts i2p.csv --classifier nudenet --fid-ref coco-val-1k/ --images-per-prompt 1 --out eval-i2p

    # CLIP score (prompt-image alignment) with a local checkpoint, fetched once where there is network:
    #   hf download openai/clip-vit-large-patch14 --local-dir clip-vit-large-patch14
    concept-erase eval --adapter no-red --prompts no-red --clip-model clip-vit-large-patch14 --out eval-no-red

    # two processes on a machine without GPUs (`--cpu` alone starts one process unless MPI is set up)
    accelerate launch --multi_gpu --num_processes 2 -m concept_erase.cli eval --adapter no-red --prompts no-red \\
        --out eval-no-red

    # robustness: paraphrases, adversarial prompts, relearning, membership inference
    concept-erase eval --adapter no-red --prompts no-red --paraphrases --robustness --out eval-no-red

    # FID between two folders, with either engine
    concept-erase fid out/images/base/retain out/images/no-red/retain --features world --engine torch-fidelity

Writes into --out: images/<model>/<split>/*.png (rerun the same command to resume; finished images
are never generated again), scores/<model>.csv (one line per image), report.json (every number,
the settings and library versions), report.md, grid_<split>.png and metrics.png. Under
`accelerate launch` the images are shared out between the processes, the metrics are reduced
across them (the same numbers as one process) and the main process writes the report; the
robustness attacks run on the main process.
"""

from __future__ import annotations

import argparse
import json

from ..config import add_arguments, values_from_args

__all__ = ["add_eval_parser", "add_fid_parser", "cmd_eval", "cmd_fid"]


def _config_from_args(args):
    from ..evaluation.config import EvalConfig

    values = values_from_args(args, EvalConfig)
    if args.robustness:
        values.update(attack=True, relearn=True, membership=True)
    return EvalConfig(**values)


def cmd_eval(args) -> int:
    from ..evaluation.evaluate import evaluate

    report = evaluate(_config_from_args(args), progress=not args.quiet)
    if "files" in report:  # the main process
        with open(report["files"]["markdown"], encoding="utf-8") as f:
            print(f.read())
        t = report["timing"]
        print(f"{t['images_total']} images ({sum(t['images_generated'].values())} generated now) in "
              f"{t['total_s']:.0f} s -> {args.out}")
    return 0


def cmd_fid(args) -> int:
    from ..evaluation.fid import folder_metrics

    result = folder_metrics(args.real, args.fake, features=args.features, engine=args.engine, kid=not args.no_kid,
                            inception_weights=args.inception_weights, world_weights=args.world_weights,
                            batch_size=args.batch_size, device=args.device or "cpu")
    print(json.dumps(result, indent=2))
    return 0


def add_eval_parser(sub, help: str) -> None:
    from ..evaluation.config import EvalConfig

    from . import plain_text

    e = sub.add_parser("eval", help=help, description=plain_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(e, EvalConfig)
    e.add_argument("--robustness", action="store_true", help="--attack, --relearn and --membership")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)


def add_fid_parser(sub, help: str) -> None:
    f = sub.add_parser("fid", help=help)
    f.add_argument("real")
    f.add_argument("fake")
    f.add_argument("--features", default="world", help="world, inception or package.module:factory")
    f.add_argument("--engine", choices=["torchmetrics", "torch-fidelity"], default="torchmetrics")
    f.add_argument("--no-kid", action="store_true")
    f.add_argument("--inception-weights")
    f.add_argument("--world-weights", help="world classifier .safetensors")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--device")
    f.set_defaults(func=cmd_fid)
