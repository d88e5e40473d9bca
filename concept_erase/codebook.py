"""The codebook bottleneck of CodeUnlearn ("CodeUnlearn: Amortized Zero-Shot Machine Unlearning in
Language Models Using Discrete Concept", arXiv 2410.10866, §3), placed on the text embeddings that a
diffusion UNet's cross-attention consumes, and the file that switches some of its codes off.

**The bottleneck** (:class:`Codebook`) is a sparse top-k code selection over a learned dictionary
of C unit-norm codes e_j: for a token embedding h (one row of ``encoder_hidden_states``)::

    a = ReLU(W_enc (h − b) + b_enc)          # affinity of h to every code      (C,)
    z = TopK_k(a)                            # keep the k largest, zero the rest (sparse code)
    ĥ = Σ_j z_j e_j + b                      # the reconstruction cross-attention sees

Everything the UNet learns about the prompt flows through the k selected codes (no residual path),
which is what makes switching codes off an erasure. The paper's codebook sits inside a language
model's transformer; here it sits between the text encoder and the UNet, so the base model's
weights stay untouched and the bottleneck is trained once per text encoder (``methods/codebook.py``).

**An erasure** (:class:`CodebookEdit`, one safetensors file holding the codebook and the indices of
the codes switched off) is applied by a forward pre-hook on the UNet that replaces
``encoder_hidden_states`` by the edited reconstruction. Two ways to switch a code off:
``"zero"`` drops its coefficient after the top-k selection; ``"exclude"`` removes it from the
candidates, so the next-best codes are selected instead (the paper removes codes from the codebook).
Both make the concept *unspecified*, and an unspecified attribute is drawn from the model's prior
(on the shapes world, a background left unnamed is dark about half the time). A third mode, an
extension of the paper, makes it the anchor instead: ``"redirect"`` zeroes the codes and adds, for
each, a substitute vector s_j fitted in closed form when the edit is made (``methods/codebook.py``)::

    ĥ_redirect = Σ_{j ∉ off} z_j e_j + b + Σ_{j ∈ off} z_j s_j
``scale`` s interpolates: ĥ_s = ĥ + s·(ĥ_edit − ĥ), so s = 0 is the bottleneck with nothing erased.

It is **not a LoRA**: diffusers' ``load_lora_weights`` cannot load it. With plain diffusers, compute
``prompt_embeds`` yourself and pass ``edit.apply(prompt_embeds)`` as ``prompt_embeds=`` (and the same
for ``negative_prompt_embeds=``) to the pipeline call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_path
from .adapter import FORMAT_VERSION, METADATA_KEY, load_safetensors, parse_metadata
from .errors import AdapterFormatError, ArchitectureMismatchError, InvalidConfigError
from .version import __version__

__all__ = ["Codebook", "CodebookEdit", "DEACTIVATE_MODES", "is_codebook_file", "attach_codebook_",
           "detach_codebook_", "loaded_codebook"]

DEACTIVATE_MODES = ("zero", "exclude", "redirect")
_KEYS = ("codebook.encoder.weight", "codebook.encoder.bias", "codebook.dictionary", "codebook.bias")
_OFF_KEY = "codebook.off"
_SUBSTITUTE_KEY = "codebook.substitute"  # s_j of each switched-off code (redirect)
_PROBE_KEY = "codebook.probe"  # the base text encoder's embedding of "" (checks the codebook fits it)
_STATE = "_concept_erase_codebook"


class Codebook(nn.Module):
    """Top-k sparse codebook over ``dim``-wide token embeddings (``codes`` entries, ``k`` selected)."""

    def __init__(self, dim: int, codes: int, k: int):
        super().__init__()
        if not 1 <= k <= codes:
            raise InvalidConfigError(f"`k` must be in [1, codes={codes}] but is {k!r}.")
        self.k = k
        self.encoder = nn.Linear(dim, codes)  # W_enc (C, D), b_enc (C,)
        self.dictionary = nn.Parameter(F.normalize(torch.randn(codes, dim), dim=1))  # e_j (C, D)
        self.bias = nn.Parameter(torch.zeros(dim))  # b (D,)

    @property
    def num_codes(self) -> int:
        return self.dictionary.shape[0]

    def affinities(self, h: torch.Tensor) -> torch.Tensor:
        """a = ReLU(W_enc (h − b) + b_enc): ``(..., D)`` -> ``(..., C)``."""
        return F.relu(self.encoder(h - self.bias))

    def codes(self, h: torch.Tensor, off: torch.Tensor | None = None, mode: str = "zero") -> torch.Tensor:
        """The sparse code z ``(..., C)`` of ``h``; codes in ``off`` switched off as ``mode`` says."""
        a = self.affinities(h)
        if off is not None and len(off) and mode == "exclude":
            a = a.index_fill(-1, off, -1.0)  # never among the top k (affinities are >= 0)
        values, idx = a.topk(self.k, dim=-1)
        z = torch.zeros_like(a).scatter(-1, idx, values.clamp(min=0))
        if off is not None and len(off) and mode in ("zero", "redirect"):
            z = z.index_fill(-1, off, 0.0)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ F.normalize(self.dictionary, dim=1) + self.bias

    def forward(self, h: torch.Tensor, off: torch.Tensor | None = None, mode: str = "zero",
                scale: float = 1.0, substitute: torch.Tensor | None = None) -> torch.Tensor:
        """ĥ of ``h`` ``(..., D)``; with ``off``: ĥ + scale·(ĥ_edit − ĥ). ``mode="redirect"`` needs
        ``substitute`` ``(len(off), D)``: the vectors that replace the switched-off codes."""
        dtype = h.dtype
        h = h.to(self.bias.dtype)
        z = self.codes(h)
        base = self.decode(z)
        if off is None or not len(off) or scale == 0:
            return base.to(dtype)
        if mode == "redirect":
            if substitute is None or substitute.shape != (len(off), h.shape[-1]):
                raise InvalidConfigError(f"deactivate='redirect' needs a substitute of shape ({len(off)}, "
                                         f"{h.shape[-1]}), got {None if substitute is None else tuple(substitute.shape)}.")
        # "exclude" re-runs the top-k without the codes; "zero" and "redirect" drop them from this one
        edit = self.decode(self.codes(h, off, mode) if mode == "exclude" else z.index_fill(-1, off, 0.0))
        if mode == "redirect":
            edit = edit + z.index_select(-1, off) @ substitute.to(z.dtype)
        return (edit if scale == 1 else base + scale * (edit - base)).to(dtype)

    # ----- tensors -----
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"codebook.encoder.weight": self.encoder.weight, "codebook.encoder.bias": self.encoder.bias,
                "codebook.dictionary": self.dictionary, "codebook.bias": self.bias}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], k: int) -> "Codebook":
        missing = [key for key in _KEYS if key not in tensors]
        if missing:
            raise AdapterFormatError(f"The codebook file lacks {missing}; it is incomplete.")
        codes, dim = tensors["codebook.dictionary"].shape
        book = cls(dim, codes, k)
        with torch.no_grad():
            book.encoder.weight.copy_(tensors["codebook.encoder.weight"])
            book.encoder.bias.copy_(tensors["codebook.encoder.bias"])
            book.dictionary.copy_(tensors["codebook.dictionary"])
            book.bias.copy_(tensors["codebook.bias"])
        return book.requires_grad_(False).eval()


@dataclass
class CodebookEdit:
    """A codebook plus the codes switched off; saved and loaded as one safetensors file.

    ``metadata`` records the method, concept, config, the base model and the probe check. With no
    code switched off it is the bottleneck alone ("base with codebook").
    """

    codebook: Codebook
    off: torch.Tensor  # int64 indices of the codes switched off
    probe: torch.Tensor  # the base text encoder's embedding of "" (1, T, D)
    metadata: dict = field(default_factory=dict)
    substitute: torch.Tensor | None = None  # (len(off), D): what replaces each switched-off code (redirect)

    def __post_init__(self) -> None:
        self.off = torch.as_tensor(self.off, dtype=torch.int64).flatten()
        if len(self.off) and (self.off.min() < 0 or self.off.max() >= self.codebook.num_codes):
            raise AdapterFormatError(f"Code indices {self.off.tolist()[:5]}... are outside the codebook "
                                     f"(0..{self.codebook.num_codes - 1}); the file is corrupt.")
        if self.mode not in DEACTIVATE_MODES:
            raise AdapterFormatError(f"Unknown deactivation mode {self.mode!r}; expected one of {DEACTIVATE_MODES}.")
        if self.mode == "redirect":
            want = (len(self.off), self.codebook.dictionary.shape[1])
            if self.substitute is None or tuple(self.substitute.shape) != want:
                got = None if self.substitute is None else tuple(self.substitute.shape)
                raise AdapterFormatError(f"A 'redirect' codebook edit needs `{_SUBSTITUTE_KEY}` of shape {want} (one "
                                         f"vector per switched-off code), but has {got}; the file is incomplete.")

    @property
    def mode(self) -> str:
        return self.metadata.get("deactivate", "zero")

    @property
    def name(self) -> str:
        return self.metadata.get("concept", {}).get("name") or self.metadata.get("name") or "codebook"

    def apply(self, hidden_states: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Edited text embeddings ``(B, T, D)`` for a pipeline's ``prompt_embeds=`` (plain diffusers)."""
        book = self.codebook.to(hidden_states.device)
        with torch.no_grad():
            return book(hidden_states, self.off.to(hidden_states.device), self.mode, scale, self._substitute_on(
                hidden_states.device))

    def _substitute_on(self, device) -> torch.Tensor | None:
        return None if self.substitute is None else self.substitute.to(device)

    def check_compatible(self, pipe) -> None:
        """Refuse a codebook made for another text encoder: its probe must match this encoder's."""
        from .diffusion import encode_prompts

        probe = encode_prompts(pipe, [""]).float().cpu()
        if probe.shape != self.probe.shape:
            raise ArchitectureMismatchError(
                f"This codebook was trained for text embeddings of shape {tuple(self.probe.shape)}, but this "
                f"pipeline's are {tuple(probe.shape)}. Train one for it: `concept-erase codebook train --base ...`.")
        rel = float((probe - self.probe).norm() / (self.probe.norm() + 1e-12))
        if rel > 1e-3:
            raise ArchitectureMismatchError(
                f"This codebook was trained for another text encoder (its embedding of \"\" differs by {rel:.2%}). "
                "Train one for this base model with `concept-erase codebook train --base ...`.")

    # ----- sizes -----
    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.codebook.state_tensors().values())

    @property
    def num_trainable(self) -> int:
        return int(self.metadata.get("trainable_parameters", 0))

    @property
    def ranks(self) -> dict[str, int]:  # no LoRA layers
        return {}

    # ----- files -----
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().float().cpu().contiguous() for k, v in self.codebook.state_tensors().items()}
        out[_OFF_KEY] = self.off.cpu().contiguous()
        out[_PROBE_KEY] = self.probe.detach().float().cpu().contiguous()
        if self.substitute is not None:
            out[_SUBSTITUTE_KEY] = self.substitute.detach().float().cpu().contiguous()
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically as one safetensors file (codebook, switched-off codes, probe, metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__, "kind": "codebook",
                "k": self.codebook.k, **self.metadata}
        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp),
                      metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CodebookEdit":
        tensors, header = load_safetensors(path)
        meta = parse_metadata(header.get(METADATA_KEY), repr(str(path)))  # hostile metadata: the project's error
        if meta.get("kind") != "codebook" or _PROBE_KEY not in tensors:
            raise AdapterFormatError(f"{str(path)!r} is not a codebook file (no codebook tensors / kind).")
        k = meta.get("k")
        if not isinstance(k, int) or isinstance(k, bool):
            raise AdapterFormatError(f"{str(path)!r}: the codebook's top-k `k` is missing from the metadata.")
        bad = [key for key, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise AdapterFormatError(f"{str(path)!r}: tensor {bad[0]!r} holds NaN or inf values; the file is corrupt.")
        try:
            return cls(Codebook.from_tensors(tensors, k), tensors.get(_OFF_KEY, torch.zeros(0, dtype=torch.int64)),
                       tensors[_PROBE_KEY], meta, tensors.get(_SUBSTITUTE_KEY))
        except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as e:
            if isinstance(e, AdapterFormatError):
                raise
            raise AdapterFormatError(f"{str(path)!r}: the codebook's tensors do not fit together "
                                     f"({type(e).__name__}: {str(e)[:200]}).") from None

    def summary(self) -> str:
        m = self.metadata
        lines = [f"concept       {self.name}",
                 f"method        {m.get('method', 'codebook')} (codebook bottleneck, not a LoRA)",
                 f"base          {m.get('base_model', '?')}",
                 f"codebook      {self.codebook.num_codes} codes of width {self.codebook.dictionary.shape[1]}, "
                 f"top-{self.codebook.k}",
                 f"switched off  {len(self.off)} codes ({self.mode})"]
        if "seconds" in m:
            lines.append(f"erase time    {m['seconds']:.2f} s")
        return "\n".join(lines)


def is_codebook_file(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file holding a codebook (False for anything unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return _PROBE_KEY in f.keys()
    except Exception:  # not safetensors at all: the adapter loader says why
        return False


# ---------------------------------------------------------------- on a pipeline
def loaded_codebook(pipe) -> dict | None:
    """``{"name", "edit", "scale", "handle"}`` of the codebook edit on ``pipe``, or None."""
    return pipe.__dict__.get(_STATE)


def attach_codebook_(pipe, edit: CodebookEdit, *, name: str | None = None, scale: float = 1.0) -> str:
    """Put ``edit``'s bottleneck in front of ``pipe.unet``'s cross-attention inputs (one at a time)."""
    if loaded_codebook(pipe) is not None:
        raise AdapterFormatError(f"A codebook edit ({loaded_codebook(pipe)['name']!r}) is already loaded; unload it "
                                 "first with `pipe.unload_unlearning_adapter(name)` (codebook edits do not stack).")
    edit.check_compatible(pipe)
    device = next(pipe.unet.parameters()).device
    edit.codebook.to(device).requires_grad_(False)
    off, substitute = edit.off.to(device), edit._substitute_on(device)
    state = {"name": name or edit.name, "edit": edit, "scale": float(scale)}

    # Differentiable in the text embeddings (the codebook's own weights are frozen), so gradient-based
    # attacks on the prompt (adversarial prompts) see the bottleneck as part of the model.
    def pre_hook(module, args, kwargs):
        if "encoder_hidden_states" in kwargs:
            h = kwargs["encoder_hidden_states"]
            kwargs = {**kwargs, "encoder_hidden_states": edit.codebook(h, off, edit.mode, state["scale"], substitute)}
        elif len(args) > 2:
            args = (*args[:2], edit.codebook(args[2], off, edit.mode, state["scale"], substitute),
                    *args[3:])
        return args, kwargs

    state["handle"] = pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    pipe.__dict__[_STATE] = state
    return state["name"]


def detach_codebook_(pipe) -> None:
    """Take the bottleneck out again: the UNet sees the text encoder's embeddings as before."""
    state = pipe.__dict__.pop(_STATE, None)
    if state is not None:
        state["handle"].remove()
