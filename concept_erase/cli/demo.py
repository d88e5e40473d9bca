"""``concept-erase demo``: the Gradio side-by-side demo (original vs unlearned, same seed)."""

from __future__ import annotations

import logging
import os

from ..config import BASE_CONFIG_HELP


def add_demo_parser(sub, help: str) -> None:
    d = sub.add_parser("demo", help=help)
    d.add_argument("--base", default="world", help="'world' (default, offline), a local diffusers pipeline "
                   "directory, a hub id, or a single-file checkpoint (.safetensors)")
    d.add_argument("--base-config", help=BASE_CONFIG_HELP)
    d.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 exposes the demo to your network)")
    d.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    d.add_argument("--adapters-dir", help="offer the adapters in this directory instead of the shipped and "
                   "registered ones")
    u = d.add_argument_group("uploads", "uploaded adapters live in the server's memory until their session closes "
                             "or goes idle; these bound what all sessions together may hold")
    u.add_argument("--max-upload-mb", type=float, default=None, help="largest adapter file (default 100)")
    u.add_argument("--uploads-per-session", type=int, default=None, help="uploads one session may hold (default 4)")
    u.add_argument("--upload-budget-mb", type=float, default=None, help="memory for the uploads of all sessions "
                   "together (default 400)")
    u.add_argument("--max-uploads", type=int, default=None, help="uploads all sessions together may hold (default 16)")
    u.add_argument("--max-rank", type=int, default=None, help="largest LoRA rank accepted (default 1024; any rank "
                   "above min(in, out) of its layer is always refused)")
    u.add_argument("--session-ttl", type=float, default=None, help="seconds a session may stay idle before its "
                   "uploads are dropped (default 1800)")
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
    from ..demo import UploadLimits, build_demo, launch
    from ..loading import is_world, load_base

    given = {"max_file_mb": args.max_upload_mb, "max_per_session": args.uploads_per_session,
             "max_total_mb": args.upload_budget_mb, "max_total": args.max_uploads, "max_rank": args.max_rank,
             "session_ttl": args.session_ttl}
    limits = UploadLimits(**{k: v for k, v in given.items() if v is not None})  # checked before the model loads
    world = is_world(args.base)
    pipe = load_base(args.base, args.device or ("cpu" if world else None), base_config=args.base_config)
    sampling = None if world else {"num_inference_steps": 25, "guidance_scale": 7.5}
    demo = build_demo(pipe, _classifier(args.base), args.adapters_dir, sampling=sampling, limits=limits,
                      examples=None if world else [["a photo of a cat", "any prompt"]])
    launch(demo, host=args.host, port=args.port)
    return 0
