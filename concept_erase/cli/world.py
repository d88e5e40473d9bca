"""``concept-erase world train | sample | eval``: the shipped shapes world."""

from __future__ import annotations

import json
import time


def add_world_parser(sub, help: str) -> None:
    w = sub.add_parser("world", help=help)
    wsub = w.add_subparsers(dest="world_command", required=True)
    wt = wsub.add_parser("train", help="train the world model from scratch (about 40 min on 2 CPU cores)")
    wt.add_argument("--out", required=True, help="a new directory (checked before training)")
    wt.add_argument("--overwrite", action="store_true", help="replace a world model already in --out (the old one "
                    "is kept until the new one is complete); a directory holding anything else is never replaced")
    wt.add_argument("--seed", type=int, default=0)
    wt.add_argument("--smoke", action="store_true", help="a few steps of a tiny model, to check the code runs")
    wt.add_argument("--quiet", action="store_true")
    wt.set_defaults(func=cmd_world_train)
    ws = wsub.add_parser("sample", help="write a PNG grid of samples (default: every colour x shape)")
    ws.add_argument("--prompt", nargs="+")
    ws.add_argument("-n", type=int, default=4, help="images per --prompt")
    ws.add_argument("--seed", type=int, default=0)
    ws.add_argument("--out", default="world-samples.png")
    ws.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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


def cmd_world_train(args) -> int:
    from ..world.train import WorldTrainConfig, train_world

    config = WorldTrainConfig.smoke() if args.smoke else WorldTrainConfig(seed=args.seed)
    t0 = time.perf_counter()
    out = train_world(args.out, config, progress=not args.quiet, overwrite=args.overwrite)
    print(f"world model written to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_world_sample(args) -> int:
    from .. import world
    from .._io import check_output_file, save_image_atomic
    from ..diffusion import generate_images
    from ..viz import image_grid

    check_output_file(args.out, overwrite=args.overwrite)
    if args.n < 1:
        from ..errors import InvalidConfigError

        raise InvalidConfigError(f"-n must be at least 1 but is {args.n}.")
    pipe = world.load_pipeline(args.device or "cpu", weights_dir=args.weights)
    if args.prompt:
        prompts = list(args.prompt)
        rows = [[p] * args.n for p in prompts]
    else:
        rows = [[f"a {c} {s}" for s in world.SHAPES] for c in world.COLOURS]
    flat = [p for r in rows for p in r]
    seeds = [args.seed + (i % args.n if args.prompt else 0) for i in range(len(flat))]
    t0 = time.perf_counter()
    images = generate_images(pipe, flat, seeds, batch_size=48, progress=not args.quiet, desc="sample",
                             **world.SAMPLING)
    dt = time.perf_counter() - t0
    it = iter(images)
    grid = image_grid([[next(it) for _ in r] for r in rows],
                      row_labels=[r[0] if args.prompt else r[0].split()[1] for r in rows],
                      col_labels=[] if args.prompt else list(world.SHAPES), cell=96,
                      label_width=170 if args.prompt else 60)
    save_image_atomic(grid, args.out)
    print(f"{len(flat)} images in {dt:.1f} s -> {args.out}")
    return 0


def cmd_world_eval(args) -> int:
    from .. import world
    from ..evaluation.world import fidelity_table, prompt_fidelity

    pipe = world.load_pipeline(args.device or "cpu", weights_dir=args.weights)
    report = prompt_fidelity(pipe, world.load_classifier(), images_per_prompt=args.images_per_prompt,
                             seed=args.seed, progress=not args.quiet)
    print(json.dumps(report, indent=2) if args.json else fidelity_table(report))
    return 0
