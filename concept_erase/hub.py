"""Where adapter files come from and go to: names, folders and Hugging Face Hub repos.

:func:`resolve_adapter` finds an adapter file: a path, a folder, a name in ``$CONCEPT_ERASE_HOME``
or among the shipped adapters, or a hub repo id (``revision``, ``subfolder``, ``token``; offline, the
local Hugging Face cache). Publishing is the other direction:

``save_pretrained(adapter, folder)`` writes

- ``pytorch_lora_weights.safetensors``: the adapter (diffusers' default LoRA file name, so
  ``pipe.load_lora_weights(repo_id)`` finds it without ``weight_name``), with diffusers'
  ``lora_adapter_metadata`` beside our own metadata;
- ``README.md``: a model card built with ``huggingface_hub.ModelCard`` / ``ModelCardData``: YAML
  front matter (``base_model`` as a hub id, ``tags``, ``license``, ``library_name: diffusers``,
  ``pipeline_tag``) and a body with the concept, the method and its settings, the evaluation table
  when the metadata has one, and usage for diffusers and for ComfyUI / AUTOMATIC1111.

``push_to_hub(adapter, repo_id)`` saves into a temporary folder and uploads it with
``huggingface_hub.create_repo`` + ``upload_folder``.

The base model an adapter records is never a path of the machine it was made on
(:func:`base_model_id`): ``concept-erase/shapes-world`` for the shipped world, the hub id for a hub
model (also recovered from a directory inside the Hugging Face cache), else only the directory's
name. A model card's ``base_model`` is written only when the value looks like a hub id, so a folder
name never becomes a link to somebody else's repository.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from ._io import atomic_write_text, check_output_dir
from .concepts import list_presets
from .errors import AdapterFormatError, InvalidConfigError, UnknownConceptError

__all__ = ["WORLD_MODEL_ID", "WEIGHT_NAME", "SHIPPED_ADAPTERS_DIR", "adapter_home", "known_adapters",
           "resolve_adapter", "is_offline", "looks_like_hub_id", "base_model_id", "model_card", "save_pretrained",
           "push_to_hub"]

SHIPPED_ADAPTERS_DIR = Path(__file__).parent / "adapters"  # adapters made for the shipped world
WORLD_MODEL_ID = "concept-erase/shapes-world"  # what adapters of the shipped shapes world record as their base
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
HOMEPAGE = "https://github.com/concept-erase/concept-erase"
_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\][^/\\]+$")

# the papers behind each method, for the card (title, link)
_PAPERS = {
    "semu": ("SEMU: Singular Value Decomposition for Efficient Machine Unlearning", "https://arxiv.org/abs/2502.07587"),
    "esd-x": ("Erasing Concepts from Diffusion Models", "https://arxiv.org/abs/2303.07345"),
    "esd-u": ("Erasing Concepts from Diffusion Models", "https://arxiv.org/abs/2303.07345"),
    "uce": ("Unified Concept Editing in Diffusion Models", "https://arxiv.org/abs/2308.14761"),
    "task-vector": ("Editing Models with Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
    "simu": ("SIMU: Selective Influence Machine Unlearning", None),
}


def looks_like_hub_id(value) -> bool:
    """Whether ``value`` is a valid hub repo id of the form ``owner/name`` (not a path).

    >>> looks_like_hub_id("runwayml/stable-diffusion-v1-5"), looks_like_hub_id("/home/me/model")
    (True, False)
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or value.count("/") != 1 or value.startswith((".", "~")) or "\\" in value:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def base_model_id(name_or_path: str, *, world_dir: Path | None = None) -> str:
    """What an adapter records as its base model, given the pipeline's ``name_or_path``:
    :data:`WORLD_MODEL_ID` for the shipped world (a path under ``world_dir``), the hub id for a hub
    model or a directory of the Hugging Face cache (``.../models--owner--name/snapshots/<rev>``),
    otherwise the directory's name only. Never a path of this machine.

    >>> base_model_id("runwayml/stable-diffusion-v1-5")
    'runwayml/stable-diffusion-v1-5'
    >>> base_model_id("/data/models/my-sd15")  # doctest: +SKIP
    'my-sd15'
    """
    name = str(name_or_path or "").strip() or "unknown"
    path = Path(name).expanduser()
    if not path.exists():
        return name if looks_like_hub_id(name) or "/" not in name and "\\" not in name else path.name or "unknown"
    resolved = path.resolve()
    if world_dir is not None and resolved.is_relative_to(Path(world_dir).resolve()):
        return WORLD_MODEL_ID
    cached = _CACHE_SNAPSHOT.search(str(resolved))
    if cached:
        return f"{cached['owner']}/{cached['name']}"
    return resolved.name or "unknown"


# ---------------------------------------------------------------- where adapter files come from
def adapter_home() -> Path:
    """The user's adapter directory: ``$CONCEPT_ERASE_HOME`` or ``~/.cache/concept-erase/adapters``."""
    env = os.environ.get("CONCEPT_ERASE_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "concept-erase" / "adapters"


def known_adapters() -> dict[str, Path]:
    """Adapter names available without a path: the user's directory first, then shipped ones."""
    found: dict[str, Path] = {}
    for directory in (adapter_home(), SHIPPED_ADAPTERS_DIR):
        if directory.is_dir():
            for p in sorted(directory.glob("*.safetensors")):
                if not p.name.startswith("."):  # hidden: an unfinished write or another tool's temp file
                    found.setdefault(p.stem, p)
    return found


def _from_directory(directory: Path, weight_name: str | None) -> Path:
    if not directory.is_dir():
        raise AdapterFormatError(f"{str(directory)!r} is not a directory (check `subfolder=`).")
    if weight_name:
        path = directory / weight_name
        if not path.is_file():
            raise AdapterFormatError(f"No file {weight_name!r} in {str(directory)!r}.")
        return path
    files = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith("."))
    if len(files) != 1:
        raise AdapterFormatError(
            f"Directory {str(directory)!r} holds {len(files)} .safetensors files; pass `weight_name=` to pick one."
        )
    return files[0]


def resolve_adapter(name_or_path: str | os.PathLike, *, weight_name: str | None = None, subfolder: str | None = None,
                    revision: str | None = None, token: str | bool | None = None) -> Path:
    """Find an adapter file: path → ``$CONCEPT_ERASE_HOME`` → shipped adapters → hub repo id.

    ``weight_name`` and ``subfolder`` pick the file in a directory or hub repo (a repo or directory
    holding one ``.safetensors`` file needs neither); ``revision`` (branch, tag or commit) and
    ``token`` apply to hub repos. With ``HF_HUB_OFFLINE=1`` a hub repo is read from the local cache.

    >>> resolve_adapter("no-red").name
    'no-red.safetensors'
    >>> resolve_adapter("someone/no-red", revision="v1.0", subfolder="sd15")  # doctest: +SKIP
    PosixPath('.../models--someone--no-red/snapshots/<commit>/sd15/no-red.safetensors')
    """
    value = str(name_or_path)
    path = Path(value).expanduser()
    hub_like = value.count("/") == 1 and not value.startswith((".", "/", "~")) and not path.suffix
    if (revision is not None or token is not None) and (path.exists() or not hub_like):
        raise InvalidConfigError(f"`revision`/`token` apply to hub repo ids ('owner/name'), but {value!r} is "
                                 "not one; leave them out for a file, a directory or a known name.")
    if path.is_file():
        return path
    if path.is_dir():
        return _from_directory(path / subfolder if subfolder else path, weight_name)
    known = known_adapters()
    stem = value[: -len(".safetensors")] if value.endswith(".safetensors") else value
    if stem in known:
        return known[stem]
    if hub_like:
        return _from_hub(value, weight_name, subfolder=subfolder, revision=revision, token=token)
    trainable = [p for p in list_presets() if p not in known]
    raise UnknownConceptError(
        f"Unknown unlearning adapter {value!r}: it is not a file, a directory, or a known name. Known names: "
        f"{', '.join(known) or '(none)'}. To make one, run `concept-erase erase --base DIR_OR_ID --preset NAME "
        f"--out {adapter_home()}/NAME.safetensors` (presets: {', '.join(trainable)})."
    )


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, read now (huggingface_hub reads it once, when imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "on", "true", "yes")


def _from_hub(repo_id: str, weight_name: str | None, *, subfolder: str | None = None, revision: str | None = None,
              token: str | bool | None = None) -> Path:
    """The adapter file of a hub repo, through huggingface_hub's cache (offline: the cache only)."""
    from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = is_offline()
    folder = (subfolder or "").strip("/")
    where = f"hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "") + (
        f", subfolder {folder!r}" if folder else "")
    command = " ".join(["hf download", repo_id, *([f"{folder}/{weight_name}" if folder else weight_name]
                                                   if weight_name else []),
                        *([f"--revision {revision}"] if revision else [])])
    try:
        if weight_name is None:
            if offline:  # the cached snapshot of the revision: its one .safetensors file, as for a directory
                snapshot = Path(snapshot_download(repo_id, revision=revision, token=token, local_files_only=True))
                return _from_directory(snapshot / folder if folder else snapshot, None)
            prefix = f"{folder}/" if folder else ""
            files = [f for f in list_repo_files(repo_id, revision=revision, token=token)
                     if f.endswith(".safetensors") and f.startswith(prefix) and "/" not in f[len(prefix):]]
            if len(files) != 1:
                raise AdapterFormatError(f"{where} has {len(files)} .safetensors files; pass `weight_name=`.")
            weight_name = files[0][len(prefix):]
        return Path(hf_hub_download(repo_id, weight_name, subfolder=folder or None, revision=revision, token=token,
                                    local_files_only=offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise UnknownConceptError(
            f"Could not get adapter {weight_name or '(the .safetensors file)'} from {where}: it is not in the local "
            f"Hugging Face cache and HF_HUB_OFFLINE is set ({e.__class__.__name__}). Download it while online with "
            f"`{command}`, or pass the file's path."
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise UnknownConceptError(
            f"Could not get adapter {weight_name or '(the .safetensors file)'} from {where}: "
            f"{e.__class__.__name__}: {str(e)[:300]}. Check the id, the revision, the token and the network; or "
            f"download it with `{command}` and pass the file's path."
        ) from None


# ---------------------------------------------------------------- the model card
def _md(value) -> str:
    """A value for a Markdown table cell."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(map(str, value))
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


# The order a reader looks for the columns and rows of an evaluation in. The metadata is stored with
# sorted keys, so the file does not keep the writer's order; unknown labels keep theirs, after these.
_COLUMN_ORDER = ("forget", "paraphrase", "retain", "specificity", "attack", "relearn", "membership", "fid", "kid",
                 "clip")
_ROW_ORDER = ("base", "", "prompts")  # the base model first, counts of prompts last, the rest between


def _rank(label, order: tuple[str, ...]) -> int:
    text = str(label).lower()
    return next((i for i, key in enumerate(order) if key and text.startswith(key)), order.index("") if "" in order
                else len(order))


def _evaluation_table(evaluation) -> list[str]:
    """``{row: {column: value}}`` (e.g. ``{"base": {"forget": 1.0}, "erased": {"forget": 0.0}}``) -> table,
    columns in :data:`_COLUMN_ORDER` (forget, paraphrase, retain, ...) and the base model's row first."""
    if not isinstance(evaluation, dict) or not evaluation or not all(isinstance(v, dict) for v in evaluation.values()):
        return []
    columns = list(dict.fromkeys(c for row in evaluation.values() for c in row))
    columns.sort(key=lambda c: _rank(c, _COLUMN_ORDER))  # stable: unknown columns keep their order, last
    rows = sorted(evaluation.items(), key=lambda item: _rank(item[0], _ROW_ORDER))
    lines = ["| | " + " | ".join(_md(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, row in rows:
        lines.append(f"| {_md(label)} | " + " | ".join(_md(row.get(c, "–")) for c in columns) + " |")
    return lines


def model_card(adapter, *, repo_id: str | None = None, license: str | None = None, weight_name: str = WEIGHT_NAME):
    """The ``huggingface_hub.ModelCard`` of ``adapter`` (``repo_id``: where it will be published, for
    the usage snippets; ``license``: default the base model's when known, Apache-2.0 for the world)."""
    from huggingface_hub import ModelCard, ModelCardData

    meta = adapter.metadata
    method = str(meta.get("method", "unknown"))
    base = meta.get("base_model")
    base = WORLD_MODEL_ID if base == "world" else base  # files made before the world had a hub-style id
    hub_base = base if looks_like_hub_id(base) else None
    concept = meta.get("concept") if isinstance(meta.get("concept"), dict) else {}
    name = adapter.name
    if license is None:
        license = "apache-2.0" if hub_base == WORLD_MODEL_ID else "other"
    tags = list(dict.fromkeys(["concept-erasure", "machine-unlearning", method, "lora", "diffusers",
                               "text-to-image", "concept-erase"]))
    data = ModelCardData(base_model=hub_base, library_name="diffusers", license=license, tags=tags,
                         pipeline_tag="text-to-image")
    repo = repo_id or "OWNER/REPO"
    base_for_code = hub_base or "BASE_MODEL_DIR_OR_ID"
    paper = _PAPERS.get(method)
    method_text = f"[{paper[0]}]({paper[1]})" if paper and paper[1] else (paper[0] if paper else method)
    lines = [f"# Unlearning adapter: {name}", "",
             f"This LoRA-format adapter erases the concept **{_md(name)}** from "
             + (f"[`{hub_base}`](https://huggingface.co/{hub_base})" if hub_base and hub_base != WORLD_MODEL_ID
                else f"`{base or 'its base model'}`")
             + f". It was made with [concept-erase]({HOMEPAGE}) using **{method}** ({method_text}): low-rank "
             "factors (`lora_A`, `lora_B`) added to some UNet layers, trained from prompts alone.", ""]
    if hub_base == WORLD_MODEL_ID:
        lines += ["The base is the *shapes world* that ships inside the `concept-erase` package (a tiny Stable "
                  "Diffusion pipeline trained on drawn shapes): `concept_erase.world.load_pipeline()` loads it; it "
                  "is not a repository on the Hub.", ""]
    if license == "other":
        lines += ["License: the adapter is derived from its base model; use it under the base model's license.", ""]
    if concept:
        lines += ["## Concept", ""]
        for key, label in (("forget", "Forget prompts"), ("anchor", "Anchor (map-to) prompts"),
                           ("retain", "Retain prompts")):
            prompts = concept.get(key) or []
            if prompts:
                shown = ", ".join(f"`{_md(p)}`" for p in prompts[:5]) + (", ..." if len(prompts) > 5 else "")
                lines.append(f"- {label} ({len(prompts)}): {shown}")
        lines.append("")
    lines += ["## Method and settings", "", "| setting | value |", "|---|---|", f"| method | {_md(method)} |"]
    if base:
        lines.append(f"| base model | {_md(base)} |")
    ranks = adapter.ranks
    lines.append(f"| adapted layers | {len(ranks)} (rank {min(ranks.values())}–{max(ranks.values())}) |")
    if "trainable_parameters" in meta:
        share = f" ({meta['trainable_fraction']:.3%} of the UNet)" if isinstance(meta.get("trainable_fraction"),
                                                                                 (int, float)) else ""
        lines.append(f"| trainable parameters | {meta['trainable_parameters']:,}{share} |")
    if isinstance(meta.get("seconds"), (int, float)):
        lines.append(f"| erase time | {meta['seconds']:.1f} s |")
    for key, value in sorted((meta.get("config") or {}).items()):
        lines.append(f"| {_md(key)} | {_md(value)} |")
    versions = meta.get("versions")
    if isinstance(versions, dict):
        lines.append("| libraries | " + _md(", ".join(f"{k} {v}" for k, v in sorted(versions.items()))) + " |")
    lines.append("")
    table = _evaluation_table(meta.get("evaluation"))
    if table:
        lines += ["## Evaluation", "", *table, ""]
    lines += [
        "## Use with diffusers", "",
        "```python",
        f'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained("{base_for_code}")'
        if hub_base != WORLD_MODEL_ID else "import concept_erase\n\npipe = concept_erase.world.load_pipeline()",
        f'pipe.load_lora_weights("{repo}", weight_name="{weight_name}")  # plain diffusers',
        "```", "",
        "or with concept-erase (`pip install concept-erase`): named adapters, a strength knob and an exact unload:", "",
        "```python",
        "import concept_erase  # adds the unlearning methods to diffusers pipelines",
        "",
        f'pipe.load_unlearning_adapter("{repo}")',
        "pipe.set_unlearning_scale(0.8)     # weaker or stronger erasure",
        "pipe.unload_unlearning_adapter()   # the base model back, bit for bit",
        "```", "",
        "## Use with ComfyUI or AUTOMATIC1111", "",
        "Convert the file to the kohya LoRA format those tools read, then put it in `ComfyUI/models/loras/` or "
        "`stable-diffusion-webui/models/Lora/`:", "",
        "```bash",
        f"hf download {repo} {weight_name} --local-dir .",
        f"concept-erase export {weight_name} --format kohya --out {_safe_stem(name)}.safetensors",
        "```", "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _safe_stem(name: str) -> str:
    from ._io import safe_filename

    return safe_filename(name, "adapter")


# ---------------------------------------------------------------- save and upload
def save_pretrained(adapter, directory: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                    evaluation: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``adapter`` as a Hub-ready folder: ``pytorch_lora_weights.safetensors`` + ``README.md``.

    ``evaluation``: ``{row: {column: value}}`` stored in the metadata and shown in the card.
    ``directory`` must be new, empty or an earlier save (else ``overwrite``); every file is written
    atomically. Returns the folder.
    """
    if evaluation is not None:
        if not isinstance(evaluation, dict) or not all(isinstance(v, dict) for v in evaluation.values()):
            raise InvalidConfigError(f"`evaluation` must be a dict of rows, each a dict of column -> value, but is "
                                     f"{str(evaluation)[:80]!r}.")
        adapter = type(adapter)(adapter.tensors, {**adapter.metadata, "evaluation": evaluation})
    if repo_id is not None and not looks_like_hub_id(repo_id):
        raise InvalidConfigError(f"`repo_id` must look like 'owner/name', but is {repo_id!r}.")
    directory = check_output_dir(directory, overwrite=overwrite, owned=(WEIGHT_NAME,), flag="save_pretrained",
                                 what="a saved adapter")
    directory.mkdir(parents=True, exist_ok=True)
    card = model_card(adapter, repo_id=repo_id, license=license)
    adapter.save(directory / WEIGHT_NAME)
    atomic_write_text(directory / "README.md", str(card))
    return directory


def push_to_hub(adapter, repo_id: str, *, token: str | bool | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None, license: str | None = None,
                evaluation: dict | None = None) -> str:
    """Save ``adapter`` (:func:`save_pretrained`) and upload it to the hub repo ``repo_id`` (created
    if needed). Returns the URL of the commit."""
    from huggingface_hub import create_repo, upload_folder

    if not looks_like_hub_id(repo_id):
        raise InvalidConfigError(f"`repo_id` must look like 'owner/name', but is {repo_id!r}.")
    with tempfile.TemporaryDirectory(prefix="concept-erase-push-") as tmp:
        folder = save_pretrained(adapter, Path(tmp) / "adapter", repo_id=repo_id, license=license,
                                 evaluation=evaluation)
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = upload_folder(repo_id=repo_id, folder_path=folder, token=token, revision=revision,
                             commit_message=commit_message or f"Upload unlearning adapter {adapter.name}")
    return str(getattr(info, "commit_url", info))
