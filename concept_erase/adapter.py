"""The adapter file: one safetensors file of LoRA factors plus concept-erase's own metadata.

Tensors use diffusers/PEFT LoRA keys, ``unet.<module>.lora_A.weight`` (``V_rᵀ``, r × in) and
``unet.<module>.lora_B.weight`` (``U_r R``, out × r), so ``pipe.load_lora_weights(file)`` from
unmodified diffusers loads it. With no ``alpha`` entries diffusers uses a scale of 1, so the fused
weight is exactly ``W + B·A``. Our metadata is sorted JSON under the header key ``concept_erase``.
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

__all__ = ["UnlearningAdapter", "FORMAT_VERSION", "METADATA_KEY", "unet_fingerprint", "load_safetensors"]

FORMAT_VERSION = 1
METADATA_KEY = "concept_erase"
_PEFT_KEY = re.compile(r"^unet\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
_KOHYA_KEY = re.compile(r"^lora_unet_(?P<module>.+)\.(?P<which>lora_down|lora_up|alpha)(\.weight)?$")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


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
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
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
                    f"Unexpected tensor key {key!r}: an unlearning adapter holds only "
                    "`unet.<module>.lora_A.weight` / `unet.<module>.lora_B.weight` keys."
                )
            pairs.setdefault(m["module"], {})[m["which"]] = t
        if not pairs:
            raise AdapterFormatError("The adapter holds no LoRA tensors.")
        for module, ab in pairs.items():
            if set(ab) != {"A", "B"}:
                missing = "lora_B" if "A" in ab else "lora_A"
                raise AdapterFormatError(f"Layer {module!r} has no {missing} tensor; the file is incomplete.")
            a, b = ab["A"], ab["B"]
            if a.ndim not in (2, 4) or b.ndim != a.ndim or a.shape[0] != b.shape[1]:
                raise AdapterFormatError(
                    f"Layer {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a "
                    "low-rank pair (expected A (r, in[, kh, kw]) and B (out, r[, 1, 1]))."
                )
            for name, t in (("lora_A", a), ("lora_B", b)):
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise AdapterFormatError(
                        f"Layer {module!r}: {name} holds NaN/inf or non-float values; the file is corrupt."
                    )
        self._pairs = {m: (ab["A"], ab["B"]) for m, ab in sorted(pairs.items())}

    @property
    def modules(self) -> list[str]:
        return list(self._pairs)

    @property
    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, b) in self._pairs.items()}

    @property
    def name(self) -> str:
        return self.metadata.get("concept", {}).get("name") or self.metadata.get("name") or "unlearning"

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
        """Write the adapter atomically as one safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__, **self.metadata}
        tensors = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "UnlearningAdapter":
        """Load and validate an adapter file (safetensors only; PEFT or kohya keys)."""
        tensors, header = load_safetensors(path)
        try:
            meta = json.loads(header.get(METADATA_KEY, "{}"))
        except json.JSONDecodeError:
            raise AdapterFormatError(f"{str(path)!r}: the `{METADATA_KEY}` metadata is not valid JSON.") from None
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise AdapterFormatError(
                f"{str(path)!r} uses adapter format {meta['format_version']}, newer than this concept-erase "
                f"understands ({FORMAT_VERSION}). Upgrade: pip install -U concept-erase."
            )
        if tensors and all(k.startswith("lora_unet_") for k in tensors):
            meta.setdefault("source_format", "kohya")
            return cls._from_kohya(tensors, meta, path)
        return cls(tensors, meta)

    @classmethod
    def _from_kohya(cls, tensors, meta, path) -> "UnlearningAdapter":
        # kohya flattens module paths with "_", which cannot be undone without the UNet: keep the
        # flattened name and let `resolve_kohya_names` map it against a UNet's modules on load.
        out = {}
        for key, t in tensors.items():
            m = _KOHYA_KEY.match(key)
            if not m:
                raise AdapterFormatError(f"{str(path)!r}: unexpected kohya key {key!r}.")
            if m["which"] == "alpha":
                continue
            rank = (tensors[key].shape[0] if m["which"] == "lora_down" else tensors[key].shape[1])
            alpha = tensors.get(f"lora_unet_{m['module']}.alpha")
            scale = float(alpha) / rank if alpha is not None else 1.0
            which = "A" if m["which"] == "lora_down" else "B"
            out[f"unet.{m['module']}.lora_{which}.weight"] = t * scale if which == "B" else t
        adapter = cls(out, meta)
        adapter._kohya = True
        return adapter

    def resolve_kohya_names(self, unet: torch.nn.Module) -> "UnlearningAdapter":
        """For an adapter read from a kohya file: map ``down_blocks_0_...`` back to module paths."""
        if not getattr(self, "_kohya", False):
            return self
        names = {n.replace(".", "_"): n for n, _ in unet.named_modules()}
        out = {}
        for key, t in self.tensors.items():
            m = _PEFT_KEY.match(key)
            real = names.get(m["module"])
            if real is None:
                raise ArchitectureMismatchError(
                    f"Kohya layer {m['module']!r} matches no module of this UNet; the adapter was made for another model."
                )
            out[f"unet.{real}.lora_{m['which']}.weight"] = t
        return UnlearningAdapter(out, self.metadata)

    def to_kohya(self) -> dict[str, torch.Tensor]:
        """Tensors in the kohya / A1111 key format (``lora_unet_<path>.lora_down.weight``, ...)."""
        out = {}
        for module, (a, b) in self._pairs.items():
            k = "lora_unet_" + module.replace(".", "_")
            out[f"{k}.lora_down.weight"] = a
            out[f"{k}.lora_up.weight"] = b
            out[f"{k}.alpha"] = torch.tensor(float(a.shape[0]))  # alpha = rank -> scale 1
        return out

    def save_kohya(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        meta = {"format_version": FORMAT_VERSION, "library_version": __version__, **self.metadata,
                "source_format": "kohya"}
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.to_kohya().items()}, str(tmp),
                      metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
        return Path(path)

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
            lines.append(f"forget        {len(c.get('forget', []))} prompts, e.g. {c.get('forget', [''])[0]!r}")
            lines.append(f"anchor        e.g. {c.get('anchor', [''])[0]!r}")
            lines.append(f"retain        {len(c.get('retain', []))} prompts")
        if "seconds" in m:
            lines.append(f"erase time    {m['seconds']:.1f} s")
        return "\n".join(lines)
