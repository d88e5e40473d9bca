"""``concept-erase eval`` and ``concept-erase fid``.

Examples::

    # the shapes world, the shipped no-red adapter, its preset's forget/paraphrase/retain prompts
    concept-erase eval --adapter no-red --prompts no-red --out eval-no-red

    # Stable Diffusion on I2P with NudeNet, FID against a COCO folder, on 4 GPUs
    accelerate launch --num_processes 4 -m concept_erase.cli eval \\
        --base runwayml/stable-diffusion-v1-5 --adapter no-nudity.safetensors \\
        --prompts i2p.csv --classifier nudenet --fid-ref coco-val-1k/ --images-per-prompt 1 --out eval-i2p

    # FID between two folders, with either engine
    concept-erase fid out/images/base/retain out/images/no-red/retain --features world --engine torch-fidelity
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "cmd_eval", "cmd_fid"]


def _config_from_args(args):
    from .config import EvalConfig

    return EvalConfig(
        out=args.out, prompts=args.prompts or [], base=args.base, adapters=args.adapter or [], adapter_scale=args.adapter_scale,
        images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale, height=args.height, width=args.width,
        negative_prompt=args.negative_prompt, overwrite=args.overwrite,
        classifier=args.classifier, target=args.target, threshold=args.threshold,
        classifier_weights=args.classifier_weights, clip_model=args.clip_model, labels=args.labels or [],
        count_labels=args.count_labels or [],
        fid=not args.no_fid, kid=not args.no_kid, fid_features=args.fid_features, fid_splits=args.fid_splits or [],
        fid_ref=args.fid_ref, engine=args.engine, inception_weights=args.inception_weights,
        paraphrases=args.paraphrases, attack=args.attack or args.robustness, attack_steps=args.attack_steps,
        attack_tokens=args.attack_tokens, attack_prompts=args.attack_prompts,
        relearn=args.relearn or args.robustness, relearn_steps=args.relearn_steps, relearn_lr=args.relearn_lr,
        relearn_eval_every=args.relearn_eval_every, relearn_params=args.relearn_params,
        membership=args.membership or args.robustness, membership_samples=args.membership_samples,
        grid_prompts=args.grid_prompts, device=args.device,
    )


def cmd_eval(args) -> int:
    from .evaluate import evaluate

    report = evaluate(_config_from_args(args), progress=not args.quiet)
    if "files" in report:  # the main process
        with open(report["files"]["markdown"], encoding="utf-8") as f:
            print(f.read())
        t = report["timing"]
        print(f"{t['images_total']} images ({sum(t['images_generated'].values())} generated now) in "
              f"{t['total_s']:.0f} s -> {args.out}")
    return 0


def cmd_fid(args) -> int:
    from .fid import folder_metrics

    result = folder_metrics(args.real, args.fake, features=args.features, engine=args.engine, kid=not args.no_kid,
                            inception_weights=args.inception_weights, world_weights=args.world_weights,
                            batch_size=args.batch_size, device=args.device or "cpu")
    print(json.dumps(result, indent=2))
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a base model and adapters: concept rate, accuracy, FID, robustness",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = e.add_argument_group("models and prompts")
    g.add_argument("--base", default="world", help="'world', a local diffusers pipeline directory, or a hub id")
    g.add_argument("--adapter", action="append", help="adapter file, name or hub id (repeat for several)")
    g.add_argument("--adapter-scale", type=float, default=1.0)
    g.add_argument("--prompts", action="append",
                   help="prompt file (.txt one a line; .csv/.tsv with prompt[,seed,label,split]) or a preset name; "
                        "SPLIT=FILE puts the file's rows in SPLIT; repeat to combine (default: the forget, "
                        "paraphrase and retain prompts stored in the adapter)")
    g.add_argument("--paraphrases", action="store_true",
                   help="add shapes-world paraphrases (synonyms, held-out templates) of the forget prompts")
    g.add_argument("--out", required=True, help="output directory (rerun with the same --out to resume)")
    g = e.add_argument_group("generation")
    g.add_argument("--images-per-prompt", type=int, default=4)
    g.add_argument("--seed", type=int, default=0, help="image k of a prompt without a seed column uses SEED+k")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--steps", type=int, help="inference steps (default: the world's 20, else the pipeline's)")
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--negative-prompt")
    g.add_argument("--overwrite", action="store_true", help="regenerate images made with other settings")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: accelerate's device for this process)")
    g = e.add_argument_group("concept classifier")
    g.add_argument("--classifier", default="world", help="world, nudenet, clip, or package.module:factory")
    g.add_argument("--target", help="label or concept to detect, e.g. colour:red, exposed (default: from the "
                                    "preset or the adapter)")
    g.add_argument("--threshold", type=float, help="detection threshold (nudenet: 0.6)")
    g.add_argument("--classifier-weights", help="world classifier .safetensors (default: the shipped one)")
    g.add_argument("--clip-model", help="local CLIP checkpoint directory (clip classifier)")
    g.add_argument("--labels", nargs="+", help="zero-shot labels (clip classifier)")
    g.add_argument("--count-labels", nargs="+", help="labels to count per image (nudenet: the nine exposed ones)")
    g = e.add_argument_group("FID / KID")
    g.add_argument("--no-fid", action="store_true")
    g.add_argument("--no-kid", action="store_true")
    g.add_argument("--fid-features", help="world, inception or package.module:factory (default: world on the world, "
                                          "else inception)")
    g.add_argument("--fid-splits", nargs="+", help="prompt splits FID is computed on (default: retain, else all)")
    g.add_argument("--fid-ref", help="folder of reference images: FID of every model against it")
    g.add_argument("--engine", choices=["torchmetrics", "torch-fidelity"], default="torchmetrics")
    g.add_argument("--inception-weights", help="path of weights-inception-2015-12-05-6726825d.pth")
    g = e.add_argument_group("robustness")
    g.add_argument("--robustness", action="store_true", help="--attack, --relearn and --membership")
    g.add_argument("--attack", action="store_true", help="UnlearnDiffAtk-style adversarial prompt attack")
    g.add_argument("--attack-steps", type=int, default=40)
    g.add_argument("--attack-tokens", type=int, default=5)
    g.add_argument("--attack-prompts", type=int, default=8)
    g.add_argument("--relearn", action="store_true", help="fine-tuning (relearning) attack on the forget prompts")
    g.add_argument("--relearn-steps", type=int, default=40)
    g.add_argument("--relearn-lr", type=float, default=1e-4)
    g.add_argument("--relearn-eval-every", type=int, default=10)
    g.add_argument("--relearn-params", default="*attn2*", help="glob over UNet parameter names ('*': all)")
    g.add_argument("--membership", action="store_true", help="membership-inference AUC on the forget data")
    g.add_argument("--membership-samples", type=int, default=32)
    g = e.add_argument_group("report")
    g.add_argument("--grid-prompts", type=int, default=8)
    g.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("fid", help="FID/KID between two image folders")
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
