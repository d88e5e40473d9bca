"""The SEMU layer: a frozen base layer plus ``U_r R V_rᵀ`` with only ``R`` trainable ("SEMU: Singular
Value Decomposition for Efficient Machine Unlearning", arXiv 2502.07587).

It has LoRA's structure with ``lora_A = V_rᵀ`` and ``lora_B = U_r R``: a linear layer adds
``B (A x)``, a conv layer adds a ``(r, in, kh, kw)`` conv followed by a 1x1 conv. ``R`` starts at
zero, so a fresh adapter reproduces the base model exactly. ``U_r``, ``V_r`` and ``R`` are float32
whatever the base layer's dtype (the trainable weights and their optimiser state stay float32, as
in diffusers' training scripts); the factors are cast to the base layer's dtype in the forward pass. ``inject_`` swaps wrappers in and
``remove_`` puts the untouched base modules back, so removal is exact by construction.

For the "lora" ablation, :func:`peft_lora` injects PEFT LoRA layers ("LoRA: Low-Rank Adaptation of
Large Language Models", arXiv 2106.09685) of given per-layer ranks the same way: the original
modules are put back on exit, so the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidConfigError

__all__ = ["SemuLayer", "inject_", "remove_", "semu_layers", "lora_rank", "peft_lora", "lora_parameters",
           "lora_factors", "lora_disabled"]


class SemuLayer(nn.Module):
    def __init__(self, base: nn.Module, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise InvalidConfigError(f"SEMU adapts nn.Linear and nn.Conv2d layers, not {type(base).__name__}.")
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise InvalidConfigError("SEMU does not adapt grouped convolutions.")
        self.base = base
        r = u.shape[1]
        dtype, device = torch.promote_types(base.weight.dtype, torch.float32), base.weight.device  # at least float32
        self.register_buffer("u", u.to(device=device, dtype=dtype), persistent=False)  # (out, r)
        self.register_buffer("v", v.to(device=device, dtype=dtype), persistent=False)  # (in*kh*kw, r)
        self.r = nn.Parameter(torch.zeros(r, r, device=device, dtype=dtype))  # eq. 7: R initialised to 0
        self.scale = 1.0
        self.enabled = True

    @property
    def rank(self) -> int:
        return self.r.shape[0]

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lora_A, lora_B)`` in PEFT's shapes: ``A = V_rᵀ``, ``B = U_r R``."""
        a = self.v.T  # (r, in*k)
        b = self.u @ self.r  # (out, r)
        if isinstance(self.base, nn.Conv2d):
            a = a.reshape(self.rank, *self.base.weight.shape[1:])  # (r, in, kh, kw)
            b = b[:, :, None, None]  # (out, r, 1, 1)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        """Dense ``U_r R V_rᵀ`` in the base weight's shape."""
        return (self.u @ self.r @ self.v.T).reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled or self.scale == 0:
            return y
        a, b = (f.to(self.base.weight.dtype) for f in self.lora_factors())  # float32 -> the base dtype
        if isinstance(self.base, nn.Linear):
            return y + self.scale * F.linear(F.linear(x, a), b)
        base = self.base
        h = F.conv2d(x, a, None, base.stride, base.padding, base.dilation)
        return y + self.scale * F.conv2d(h, b)


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def inject_(root: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, SemuLayer]:
    """Wrap each named module of ``root`` in a :class:`SemuLayer` with factors ``(U_r, V_r)``."""
    layers = {}
    for name, (u, v) in factors.items():
        parent, child = _parent(root, name)
        layer = SemuLayer(getattr(parent, child), u, v)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


def semu_layers(root: nn.Module) -> dict[str, SemuLayer]:
    return {name: m for name, m in root.named_modules() if isinstance(m, SemuLayer)}


def remove_(root: nn.Module) -> None:
    """Put every wrapped base module back (its weights were never touched)."""
    for name, layer in semu_layers(root).items():
        parent, child = _parent(root, name)
        setattr(parent, child, layer.base)


# ---------------------------------------------------------------- the "lora" ablation (PEFT)
def lora_rank(semu_rank: int, weight_shape: tuple[int, ...] | torch.Size) -> int:
    """The LoRA rank with about as many parameters as SEMU's ``r²``: ``max(1, round(r² / (in + out)))``,
    ``in`` counting ``in·kh·kw`` for a conv (LoRA trains ``rank·(in + out)``).

    >>> lora_rank(32, (64, 64)), lora_rank(3, (320, 768)), lora_rank(40, (64, 32, 3, 3))
    (8, 1, 5)
    """
    out_features, in_features = weight_shape[0], math.prod(weight_shape[1:])
    return max(1, round(semu_rank * semu_rank / (in_features + out_features)))


@contextlib.contextmanager
def peft_lora(root: nn.Module, ranks: dict[str, int], *, adapter_name: str = "semu_ablation",
              seed: int = 0) -> Iterator[dict[str, nn.Module]]:
    """PEFT LoRA layers on the modules named in ``ranks`` (full module names -> rank), alpha = rank
    (scale 1), PEFT's default initialisation (A Kaiming-uniform, drawn from ``seed``; B zero).

    Yields ``{name: PEFT LoRA layer}``. On exit, even on errors, the original modules (whose weights
    PEFT never touched) are put back, and the ``requires_grad`` flags and ``peft_config`` attribute of
    ``root`` are restored, so ``root`` is exactly as it was. The global random state is not changed.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model

    originals = {name: root.get_submodule(name) for name in ranks}
    for name, module in originals.items():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or (isinstance(module, nn.Conv2d) and module.groups != 1):
            raise InvalidConfigError(f"The LoRA ablation adapts nn.Linear and ungrouped nn.Conv2d layers; {name!r} "
                                     f"is a {type(module).__name__}.")
    requires_grad = {name: p.requires_grad for name, p in root.named_parameters()}  # PEFT freezes the rest
    had_config = "peft_config" in root.__dict__
    saved_config = dict(root.__dict__["peft_config"]) if had_config else None
    # rank_pattern / alpha_pattern keys are regular expressions matched against the end of module names
    pattern = {re.escape(name): r for name, r in ranks.items()}
    config = LoraConfig(r=1, lora_alpha=1, target_modules=list(ranks), rank_pattern=pattern, alpha_pattern=pattern,
                        lora_dropout=0.0, bias="none", init_lora_weights=True)
    try:
        with torch.random.fork_rng(devices=[]):  # PEFT draws A from the global CPU generator
            torch.manual_seed(seed)
            inject_adapter_in_model(config, root, adapter_name=adapter_name)
        layers = {name: root.get_submodule(name) for name in ranks}
        # PEFT creates the LoRA weights in the base layer's dtype; train them in float32, as diffusers' scripts do
        cast_training_params([m for layer in layers.values() for m in (layer.lora_A, layer.lora_B)], torch.float32)
        for name, layer in layers.items():
            lora_a = getattr(layer, "lora_A", None)
            if (lora_a is None or adapter_name not in lora_a or lora_a[adapter_name].weight.shape[0] != ranks[name]
                    or layer.scaling[adapter_name] != 1.0):
                raise RuntimeError(f"PEFT did not give {name!r} a LoRA of rank {ranks[name]} and scale 1.")
        yield layers
    finally:
        for name, module in originals.items():
            parent, child = _parent(root, name)
            setattr(parent, child, module)
        for name, p in root.named_parameters():
            if name in requires_grad:
                p.requires_grad_(requires_grad[name])
        if had_config:
            root.peft_config = saved_config
        elif "peft_config" in root.__dict__:
            del root.peft_config


def lora_parameters(layer: nn.Module, adapter_name: str = "semu_ablation") -> list[nn.Parameter]:
    """The trainable ``[lora_A, lora_B]`` weights of a PEFT LoRA layer."""
    return [layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight]


def lora_factors(layer: nn.Module, adapter_name: str = "semu_ablation") -> tuple[torch.Tensor, torch.Tensor]:
    """``(lora_A, lora_B)`` of a PEFT LoRA layer in the adapter file's shapes, B scaled so that the
    delta is exactly ``B·A`` (``A (r, in[, kh, kw])``, ``B (out, r[, 1, 1])``)."""
    a = layer.lora_A[adapter_name].weight
    b = layer.lora_B[adapter_name].weight * layer.scaling[adapter_name]
    return a, b


@contextlib.contextmanager
def lora_disabled(layers: dict[str, nn.Module]):
    """The PEFT LoRA ``layers`` switched off inside the block (the frozen base model), on again after."""
    for layer in layers.values():
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers.values():
            layer.enable_adapters(True)
