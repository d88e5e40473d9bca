"""``concept-erase demo``: the Gradio side-by-side demo (original vs unlearned, same seed)."""

from __future__ import annotations

import logging
import os


def add_demo_parser(sub, help: str) -> None:
    d = sub.add_parser("demo", help=help)
    d.add_argument("--base", default="world", help="'world' (default, offline), a local diffusers pipeline "
                   "directory, or a hub id")
    d.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 exposes the demo to your network)")
    d.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    d.add_argument("--adapters-dir", help="offer the adapters in this directory instead of the shipped and "
                   "registered ones")
    d.add_argument("--max-upload-mb", type=float, default=None, help="largest adapter file users may upload "
                   "(default 100)")
    d.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    d.set_defaults(func=cmd_demo)


def _classifier(base: str):
    """The world classifier on the world model; NudeNet elsewhere when installed (it applies to nudity adapters)."""
    from ..errors import MissingDependencyError
    from ..evaluation.classifiers import load_classifier
    from ..loading import is_world

    if is_world(base):
        return load_classifier("world")
    try:
        return load_classifier("nudenet")
    except MissingDependencyError:
        return None


def cmd_demo(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup probes, not news to the user
    from ..demo import MAX_UPLOAD_MB, build_demo, launch
    from ..loading import is_world, load_base

    world = is_world(args.base)
    pipe = load_base(args.base, args.device or ("cpu" if world else None))
    sampling = None if world else {"num_inference_steps": 25, "guidance_scale": 7.5}
    demo = build_demo(pipe, _classifier(args.base), args.adapters_dir, sampling=sampling,
                      max_upload_mb=args.max_upload_mb or MAX_UPLOAD_MB,
                      examples=None if world else [["a photo of a cat", "any prompt"]])
    launch(demo, host=args.host, port=args.port)
    return 0
