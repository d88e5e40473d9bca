"""The adapter file: one safetensors file of LoRA factors plus concept-erase's own metadata.

Tensors use diffusers/PEFT LoRA keys, ``unet.<module>.lora_A.weight`` (``V_rᵀ``, r × in) and
``unet.<module>.lora_B.weight`` (``U_r R``, out × r), so ``pipe.load_lora_weights(file)`` from
unmodified diffusers loads it. With no ``alpha`` entries diffusers uses a scale of 1, so the fused
weight is exactly ``W + B·A``. Our metadata is sorted JSON under the header key ``concept_erase``.
Files in the other UNet LoRA key styles (diffusers' training scripts, kohya / A1111 / ComfyUI) load
too, and :meth:`UnlearningAdapter.save_kohya` writes the kohya style: see :mod:`concept_erase.lora_formats`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._io import atomic_path
from .errors import AdapterFormatError, ArchitectureMismatchError
from .version import __version__

__all__ = ["UnlearningAdapter", "FORMAT_VERSION", "METADATA_KEY", "unet_fingerprint", "load_safetensors",
           "parse_metadata"]

FORMAT_VERSION = 1
METADATA_KEY = "concept_erase"
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # what diffusers reads (diffusers.loaders.lora_base)
_PEFT_KEY = re.compile(r"^unet\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_METADATA_BYTES = 1 << 20  # our JSON is a few KiB (prompts, config); more is not an adapter of ours
MAX_METADATA_DEPTH = 32
# metadata fields this package reads, and the JSON types they must have
_METADATA_TYPES = {
    "format_version": int, "library_version": str, "method": str, "base_model": str, "base_fingerprint": str,
    "concept": dict, "config": dict, "ranks": dict, "trainable_parameters": int, "trainable_fraction": (int, float),
    "seconds": (int, float), "source_format": str, "name": str, "compression_error": (int, float),
}
_CONCEPT_TYPES = {"name": str, "forget": list, "anchor": list, "retain": list, "paraphrases": list,
                  "target": (dict, type(None)), "description": str}


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


def parse_metadata(text: str | None, where: str) -> dict:
    """Our metadata JSON -> dict, every field this package reads of the right type; anything else
    raises :class:`AdapterFormatError` naming ``where`` and the problem."""
    if text is None:
        return {}
    if len(text) > MAX_METADATA_BYTES:
        raise AdapterFormatError(f"{where}: the `{METADATA_KEY}` metadata is {len(text):,} characters long (at most "
                                 f"{MAX_METADATA_BYTES:,} are accepted); the file was not written by concept-erase.")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep for the parser
        raise AdapterFormatError(f"{where}: the `{METADATA_KEY}` metadata is not valid JSON.") from None
    if not isinstance(meta, dict):
        raise AdapterFormatError(f"{where}: the `{METADATA_KEY}` metadata must be a JSON object, but is a "
                                 f"{type(meta).__name__}.")
    if _depth(meta) > MAX_METADATA_DEPTH:
        raise AdapterFormatError(f"{where}: the `{METADATA_KEY}` metadata is nested more than {MAX_METADATA_DEPTH} "
                                 "levels deep; the file was not written by concept-erase.")
    for fields, obj, prefix in ((_METADATA_TYPES, meta, ""), (_CONCEPT_TYPES, meta.get("concept"), "concept.")):
        for key, kind in fields.items():
            if isinstance(obj, dict) and key in obj:
                value = obj[key]
                if not isinstance(value, kind) or isinstance(value, bool):
                    names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                    raise AdapterFormatError(f"{where}: metadata field `{prefix}{key}` must be a {names}, but is "
                                             f"{json.dumps(value)[:80]}.")
    version = meta.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{where} uses adapter format {version}, newer than this concept-erase understands ({FORMAT_VERSION}). "
            "Upgrade: pip install -U concept-erase.")
    if version < 1:
        raise AdapterFormatError(f"{where}: adapter format {version} does not exist (formats start at 1).")
    return meta


def unet_fingerprint(unet: torch.nn.Module) -> str:
    """A short hash of the UNet's architecture: every parameter's name and shape (not its values)."""
    h = hashlib.sha256()
    for name, p in sorted(unet.state_dict().items()):
        h.update(f"{name}:{tuple(p.shape)}\n".encode())
    return h.hexdigest()[:16]


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file, refusing anything else (pickles, truncated or corrupt files)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError(f"Adapter file {str(path)!r} does not exist.")
    with open(path, "rb") as f:
        head = f.read(8)
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise AdapterFormatError(
            f"{str(path)!r} looks like a pickled PyTorch checkpoint. concept-erase only loads safetensors files "
            "(pickles can run code); convert it with `safetensors.torch.save_file(torch.load(path), out)` "
            "only if you trust its source."
        )
    try:
        tensors, meta = {}, {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise AdapterFormatError(
            f"{str(path)!r} is not a valid safetensors file ({e}). It may be truncated or corrupt: download or "
            "train it again."
        ) from None
    return tensors, meta


@dataclass
class UnlearningAdapter:
    """Low-rank deltas for some UNet modules, and what made them.

    ``tensors`` maps PEFT LoRA keys to tensors; ``metadata`` is a JSON-serialisable dict
    (format version, library version, method, concept, config, per-layer ranks, trainable
    parameters, base-UNet fingerprint, ...).
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # ----- structure -----
    def _validate(self) -> None:
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in self.tensors.items():
            m = _PEFT_KEY.match(key)
            if not m:
                raise AdapterFormatError(
                    f"Unexpected tensor key {key!r}: an unlearning adapter holds UNet LoRA factors only, as PEFT "
                    "`unet.<module>.lora_A.weight` / `.lora_B.weight`, diffusers `unet.<module>.lora.down.weight` / "
                    "`.lora.up.weight` or kohya `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`."
                )
            pairs.setdefault(m["module"], {})[m["which"]] = t
        if not pairs:
            raise AdapterFormatError("The adapter holds no LoRA tensors.")
        for module, ab in pairs.items():
            if set(ab) != {"A", "B"}:
                missing = "lora_B" if "A" in ab else "lora_A"
                raise AdapterFormatError(f"Layer {module!r} has no {missing} tensor; the file is incomplete.")
            a, b = ab["A"], ab["B"]
            if not all(isinstance(t, torch.Tensor) for t in (a, b)):
                raise AdapterFormatError(f"Layer {module!r}: the LoRA factors must be tensors.")
            if (a.ndim not in (2, 4) or b.ndim != a.ndim or a.shape[0] != b.shape[1]
                    or (a.ndim == 4 and tuple(b.shape[2:]) != (1, 1))):
                raise AdapterFormatError(
                    f"Layer {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a "
                    "low-rank pair (expected A (r, in[, kh, kw]) and B (out, r[, 1, 1]))."
                )
            if a.shape[0] == 0 or 0 in a.shape or 0 in b.shape:
                raise AdapterFormatError(f"Layer {module!r} has rank 0 or an empty dimension (lora_A "
                                         f"{tuple(a.shape)}, lora_B {tuple(b.shape)}); the file is corrupt.")
            for name, t in (("lora_A", a), ("lora_B", b)):
                if t.dtype not in _FLOAT_DTYPES:
                    raise AdapterFormatError(f"Layer {module!r}: {name} has dtype {t.dtype}; LoRA factors are "
                                             "float16, bfloat16, float32 or float64.")
                if not torch.isfinite(t).all():
                    raise AdapterFormatError(f"Layer {module!r}: {name} holds NaN or inf values; the file is corrupt.")
        self._pairs = {m: (ab["A"], ab["B"]) for m, ab in sorted(pairs.items())}

    @property
    def modules(self) -> list[str]:
        return list(self._pairs)

    @property
    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, b) in self._pairs.items()}

    @property
    def name(self) -> str:
        """The concept's name for display (any text: dots, spaces, unicode); never used as a key."""
        concept = self.metadata.get("concept") if isinstance(self.metadata, dict) else None
        for name in ((concept or {}).get("name") if isinstance(concept, dict) else None, self.metadata.get("name")):
            if isinstance(name, str) and name.strip():
                return name
        return "unlearning"

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pairs[module]

    def delta_weight(self, module: str) -> torch.Tensor:
        """Dense ``B·A`` in the module weight's shape."""
        a, b = self._pairs[module]
        if a.ndim == 2:
            return b @ a
        return (b.flatten(1) @ a.flatten(1)).reshape(b.shape[0], *a.shape[1:])

    # ----- compatibility -----
    def check_compatible(self, unet: torch.nn.Module) -> None:
        """Raise :class:`ArchitectureMismatchError` naming the first layer that does not fit ``unet``."""
        modules = dict(unet.named_modules())
        for module, (a, b) in self._pairs.items():
            target = modules.get(module)
            if target is None:
                raise ArchitectureMismatchError(
                    f"This adapter was made for another UNet: it adapts layer {module!r}, which this UNet does not "
                    f"have (adapter fingerprint {self.metadata.get('base_fingerprint', '?')}, this UNet "
                    f"{unet_fingerprint(unet)}). Use it with the base model it was trained on."
                )
            base = getattr(target, "base_layer", target)  # a module PEFT already wrapped
            weight = getattr(base, "weight", None)
            expected = (b.shape[0], *a.shape[1:])
            if weight is None or tuple(weight.shape) != expected:
                raise ArchitectureMismatchError(
                    f"This adapter was made for another UNet: layer {module!r} has weight shape "
                    f"{tuple(weight.shape) if weight is not None else None} here, but the adapter expects "
                    f"{expected}. Use it with the base model it was trained on."
                )
            full = min(b.shape[0], a[0].numel())
            if a.shape[0] > full:
                raise AdapterFormatError(
                    f"Layer {module!r} has rank {a.shape[0]}, above min(out, in) = {full} of its weight: such factors "
                    f"cost more than the dense change they make. Re-export the adapter at rank ≤ {full}.")

    # ----- sizes -----
    @property
    def num_parameters(self) -> int:
        """Parameters stored in the file (Σ r·(in + out))."""
        return sum(a.numel() + b.numel() for a, b in self._pairs.values())

    @property
    def num_trainable(self) -> int:
        """Trainable parameters of the method (SEMU: Σ r²), from the metadata when present."""
        return int(self.metadata.get("trainable_parameters", self.num_parameters))

    # ----- files -----
    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write the adapter atomically as one safetensors file.

        The header holds our metadata (sorted JSON under ``concept_erase``) and diffusers' own
        ``lora_adapter_metadata`` (the ``peft.LoraConfig`` of :meth:`lora_config_kwargs`, keys prefixed
        ``unet.`` as diffusers' ``save_lora_weights`` writes them), so diffusers builds the adapter
        from the file's description instead of guessing ranks and alphas from tensor shapes."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__, **self.metadata}
        tensors = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in self.tensors.items()}
        lora_config = {f"unet.{k}": v for k, v in self.lora_config_kwargs().items()}
        header = {"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True),
                  LORA_ADAPTER_METADATA_KEY: json.dumps(lora_config, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "UnlearningAdapter":
        """Load and validate an adapter file: safetensors only, in any UNet LoRA key style diffusers reads.

        PEFT (``unet.<module>.lora_A.weight``), diffusers' training scripts (``unet.<module>.lora.down.weight``,
        ``unet.<block>.attn2.processor.to_k_lora.down.weight``) and kohya / A1111 / ComfyUI
        (``lora_unet_<module>.lora_down.weight`` + ``.alpha``, the alpha / rank scale folded into ``lora_B``),
        with or without concept-erase's metadata. Files that also change the text encoder are refused with
        :class:`AdapterFormatError`: loading their UNet half alone would silently give other images than the file
        gives in any other loader (see :mod:`concept_erase.lora_formats`).

        >>> UnlearningAdapter.load("no-red.kohya.safetensors").ranks  # doctest: +SKIP
        {'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k': 64, ...}
        """
        from .lora_formats import key_style, peft_from_diffusers

        where = repr(str(path))
        tensors, header = load_safetensors(path)
        meta = parse_metadata(header.get(METADATA_KEY), where)
        style = key_style(tensors, where)
        if style == "kohya":
            meta.setdefault("source_format", "kohya")
            return cls._from_kohya(tensors, meta, path)
        if style == "diffusers":
            meta.setdefault("source_format", "diffusers")
            tensors = peft_from_diffusers(tensors, where)
        return cls(tensors, meta)

    @classmethod
    def _from_kohya(cls, tensors, meta, path) -> "UnlearningAdapter":
        from .lora_formats import peft_from_kohya

        peft, names = peft_from_kohya(tensors, repr(str(path)))
        adapter = cls(peft, meta)
        adapter._kohya_names = names  # module -> flattened kohya name, for resolve_kohya_names
        return adapter

    def resolve_kohya_names(self, unet: torch.nn.Module) -> "UnlearningAdapter":
        """For an adapter read from a kohya file: its layers under ``unet``'s own module paths.

        kohya flattens module paths with ``_``; :meth:`load` reads them the way diffusers does, which is
        right for diffusers UNets. A name that is not a module of ``unet`` is matched exactly instead, by
        flattening ``unet``'s module paths; one that matches nothing raises :class:`ArchitectureMismatchError`.
        """
        names = getattr(self, "_kohya_names", None)
        if not names:
            return self
        modules = {n for n, _ in unet.named_modules()}
        flat = {n.replace(".", "_"): n for n in modules}
        renamed = {}
        for module in self.modules:
            real = module if module in modules else flat.get(names.get(module, module.replace(".", "_")))
            if real is None:
                raise ArchitectureMismatchError(
                    f"Kohya layer 'lora_unet_{names.get(module, module)}' matches no module of this UNet; the adapter "
                    "was made for another model.")
            renamed[module] = real
        if all(k == v for k, v in renamed.items()):
            return self
        out = {}
        for key, t in self.tensors.items():
            m = _PEFT_KEY.match(key)
            out[f"unet.{renamed[m['module']]}.lora_{m['which']}.weight"] = t
        return UnlearningAdapter(out, self.metadata)

    def to_kohya(self, *, alpha: float | None = None) -> dict[str, torch.Tensor]:
        """Tensors in the kohya / A1111 / ComfyUI key format (``lora_unet_<path>.lora_down.weight``, ...).

        Every layer carries the same ``alpha`` (default: the most common rank) and ``lora_up`` is
        pre-multiplied by ``rank / alpha``, so the kohya rule, scale = alpha / rank per layer, gives back
        exactly ``B·A`` for any mix of ranks, in kohya sd-scripts, A1111, ComfyUI and diffusers.
        """
        from .lora_formats import kohya_alpha, kohya_state_dict

        return kohya_state_dict(self._pairs, kohya_alpha(self.ranks) if alpha is None else float(alpha))

    def save_kohya(self, path: str | Path, *, alpha: float | None = None) -> Path:
        """Write a kohya-format file atomically (:meth:`to_kohya`), with kohya's ``ss_*`` and Stability AI's
        ``modelspec.*`` metadata (read by A1111 and Civitai) beside concept-erase's own.

        The file loads in A1111 / Forge, ComfyUI (``LoraLoader``), kohya sd-scripts and diffusers'
        ``load_lora_weights``, each giving the same images as the native file.
        """
        from safetensors.torch import save_file

        from .lora_formats import kohya_alpha, kohya_metadata

        path = Path(path)
        alpha = kohya_alpha(self.ranks) if alpha is None else float(alpha)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.to_kohya(alpha=alpha).items()}
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__, **self.metadata,
                "source_format": "kohya"}
        header = kohya_metadata(self._pairs, self.metadata, alpha=alpha, title=self.name, output_name=path.stem)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", **header,
                                                   METADATA_KEY: json.dumps(meta, sort_keys=True)})
        return path

    def summary(self) -> str:
        """A short human-readable description (what ``concept-erase info`` prints)."""
        m = self.metadata
        ranks = self.ranks
        lines = [
            f"concept       {self.name}",
            f"method        {m.get('method', '?')}",
            f"base          {m.get('base_model', '?')} (fingerprint {m.get('base_fingerprint', '?')})",
            f"layers        {len(ranks)}  ranks {min(ranks.values())}..{max(ranks.values())} (sum {sum(ranks.values())})",
            f"trainable     {self.num_trainable:,} parameters"
            + (f" = {m['trainable_fraction']:.3%} of the UNet" if "trainable_fraction" in m else ""),
            f"stored        {self.num_parameters:,} parameters",
        ]
        if "concept" in m:
            c = m["concept"]
            forget, anchor = c.get("forget") or [""], c.get("anchor") or [""]
            lines.append(f"forget        {len(c.get('forget') or [])} prompts, e.g. {forget[0]!r}")
            lines.append(f"anchor        e.g. {anchor[0]!r}")
            lines.append(f"retain        {len(c.get('retain', []))} prompts")
        if "seconds" in m:
            lines.append(f"erase time    {m['seconds']:.1f} s")
        return "\n".join(lines)

    # ----- diffusers' description and publishing -----
    def lora_config_kwargs(self) -> dict:
        """``peft.LoraConfig`` keyword arguments that describe this adapter exactly: the most common
        rank as ``r``, other ranks in ``rank_pattern``; ``lora_alpha`` equal to the rank everywhere
        (``alpha_pattern`` mirrors ``rank_pattern``), so PEFT's scale ``lora_alpha / r`` is 1 and the
        change is exactly ``B·A``. Checked by building the ``LoraConfig``.

        >>> adapter.lora_config_kwargs()["r"]  # doctest: +SKIP
        64
        """
        from collections import Counter

        from peft import LoraConfig

        ranks = self.ranks
        r = Counter(ranks.values()).most_common(1)[0][0]
        others = {m: k for m, k in ranks.items() if k != r}
        kwargs = {"r": r, "lora_alpha": r, "target_modules": sorted(ranks), "rank_pattern": others,
                  "alpha_pattern": dict(others)}
        LoraConfig(**kwargs)  # raises if PEFT would not accept it
        return kwargs

    def save_pretrained(self, directory: str | Path, *, repo_id: str | None = None, license: str | None = None,
                        evaluation: dict | None = None, overwrite: bool = False) -> Path:
        """Write a Hub-ready folder: ``pytorch_lora_weights.safetensors`` and a model card ``README.md``
        (see :func:`concept_erase.hub.save_pretrained`). Returns the folder.

        >>> adapter.save_pretrained("no-red-adapter", repo_id="me/no-red")  # doctest: +SKIP
        PosixPath('no-red-adapter')
        """
        from .hub import save_pretrained

        return save_pretrained(self, directory, repo_id=repo_id, license=license, evaluation=evaluation,
                               overwrite=overwrite)

    def push_to_hub(self, repo_id: str, *, token: str | bool | None = None, private: bool | None = None,
                    revision: str | None = None, commit_message: str | None = None, license: str | None = None,
                    evaluation: dict | None = None) -> str:
        """Upload the :meth:`save_pretrained` folder to the hub repo ``repo_id`` (created if needed,
        ``huggingface_hub.create_repo`` + ``upload_folder``). Returns the commit URL.

        >>> adapter.push_to_hub("me/no-red")  # doctest: +SKIP
        """
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, token=token, private=private, revision=revision,
                           commit_message=commit_message, license=license, evaluation=evaluation)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, weight_name: str | None = None,
                        subfolder: str | None = None, revision: str | None = None,
                        token: str | bool | None = None) -> "UnlearningAdapter":
        """Load an adapter from a file, a folder, a known name or a hub repo id
        (:func:`concept_erase.hub.resolve_adapter`; ``revision``/``token`` for hub repos).

        >>> UnlearningAdapter.from_pretrained("no-red").name
        'no-red'
        """
        from .hub import resolve_adapter

        return cls.load(resolve_adapter(name_or_path, weight_name=weight_name, subfolder=subfolder,
                                        revision=revision, token=token))
