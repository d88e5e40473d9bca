"""``pipe.load_unlearning_adapter(...)`` and friends: unlearning adapters on diffusers pipelines.

Loading goes through diffusers' own ``load_lora_weights`` (PEFT), so adapters compose with each
other and with ordinary LoRAs. concept-erase adds name resolution, validation before any weight is
touched, per-adapter scales, and an exact ``unload``: weights changed by ``fuse`` are restored from
a copy, so the base model comes back bit-for-bit.

``import concept_erase`` attaches these methods to ``diffusers.DiffusionPipeline`` (and so to
every pipeline object, existing ones included); nothing else happens at import time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path

import torch

from .adapter import UnlearningAdapter
from .codebook import CodebookEdit, attach_codebook_, detach_codebook_, is_codebook_file, loaded_codebook
from .concepts import list_presets
from .errors import AdapterFormatError, InvalidConfigError, UnknownConceptError, WeightsNotFoundError

__all__ = ["resolve_adapter", "adapter_home", "known_adapters", "UnlearningMixin", "install_pipeline_methods",
           "SHIPPED_ADAPTERS_DIR", "load_base", "is_world", "default_device", "adapter_key"]
logger = logging.getLogger(__name__)

SHIPPED_ADAPTERS_DIR = Path(__file__).parent / "adapters"


# ---------------------------------------------------------------- base pipelines
def is_world(base) -> bool:
    """Whether ``base`` names the shipped shapes world (``"world"``; empty or None mean it too)."""
    return base in ("world", "", None)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(base: str | None, device: str | None = None):
    """``"world"`` (the shipped model), a local pipeline directory or a hub id -> pipeline on ``device``
    (default: cuda when available). Progress bars of the pipeline are off; errors name what to pass."""
    device = device or default_device()
    if is_world(base):
        from . import world  # the shipped model's code is loaded only when it is asked for

        return world.load_pipeline(device)
    from diffusers import DiffusionPipeline

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


# ---------------------------------------------------------------- adapter files
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


def resolve_adapter(name_or_path: str | os.PathLike, *, weight_name: str | None = None) -> Path:
    """Find an adapter file: path → ``$CONCEPT_ERASE_HOME`` → shipped adapters → hub repo id.

    >>> resolve_adapter("no-red").name
    'no-red.safetensors'
    """
    value = str(name_or_path)
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _from_directory(path, weight_name)
    known = known_adapters()
    stem = value[: -len(".safetensors")] if value.endswith(".safetensors") else value
    if stem in known:
        return known[stem]
    if value.count("/") == 1 and not value.startswith((".", "/")) and not path.suffix:
        return _from_hub(value, weight_name)
    trainable = [p for p in list_presets() if p not in known]
    raise UnknownConceptError(
        f"Unknown unlearning adapter {value!r}: it is not a file, a directory, or a known name. Known names: "
        f"{', '.join(known) or '(none)'}. To make one, run `concept-erase erase --base DIR_OR_ID --preset NAME "
        f"--out {adapter_home()}/NAME.safetensors` (presets: {', '.join(trainable)})."
    )


def _from_hub(repo_id: str, weight_name: str | None) -> Path:
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        if weight_name is None:
            if offline:
                raise UnknownConceptError(
                    f"{repo_id!r} looks like a hub repo id, but HF_HUB_OFFLINE is set and no `weight_name` was "
                    "given, so the file cannot be found. Pass `weight_name=...` (if the file is cached) or go online."
                )
            files = [f for f in list_repo_files(repo_id) if f.endswith(".safetensors")]
            if len(files) != 1:
                raise AdapterFormatError(f"Hub repo {repo_id!r} has {len(files)} .safetensors files; pass `weight_name=`.")
            weight_name = files[0]
        return Path(hf_hub_download(repo_id, weight_name))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise UnknownConceptError(
            f"Could not get adapter {weight_name or '?'} from hub repo {repo_id!r}: {e.__class__.__name__}: {e}. "
            "Check the id, the network, or download the file and pass its path."
        ) from None


def _check_scale(scale) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(scale, (str, bytes)) or not math.isfinite(value):
        raise InvalidConfigError(f"An unlearning scale must be a finite number, but is {scale!r}.")
    return value


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def adapter_key(name: str) -> str:
    """The key PEFT stores adapter ``name`` under. PEFT keeps adapters in ``ModuleDict`` s, whose keys
    may not contain ``.`` (nor be empty), so any other name becomes a slug plus a short hash:
    ``"no-nudity-sd1.5"`` -> ``"no-nudity-sd1_5-3f2a9c1e"``. Users only ever see their own name.

    >>> adapter_key("no-red"), adapter_key("no red.v2")[:10]
    ('no-red', 'no_red_v2-')
    """
    if _PLAIN_KEY.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "adapter"
    return f"{slug}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class UnlearningMixin:
    """Methods for any diffusers pipeline with a ``unet``; attached to ``DiffusionPipeline`` on import."""

    def load_unlearning_adapter(self, name_or_path, *, adapter_name: str | None = None, scale: float = 1.0,
                                weight_name: str | None = None) -> str:
        """Load an unlearning adapter (a name, a file, a directory or a hub repo id) and activate it
        together with those already loaded. Returns the adapter name.

        >>> pipe.load_unlearning_adapter("no-red")  # doctest: +SKIP
        'no-red'
        """
        if isinstance(name_or_path, UnlearningAdapter):
            adapter = name_or_path
        else:
            edit = name_or_path if isinstance(name_or_path, CodebookEdit) else None
            path = None if edit else resolve_adapter(name_or_path, weight_name=weight_name)
            if edit is not None or is_codebook_file(path):  # a codebook erasure (CodeUnlearn): not a LoRA
                return attach_codebook_(self, edit or CodebookEdit.load(path), name=adapter_name, scale=scale)
            adapter = UnlearningAdapter.load(path)
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name.strip()):
            raise InvalidConfigError(f"`adapter_name` must be a non-empty string, but is {adapter_name!r}.")
        _check_scale(scale)
        adapter = adapter.resolve_kohya_names(self.unet)
        adapter.check_compatible(self.unet)  # before any weight is touched
        name = adapter_name or adapter.name
        active = self._unlearning_state()
        if name in active["scales"]:
            raise AdapterFormatError(
                f"An unlearning adapter named {name!r} is already loaded; pass another `adapter_name=` "
                f"or unload it first with `pipe.unload_unlearning_adapter({name!r})`."
            )
        if active["fused"]:
            raise AdapterFormatError("Unfuse first (`pipe.unfuse_unlearning_adapter()`) before loading another adapter.")
        key = adapter_key(name)
        if key in (self.get_list_adapters().get("unet") or []):
            raise AdapterFormatError(f"The pipeline already holds a LoRA adapter named {key!r}; pass another "
                                     "`adapter_name=`.")
        # diffusers takes (and may mutate) the dict: give it copies
        self.load_lora_weights({k: v.clone() for k, v in adapter.tensors.items()}, adapter_name=key)
        active["keys"][name] = key
        active["scales"][name] = float(scale)
        active["metadata"][name] = adapter.metadata
        self._apply_unlearning_scales()
        return name

    def set_unlearning_scale(self, scale: float | dict[str, float], adapter_name: str | None = None) -> None:
        """Set the erasure strength: one number for every adapter (or ``adapter_name``), or a dict."""
        book = loaded_codebook(self)
        if book is not None and not isinstance(scale, dict) and adapter_name in (None, book["name"]):
            book["scale"] = float(scale)  # a codebook edit: ĥ + scale·(ĥ_edit − ĥ)
            if adapter_name is not None or not self._unlearning_state()["scales"]:
                return
        active = self._unlearning_state()
        if active["fused"]:  # checked first: a refused call changes nothing
            raise AdapterFormatError("The adapters are fused; unfuse them before changing the scale.")
        if isinstance(scale, dict):
            unknown = set(scale) - set(active["scales"])
            if unknown:
                raise UnknownConceptError(f"No unlearning adapter named {sorted(unknown)}; loaded: {list(active['scales'])}.")
            active["scales"].update({k: _check_scale(v) for k, v in scale.items()})
        else:
            value = _check_scale(scale)
            names = [adapter_name] if adapter_name else list(active["scales"])
            for n in names:
                if n not in active["scales"]:
                    raise UnknownConceptError(f"No unlearning adapter named {n!r}; loaded: {list(active['scales'])}.")
            active["scales"].update(dict.fromkeys(names, value))
        self._apply_unlearning_scales()

    @property
    def unlearning_adapters(self) -> dict[str, float]:
        """Loaded unlearning adapters and their scales."""
        book = loaded_codebook(self)
        return {**self._unlearning_state()["scales"], **({book["name"]: book["scale"]} if book else {})}

    def unlearning_metadata(self, adapter_name: str) -> dict:
        return self._unlearning_state()["metadata"][adapter_name]

    def fuse_unlearning_adapter(self) -> None:
        """Merge the active unlearning adapters into the UNet weights (no inference overhead)."""
        active = self._unlearning_state()
        if not active["scales"] or active["fused"]:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        # keep the exact original weights of every layer that fusing will change
        active["originals"] = {
            name: module.get_base_layer().weight.detach().clone()
            for name, module in self.unet.named_modules()
            if isinstance(module, BaseTunerLayer) and set(module.active_adapters) & set(active["keys"].values())
        }
        self.fuse_lora(components=["unet"], adapter_names=list(active["keys"].values()), lora_scale=1.0)
        active["fused"] = True

    def unfuse_unlearning_adapter(self) -> None:
        """Undo :meth:`fuse_unlearning_adapter`, restoring the original weights exactly."""
        active = self._unlearning_state()
        if not active["fused"]:
            return
        self.unfuse_lora(components=["unet"])
        modules = dict(self.unet.named_modules())
        with torch.no_grad():
            for name, weight in active.pop("originals", {}).items():
                modules[name].get_base_layer().weight.copy_(weight)
        active["fused"] = False

    def unload_unlearning_adapter(self, adapter_name: str | None = None) -> None:
        """Remove one unlearning adapter (or all): the base weights come back bit-for-bit."""
        book = loaded_codebook(self)
        if book is not None and adapter_name in (None, book["name"]):
            detach_codebook_(self)  # a codebook edit: the hook goes, no weight was ever touched
            if adapter_name is not None or not self._unlearning_state()["scales"]:
                return
        active = self._unlearning_state()
        names = [adapter_name] if adapter_name else list(active["scales"])
        for n in names:
            if n not in active["scales"]:
                raise UnknownConceptError(f"No unlearning adapter named {n!r}; loaded: {list(active['scales'])}.")
        self.unfuse_unlearning_adapter()
        self.delete_adapters([active["keys"][n] for n in names])
        for n in names:
            active["scales"].pop(n)
            active["metadata"].pop(n)
            active["keys"].pop(n)
        if not self.get_list_adapters().get("unet"):
            self.unload_lora_weights()  # no adapter left at all: take PEFT's wrappers out too
        elif active["scales"]:
            self._apply_unlearning_scales()

    # ----- internals -----
    def _unlearning_state(self) -> dict:
        state = self.__dict__.get("_concept_erase_state")
        if state is None:
            state = {"scales": {}, "metadata": {}, "keys": {}, "fused": False}  # keys: name -> PEFT key
            self.__dict__["_concept_erase_state"] = state
        return state

    def _apply_unlearning_scales(self) -> None:
        state = self._unlearning_state()
        keys = [state["keys"][n] for n in state["scales"]]
        others = [a for a in self.get_active_adapters() if a not in keys]  # keep the user's own LoRAs on
        self.set_adapters(keys + others, list(state["scales"].values()) + [1.0] * len(others))


_METHODS = ("load_unlearning_adapter", "set_unlearning_scale", "unlearning_adapters", "unlearning_metadata",
            "fuse_unlearning_adapter", "unfuse_unlearning_adapter", "unload_unlearning_adapter",
            "_unlearning_state", "_apply_unlearning_scales")


def install_pipeline_methods(pipeline_class: type | None = None) -> None:
    """Attach the unlearning methods to ``diffusers.DiffusionPipeline`` (or ``pipeline_class``); idempotent."""
    if pipeline_class is None:
        from diffusers import DiffusionPipeline as pipeline_class

    for name in _METHODS:
        if not hasattr(pipeline_class, name):
            setattr(pipeline_class, name, UnlearningMixin.__dict__[name])
