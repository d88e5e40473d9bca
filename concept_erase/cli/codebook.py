"""``concept-erase codebook train``: the one-off codebook of a base model (CodeUnlearn, arXiv 2410.10866)."""

from __future__ import annotations

from ..config import BASE_CONFIG_HELP


def add_codebook_parser(sub, help: str) -> None:
    from ..config import add_arguments
    from ..methods.codebook import CodebookTrainingConfig

    c = sub.add_parser("codebook", help=help)
    csub = c.add_subparsers(dest="codebook_command", required=True)
    t = csub.add_parser("train", help="train the codebook bottleneck of a base model once (then 'erase --method "
                        "codebook --codebook FILE')", description="Fit the codebook bottleneck to the text encoder's "
                        "embeddings of a prompt corpus. For --base world the corpus is the world's own captions.")
    t.add_argument("--base", default="world", help="'world', a local diffusers pipeline directory, a hub id or a "
                   "single-file checkpoint (.safetensors)")
    t.add_argument("--base-config", help=BASE_CONFIG_HELP)
    t.add_argument("--prompts", help="text file, one prompt a line (required unless --base world)")
    t.add_argument("--heldout", help="text file of held-out prompts: the reconstruction error on them is recorded")
    t.add_argument("--out", required=True, help="the codebook file (.safetensors) to write; checked before training")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    t.add_argument("--device")
    t.add_argument("--quiet", action="store_true")
    add_arguments(t, CodebookTrainingConfig)
    t.set_defaults(func=cmd_codebook_train)


def _lines(path: str | None) -> list[str]:
    from pathlib import Path

    from ..errors import InvalidPromptError

    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        raise InvalidPromptError(f"Prompt file {path!r} does not exist; give a text file with one prompt a line.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidPromptError(f"Prompt file {path!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def cmd_codebook_train(args) -> int:
    from ..config import values_from_args
    from ..errors import InvalidPromptError
    from ..loading import is_world, load_base
    from ..methods.codebook import CodebookTrainingConfig, train_codebook, world_codebook_prompts

    from .._io import check_output_file

    config = CodebookTrainingConfig(**values_from_args(args, CodebookTrainingConfig))
    out = check_output_file(args.out, overwrite=args.overwrite, suffix=".safetensors")  # before minutes of training
    prompts, heldout = _lines(args.prompts), _lines(args.heldout)
    if not prompts:
        if not is_world(args.base):
            raise InvalidPromptError("--prompts is required for a base other than the world: a text file with one "
                                     "prompt a line, covering what the model will be asked to draw.")
        prompts, world_heldout = world_codebook_prompts()
        heldout = heldout or world_heldout
    pipe = load_base(args.base, args.device, base_config=args.base_config)
    book = train_codebook(pipe, [""] + prompts if "" not in prompts else prompts, heldout, config,
                          progress=not args.quiet)
    path = book.save(out)
    m = book.metadata
    held = m["relative_error_heldout"]
    print(f"codebook {path}: {config.codes} codes, top-{config.k}; relative reconstruction error "
          f"{m['relative_error_train']:.4f} (training prompts), {'-' if held is None else f'{held:.4f}'} (held-out); "
          f"{m['codes_used']} codes used; {m['seconds']:.0f} s")
    return 0
