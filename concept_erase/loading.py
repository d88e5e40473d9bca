"""``pipe.load_unlearning_adapter(...)`` and friends: unlearning adapters on diffusers pipelines.

Loading goes through diffusers' own LoRA loader (PEFT; the UNet half of ``load_lora_weights``, see
:func:`load_unet_lora`), so adapters compose with each
other and with ordinary LoRAs. concept-erase adds name resolution (files, directories, known names,
hub repos with ``revision``/``subfolder``/``token``), validation before any weight is touched,
per-adapter scales and an exact ``unload``: the weights of the layers an adapter changes are copied
(to CPU) when it is loaded and written back when it is unloaded, so the base model comes back bit
for bit, whatever was fused or unfused in between. Scales and fused layers are read from PEFT's
layers, so diffusers' own LoRA calls on the same pipeline are seen (see :class:`UnlearningMixin`).

``import concept_erase`` attaches these methods to ``diffusers.DiffusionPipeline`` (and so to
every pipeline object, existing ones included); nothing else happens at import time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from pathlib import Path

import torch

from .adapter import UnlearningAdapter
from .codebook import CodebookEdit, attach_codebook_, detach_codebook_, is_codebook_file, loaded_codebook
from .config import check_mixed_precision
from .diffusion import dtype_kwargs, quiet_hf_logging  # noqa: F401  (re-exported: loading's public helpers)
from .errors import (AdapterFormatError, AdapterStateError, InvalidConfigError, UnknownConceptError,
                     WeightsNotFoundError)
from .hub import SHIPPED_ADAPTERS_DIR, adapter_home, known_adapters, resolve_adapter

__all__ = ["resolve_adapter", "adapter_home", "known_adapters", "UnlearningMixin", "install_pipeline_methods",
           "SHIPPED_ADAPTERS_DIR", "load_base", "is_world", "default_device", "adapter_key", "base_dtype",
           "dtype_kwargs", "quiet_hf_logging", "load_unet_lora", "SINGLE_FILE_SUFFIXES"]
logger = logging.getLogger(__name__)



# ---------------------------------------------------------------- base pipelines
def is_world(base) -> bool:
    """Whether ``base`` names the shipped shapes world (``"world"``; empty or None mean it too)."""
    return base in ("world", "", None)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# the dtype of the frozen base model for each `mixed_precision` (the names of diffusers' training scripts)
_BASE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def base_dtype(mixed_precision: str | None, device: str | torch.device) -> torch.dtype:
    """The dtype the base model is loaded in: ``"no"`` float32, ``"fp16"``, ``"bf16"``; ``None`` means
    ``"fp16"`` on CUDA and ``"no"`` elsewhere. fp16 is refused on the CPU, where PyTorch lacks
    fp16 kernels for much of a UNet (use bf16 there).

    >>> base_dtype(None, "cpu"), base_dtype("bf16", "cpu")
    (torch.float32, torch.bfloat16)
    """
    kind = torch.device(device).type
    name = check_mixed_precision(mixed_precision if mixed_precision is not None else
                                 ("fp16" if kind == "cuda" else "no"))
    if name == "fp16" and kind == "cpu":
        raise InvalidConfigError("`mixed_precision` 'fp16' needs a GPU: PyTorch has no fp16 kernels for much of a UNet "
                                 "on the CPU. Use 'bf16' or 'no' there, or pass a CUDA device.")
    return _BASE_DTYPES[name]


def load_unet_lora(pipe, state_dict: dict[str, torch.Tensor], *, adapter_name: str) -> None:
    """Load a UNet-only LoRA (``unet.``-prefixed PEFT keys) into ``pipe.unet``: the UNet half of
    diffusers' ``load_lora_weights`` (its ``load_lora_into_unet`` is this call), without the text
    encoder half, which finds no keys in an unlearning adapter and warns "No LoRA keys associated
    to CLIPTextModel found" on every load. ``pipe.get_list_adapters()``, ``set_adapters`` and
    ``fuse_lora`` see the adapter as usual. PEFT's warning that a second adapter joins the first
    ("Already found a `peft_config` attribute") is silenced: several adapters at once are intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        pipe.unet.load_lora_adapter(state_dict, prefix="unet", adapter_name=adapter_name, _pipeline=pipe)


def _not_a_hub_id(name: str) -> bool:
    """A path-like string (absolute, relative, ``~``) or anything but ``owner/name``."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def load_base(base: str | None, device: str | None = None, *, mixed_precision: str | None = None,
              revision: str | None = None, variant: str | None = None, base_config: str | None = None):
    """``"world"`` (the shipped model), a local pipeline directory, a hub id or a single-file
    checkpoint (``.safetensors``) -> pipeline on ``device`` (default: cuda when available). Progress
    bars of the pipeline are off; errors name what to pass.

    ``mixed_precision`` sets the dtype of the (frozen) base weights as diffusers' training scripts do:
    ``"no"`` (float32), ``"fp16"`` or ``"bf16"``; default ``"fp16"`` on CUDA, ``"no"`` elsewhere
    (:func:`base_dtype`). The erasure methods train float32 parameters whatever it is. ``revision``
    (branch, tag or commit of a hub repo) and ``variant`` (``"fp16"`` loads ``*.fp16.safetensors``
    files) are passed to ``DiffusionPipeline.from_pretrained``.

    A ``.safetensors`` file is a whole Stable Diffusion model in the original LDM layout (the files
    A1111, ComfyUI and Civitai use), read with diffusers' ``from_single_file`` (SDXL when the file holds
    its second text encoder, else SD 1.x/2.x). ``base_config`` is a local diffusers pipeline directory
    or a hub id whose configs (UNet, VAE, text encoder, tokenizer, scheduler) describe the model;
    without it diffusers infers them from the file's keys and fetches them from the hub. Pickle
    checkpoints (``.ckpt``, ``.pt``, ``.bin``) are refused: they can run code when loaded.

    >>> pipe = load_base("world", "cpu", mixed_precision="bf16")
    >>> pipe.unet.dtype
    torch.bfloat16
    """
    device = device or default_device()
    dtype = base_dtype(mixed_precision, device)
    if is_world(base):
        if revision is not None or variant is not None:
            raise InvalidConfigError(f"--revision/--variant ({revision!r}, {variant!r}) apply to a hub id or a "
                                     "pipeline directory, not to the shipped world model; leave them out.")
        if base_config is not None:
            raise InvalidConfigError(f"--base-config {base_config!r} applies to a single-file --base (a "
                                     ".safetensors checkpoint), not to the shipped world model; leave it out.")
        from . import world  # the shipped model's code is loaded only when it is asked for

        return world.load_pipeline(device, torch_dtype=dtype)  # quiet as below
    from diffusers import DiffusionPipeline

    path = Path(base).expanduser()
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES or path.is_file():
        return _load_single_file(base, path, device, dtype, revision=revision, variant=variant,
                                 base_config=base_config)
    if base_config is not None:
        raise InvalidConfigError(f"--base-config {base_config!r} applies to a single-file --base (a .safetensors "
                                 f"checkpoint), but --base {base!r} is a pipeline directory or hub id, which holds "
                                 "its own configs; leave --base-config out.")
    if path.exists() and not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(f"--base {base!r} is a path but holds no model_index.json (not a diffusers pipeline).")
    if not path.exists() and _not_a_hub_id(base):
        raise WeightsNotFoundError(
            f"--base {base!r} is not an existing directory, nor a hub id of the form 'owner/name'. Pass 'world', a "
            "local diffusers pipeline directory, or a hub id."
        )
    if path.exists() and revision is not None:
        raise InvalidConfigError(f"--revision {revision!r} applies to a hub id, but --base {base!r} is a local "
                                 "directory; leave it out (check out the revision you want into the directory).")
    try:
        with quiet_hf_logging():
            pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else base, **dtype_kwargs(dtype),
                                                     revision=revision, variant=variant, safety_checker=None,
                                                     requires_safety_checker=False)
    except (OSError, ValueError) as e:
        where = f" at revision {revision!r}" if revision else ""
        files = f" with --variant {variant!r}" if variant else ""
        advice = ("Check that the directory holds a whole diffusers pipeline (model_index.json and a folder per "
                  "component)." if path.exists() else f"Offline? Set HF_HUB_OFFLINE=0, or download the pipeline with "
                  f"'hf download {base} --local-dir DIR' (huggingface_hub's command line) and pass DIR.")
        raise WeightsNotFoundError(
            f"Could not load --base {base!r}{where}{files}: {e.__class__.__name__}: {str(e)[:300]}. {advice}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------- single-file checkpoints
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# components whose configs a pipeline directory given with --base-config must hold (SDXL: the *_2 too)
_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                 "tokenizer": None, "scheduler": "scheduler_config.json"}
_XL_CONFIG_FILES = {"text_encoder_2": "config.json", "tokenizer_2": None}


def _single_file_kind(base: str, path: Path) -> str:
    """``"sdxl"`` or ``"sd"`` from the tensor names in the file's header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) on a bad header
        raise WeightsNotFoundError(f"--base {base!r} could not be read as a safetensors file ({type(e).__name__}: "
                                   f"{str(e)[:200]}).") from None
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise WeightsNotFoundError(
            f"--base {base!r} holds no UNet in the original LDM layout (no 'model.diffusion_model.*' tensors): it "
            "is not a whole Stable Diffusion checkpoint (a LoRA, or a UNet or VAE alone?). Pass a full model file, "
            "or a diffusers pipeline directory.")
    return "sdxl" if any(k.startswith("conditioner.embedders.1.") for k in keys) else "sd"


def _check_base_config(base_config: str, kind: str) -> tuple[str, bool]:
    """``base_config`` -> (what to pass to ``from_single_file(config=)``, whether it is local)."""
    path = Path(base_config).expanduser()
    if not path.exists():
        if _not_a_hub_id(base_config):
            raise WeightsNotFoundError(f"--base-config {base_config!r} is not an existing directory, nor a hub id "
                                       "of the form 'owner/name'. Pass a diffusers pipeline directory (offline: a "
                                       "local one) whose configs describe the checkpoint.")
        return base_config, False
    if not path.is_dir():
        raise InvalidConfigError(f"--base-config {base_config!r} is a file; pass a diffusers pipeline directory "
                                 "(model_index.json and a folder per component) or a hub id.")
    wanted = {**_CONFIG_FILES, **(_XL_CONFIG_FILES if kind == "sdxl" else {})}
    missing = [f"{folder}/{name}" if name else f"{folder}/" for folder, name in wanted.items()
               if not (path / folder / name if name else path / folder).exists()]
    if not (path / "model_index.json").is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise InvalidConfigError(
            f"--base-config {base_config!r} lacks {', '.join(missing)}: it must be a diffusers pipeline directory "
            f"whose configs describe the checkpoint ({'SDXL' if kind == 'sdxl' else 'SD 1.x/2.x'}). Download only "
            f"the configs with \"hf download REPO --exclude '*.safetensors' '*.bin' --local-dir DIR\" and pass DIR.")
    return str(path), True


def _load_single_file(base: str, path: Path, device: str, dtype: torch.dtype, *, revision, variant, base_config):
    """A single-file Stable Diffusion checkpoint -> pipeline on ``device``: see :func:`load_base`."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES or (path.is_file() and suffix not in SINGLE_FILE_SUFFIXES):
        raise InvalidConfigError(
            f"--base {base!r} is a {suffix or 'suffix-less'} file; only .safetensors checkpoints are loaded (pickle "
            "files such as .ckpt, .pt and .bin can run code when loaded). Convert it once where you trust it, e.g. "
            "safetensors.torch.save_file(torch.load(PATH, weights_only=True)['state_dict'], 'model.safetensors'), "
            "or download the .safetensors version.")
    if not path.is_file():
        raise WeightsNotFoundError(f"--base {base!r} looks like a checkpoint file but does not exist"
                                   f"{' (it is a directory)' if path.exists() else ''}. Check the path.")
    if revision is not None or variant is not None:
        raise InvalidConfigError(f"--revision/--variant ({revision!r}, {variant!r}) apply to a hub id or a pipeline "
                                 f"directory, not to the single-file checkpoint {base!r}; leave them out.")
    kind = _single_file_kind(base, path)
    config, local = _check_base_config(base_config, kind) if base_config is not None else (None, False)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    extra = {} if kind == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    try:
        with quiet_hf_logging():
            pipe = cls.from_single_file(str(path), config=config, local_files_only=local,
                                        **dtype_kwargs(dtype), **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: shapes that do not fit the config
        advice = (f"Check that --base-config {base_config!r} describes this checkpoint (same architecture)."
                  if base_config is not None else
                  "Without --base-config diffusers fetches the configs it infers from the hub; offline, pass "
                  "--base-config DIR, a local diffusers pipeline directory of the same architecture (its configs "
                  "are enough).")
        raise WeightsNotFoundError(f"Could not load the single-file checkpoint --base {base!r}: "
                                   f"{e.__class__.__name__}: {str(e)[:300]}. {advice}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


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
    """Methods for any diffusers pipeline with a ``unet``; attached to ``DiffusionPipeline`` on import.

    One truth about what is loaded: scales and fused layers are read from PEFT's layers every time,
    not from a copy of our own, so diffusers' calls on the same pipeline (``set_adapters``,
    ``fuse_lora``, ``unfuse_lora``, ``disable_lora``, ``delete_adapters``, ``unload_lora_weights``)
    are seen. When an adapter is loaded, the weights of the layers it changes are copied (to CPU);
    unloading writes them back, so the base model returns bit for bit whatever was fused or
    unfused in between, or an :class:`~concept_erase.errors.AdapterStateError` says why it cannot.
    """

    def load_unlearning_adapter(self, name_or_path, *, adapter_name: str | None = None, scale: float = 1.0,
                                weight_name: str | None = None, subfolder: str | None = None,
                                revision: str | None = None, token: str | bool | None = None) -> str:
        """Load an unlearning adapter (a name, a file, a directory or a hub repo id) and activate it
        together with those already loaded. Returns the adapter name. ``weight_name``, ``subfolder``,
        ``revision`` and ``token`` pick the file in a directory or hub repo (as in diffusers).

        >>> pipe.load_unlearning_adapter("no-red")  # doctest: +SKIP
        'no-red'
        >>> pipe.load_unlearning_adapter("someone/no-red", revision="v1", subfolder="sd15")  # doctest: +SKIP
        'red'
        """
        if isinstance(name_or_path, UnlearningAdapter):
            adapter = name_or_path
        else:
            edit = name_or_path if isinstance(name_or_path, CodebookEdit) else None
            path = None if edit else resolve_adapter(name_or_path, weight_name=weight_name, subfolder=subfolder,
                                                     revision=revision, token=token)
            if edit is not None or is_codebook_file(path):  # a codebook erasure (CodeUnlearn): not a LoRA
                return attach_codebook_(self, edit or CodebookEdit.load(path), name=adapter_name, scale=scale)
            adapter = UnlearningAdapter.load(path)
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name.strip()):
            raise InvalidConfigError(f"`adapter_name` must be a non-empty string, but is {adapter_name!r}.")
        _check_scale(scale)
        adapter = adapter.resolve_kohya_names(self.unet)
        adapter.check_compatible(self.unet)  # before any weight is touched
        name = adapter_name or adapter.name
        state = self._sync_unlearning_state(refuse_baked=True)
        if name in state["keys"]:
            raise AdapterFormatError(
                f"An unlearning adapter named {name!r} is already loaded; pass another `adapter_name=` "
                f"or unload it first with `pipe.unload_unlearning_adapter({name!r})`."
            )
        self._refuse_fused_or_disabled("loading another adapter")
        key = adapter_key(name)
        if key in self._lora_keys():
            raise AdapterFormatError(f"The pipeline already holds a LoRA adapter named {key!r}; pass another "
                                     "`adapter_name=`.")
        scales = self._lora_scales()  # diffusers activates only the new adapter: the others come back after
        for module in adapter.modules:  # the exact weights this adapter will change, for an exact unload
            if module not in state["originals"]:
                layer = self.unet.get_submodule(module)
                state["originals"][module] = _base_weight(layer).detach().to("cpu", copy=True)
                state["merged_at_load"][module] = tuple(getattr(layer, "merged_adapters", ()))
        # diffusers takes (and may mutate) the dict: give it copies
        load_unet_lora(self, {k: v.clone() for k, v in adapter.tensors.items()}, adapter_name=key)
        state["keys"][name] = key
        state["layers"][name] = list(adapter.modules)
        state["metadata"][name] = adapter.metadata
        self._set_lora_scales({**scales, key: float(scale)})
        return name

    def set_unlearning_scale(self, scale: float | dict[str, float], adapter_name: str | None = None) -> None:
        """Set the erasure strength: one number for every adapter (or ``adapter_name``), or a dict."""
        book = loaded_codebook(self)
        if book is not None and not isinstance(scale, dict) and adapter_name in (None, book["name"]):
            book["scale"] = _check_scale(scale)  # a codebook edit: ĥ + scale·(ĥ_edit − ĥ)
            if adapter_name is not None or not self._unlearning_state()["keys"]:
                return
        state = self._sync_unlearning_state(refuse_baked=True)
        loaded = list(state["keys"])
        wanted = dict(scale) if isinstance(scale, dict) else dict.fromkeys([adapter_name] if adapter_name else loaded,
                                                                             scale)
        unknown = sorted(set(wanted) - set(loaded))
        if unknown:
            raise UnknownConceptError(f"No unlearning adapter named {', '.join(map(repr, unknown))}; loaded: {loaded}.")
        wanted = {n: _check_scale(v) for n, v in wanted.items()}
        self._refuse_fused_or_disabled("changing the scale")  # checked first: a refused call changes nothing
        self._set_lora_scales({**self._lora_scales(), **{state["keys"][n]: v for n, v in wanted.items()}})

    @property
    def unlearning_adapters(self) -> dict[str, float]:
        """Loaded unlearning adapters and the scales in effect, read from PEFT's layers: 0.0 for an
        adapter that ``set_adapters`` left out or ``disable_lora`` switched off; the fused scale for a
        fused one (``fuse_lora(lora_scale=...)`` multiplies it)."""
        state = self._sync_unlearning_state()
        scales = self._lora_scales()
        book = loaded_codebook(self)
        return {**{n: scales.get(k, 0.0) for n, k in state["keys"].items() if n not in state["baked"]},
                **({book["name"]: book["scale"]} if book else {})}

    def unlearning_metadata(self, adapter_name: str) -> dict:
        """The metadata of a loaded unlearning adapter (method, concept, config, ...)."""
        state = self._sync_unlearning_state()
        if adapter_name not in state["metadata"]:
            raise UnknownConceptError(f"No unlearning adapter named {adapter_name!r}; loaded: {list(state['keys'])}.")
        return state["metadata"][adapter_name]

    def fuse_unlearning_adapter(self) -> None:
        """Merge the active unlearning adapters into the UNet weights (no inference overhead)."""
        state = self._sync_unlearning_state(refuse_baked=True)
        keys = list(state["keys"].values())
        merged = self._merged_keys()
        if not keys or (merged and set(keys) <= merged):
            return  # nothing loaded, or every one is fused already (here or by `pipe.fuse_lora()`)
        self._refuse_fused_or_disabled("fusing")
        # PEFT merges an adapter at its stored scale even when `set_adapters` left it out: activate
        # every one at the scale in effect first, so the fused model is the unfused one
        scales = self._lora_scales()
        self._set_lora_scales(scales)
        self.fuse_lora(components=["unet"], adapter_names=keys, lora_scale=1.0)

    def unfuse_unlearning_adapter(self) -> None:
        """Undo a fuse of the unlearning adapters (this package's or ``pipe.fuse_lora()``), restoring
        the layers' weights exactly."""
        self._sync_unlearning_state()
        layers = self._fused_unlearning_layers()
        if layers:
            self._restore_layers_(layers)

    def unload_unlearning_adapter(self, adapter_name: str | None = None) -> None:
        """Remove one unlearning adapter (or all): the base weights come back bit-for-bit.

        Any unlearning adapter still fused is unfused first. Refused with
        :class:`~concept_erase.errors.AdapterStateError`, changing nothing, when another LoRA was fused
        into the same layers since (restoring them would undo it too): ``pipe.unfuse_lora()`` first."""
        book = loaded_codebook(self)
        if book is not None and adapter_name in (None, book["name"]):
            detach_codebook_(self)  # a codebook edit: the hook goes, no weight was ever touched
            if adapter_name is not None or not self._unlearning_state()["keys"]:
                return
        state = self._sync_unlearning_state()
        names = [adapter_name] if adapter_name else list(state["keys"])
        for n in names:
            if n not in state["keys"]:
                raise UnknownConceptError(f"No unlearning adapter named {n!r}; loaded: {list(state['keys'])}.")
        layers = self._fused_unlearning_layers() | {m for n in names for m in state["layers"][n]}
        self._check_restorable(sorted(layers))  # before any change
        scales = self._lora_scales()
        self._restore_layers_(sorted(layers))
        present = self._lora_keys()
        gone = [state["keys"][n] for n in names]
        self.delete_adapters([k for k in gone if k in present])
        for n in names:
            for mapping in (state["keys"], state["layers"], state["metadata"]):
                mapping.pop(n)
            state["baked"].discard(n)
        still_used = {m for ms in state["layers"].values() for m in ms}
        for m in list(state["originals"]):
            if m not in still_used:
                del state["originals"][m], state["merged_at_load"][m]
        if not self._lora_keys():
            self.unet.unload_lora()  # no LoRA left in the UNet: PEFT's wrappers go too (a text encoder's stay)
        else:
            self._set_lora_scales({k: v for k, v in scales.items() if k not in gone})

    # ----- internals: what PEFT's layers say -----
    def _unlearning_state(self) -> dict:
        state = self.__dict__.get("_concept_erase_state")
        if state is None:
            state = {
                "keys": {},            # adapter name -> PEFT adapter key
                "layers": {},          # adapter name -> UNet modules it changes
                "metadata": {},        # adapter name -> its metadata
                "originals": {},       # module -> its weight when the first adapter on it was loaded (CPU)
                "merged_at_load": {},  # module -> LoRAs already fused into that weight then
                "baked": set(),        # names diffusers removed while fused: their change is in the weights
            }
            self.__dict__["_concept_erase_state"] = state
        return state

    def _tuner_layers(self) -> dict:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return {n: m for n, m in self.unet.named_modules() if isinstance(m, BaseTunerLayer)}

    def _lora_keys(self) -> set[str]:
        return {k for m in self._tuner_layers().values() for k in getattr(m, "lora_A", {})}

    def _lora_scales(self) -> dict[str, float]:
        """Every LoRA adapter of the UNet that is in effect -> its scale, from PEFT's layers.

        PEFT stores ``scaling = scale · lora_alpha / r``; an adapter left out by ``set_adapters`` or
        switched off by ``disable_lora`` has scale 0. Our adapters are always listed (0.0 when off)."""
        ours = set(self._unlearning_state()["keys"].values())
        seen: dict[str, list[float]] = {}
        for module in self._tuner_layers().values():
            for key in getattr(module, "lora_A", {}):
                on = not module.disable_adapters and key in module.active_adapters
                if not on and key not in ours:
                    continue
                base = module.lora_alpha[key] / (math.sqrt(module.r[key]) if module.use_rslora.get(key) else module.r[key])
                seen.setdefault(key, []).append(module.scaling[key] / base if on else 0.0)
        out = {}
        for key, values in seen.items():
            if any(not math.isclose(v, values[0], rel_tol=1e-6, abs_tol=1e-9) for v in values):
                logger.warning("LoRA adapter %r has different scales in different layers (%.4g to %.4g; set per "
                               "block with `set_adapters`); reporting the first layer's.", key, min(values), max(values))
            out[key] = float(f"{values[0]:.12g}")  # scaling / (alpha / r) is the scale up to a rounding
        return out

    def _set_lora_scales(self, scales: dict[str, float]) -> None:
        if scales:
            # the UNet's, not the pipeline's `set_adapters`: that one would also switch off a text
            # encoder's LoRAs that are not in `scales` (unlearning adapters live in the UNet only)
            self.unet.set_adapters(list(scales), [float(v) for v in scales.values()])

    def _merged_keys(self) -> set[str]:
        return {k for m in self._tuner_layers().values() for k in m.merged_adapters}

    def _fused_unlearning_layers(self) -> set[str]:
        """UNet modules into which one of our adapters is fused now."""
        ours = set(self._unlearning_state()["keys"].values())
        return {n for n, m in self._tuner_layers().items() if ours & set(m.merged_adapters)}

    def _refuse_fused_or_disabled(self, doing: str) -> None:
        state = self._unlearning_state()
        fused = sorted(n for n, k in state["keys"].items() if k in self._merged_keys())
        if fused:
            raise AdapterStateError(
                f"Unlearning adapter(s) {fused} are fused into the UNet weights (by `pipe.fuse_unlearning_adapter()` "
                f"or diffusers' `pipe.fuse_lora()`); {doing} needs them unfused. Call "
                "`pipe.unfuse_unlearning_adapter()` first (it restores the weights exactly).")
        if any(m.disable_adapters for m in self._tuner_layers().values()):
            raise AdapterStateError(
                f"The pipeline's LoRA layers are switched off by diffusers' `pipe.disable_lora()`, so {doing} would "
                "have no effect. Call `pipe.enable_lora()` first.")

    def _sync_unlearning_state(self, *, refuse_baked: bool = False) -> dict:
        """Forget adapters that diffusers removed (``delete_adapters``, ``unload_lora_weights``) and
        left no trace of; mark those it removed while fused (their change stays in the weights)."""
        state = self._unlearning_state()
        present = self._lora_keys()
        for name, key in list(state["keys"].items()):
            if key in present or name in state["baked"]:
                continue
            if all(_same_weight(self.unet.get_submodule(m), state["originals"][m]) for m in state["layers"][name]):
                logger.info("Unlearning adapter %r was removed by diffusers; forgetting it.", name)
                for mapping in (state["keys"], state["layers"], state["metadata"]):
                    mapping.pop(name)
                still_used = {m for ms in state["layers"].values() for m in ms}
                for m in list(state["originals"]):
                    if m not in still_used:
                        del state["originals"][m], state["merged_at_load"][m]
            else:
                state["baked"].add(name)
        if state["baked"]:
            names = sorted(state["baked"])
            message = (
                f"Unlearning adapter(s) {names} were removed by diffusers (`pipe.unload_lora_weights()` or "
                "`pipe.delete_adapters()`) while fused, so their change stays in the UNet weights. Call "
                f"`pipe.unload_unlearning_adapter({names[0]!r})` to restore the weights they were loaded on, bit for "
                "bit.")
            if refuse_baked:
                raise AdapterStateError(message)
            logger.warning(message)
        return state

    def _check_restorable(self, layers) -> None:
        """Raise if writing back the saved weights of ``layers`` would undo a LoRA fused since."""
        state = self._unlearning_state()
        ours = set(state["keys"].values())
        for name in layers:
            module = self.unet.get_submodule(name)
            now = {k for k in getattr(module, "merged_adapters", ()) if k not in ours}
            then = set(state["merged_at_load"][name])
            if now != then:
                raise AdapterStateError(
                    f"Layer {name!r} has LoRA(s) {sorted(now) or 'none'} fused into it, but had {sorted(then) or 'none'} "
                    "when the unlearning adapter was loaded (diffusers' `pipe.fuse_lora()` / `pipe.unfuse_lora()` "
                    "since). Restoring the layer exactly would change those too: return them to how they were "
                    "(usually `pipe.unfuse_lora(components=['unet'])`) and call this again. Nothing was changed.")

    def _restore_layers_(self, layers) -> None:
        """Write back the saved weights of ``layers``: our adapters are no longer fused there."""
        state = self._unlearning_state()
        self._check_restorable(layers)
        ours = set(state["keys"].values())
        with torch.no_grad():
            for name in layers:
                module = self.unet.get_submodule(name)
                weight = _base_weight(module)
                weight.copy_(state["originals"][name].to(device=weight.device, dtype=weight.dtype))
                if hasattr(module, "merged_adapters"):
                    module.merged_adapters = [k for k in module.merged_adapters if k not in ours]
        if hasattr(self, "_merged_adapters"):  # diffusers' record of fused LoRAs (`pipe.fused_loras`)
            self._merged_adapters = set(self._merged_adapters) - (ours - self._merged_keys())


def _base_weight(module: torch.nn.Module) -> torch.Tensor:
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base.weight


def _same_weight(module: torch.nn.Module, original: torch.Tensor) -> bool:
    weight = _base_weight(module).detach()
    return torch.equal(original.to(dtype=weight.dtype), weight.cpu())


_METHODS = ("load_unlearning_adapter", "set_unlearning_scale", "unlearning_adapters", "unlearning_metadata",
            "fuse_unlearning_adapter", "unfuse_unlearning_adapter", "unload_unlearning_adapter",
            "_unlearning_state", "_tuner_layers", "_lora_keys", "_lora_scales", "_set_lora_scales", "_merged_keys",
            "_fused_unlearning_layers", "_refuse_fused_or_disabled", "_sync_unlearning_state", "_check_restorable",
            "_restore_layers_")


def install_pipeline_methods(pipeline_class: type | None = None) -> None:
    """Attach the unlearning methods to ``diffusers.DiffusionPipeline`` (or ``pipeline_class``); idempotent."""
    if pipeline_class is None:
        from diffusers import DiffusionPipeline as pipeline_class

    for name in _METHODS:
        if not hasattr(pipeline_class, name):
            setattr(pipeline_class, name, UnlearningMixin.__dict__[name])
