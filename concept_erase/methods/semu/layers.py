"""The SEMU layer: a frozen base layer plus ``U_r R V_rᵀ`` with only ``R`` trainable (SEMU, arXiv 2502.07587).

It has LoRA's structure with ``lora_A = V_rᵀ`` and ``lora_B = U_r R``: a linear layer adds
``B (A x)``, a conv layer adds a ``(r, in, kh, kw)`` conv followed by a 1x1 conv. ``R`` starts at
zero, so a fresh adapter reproduces the base model exactly. ``inject_`` swaps wrappers in and
``remove_`` puts the untouched base modules back, so removal is exact by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidConfigError

__all__ = ["SemuLayer", "inject_", "remove_", "semu_layers"]


class SemuLayer(nn.Module):
    def __init__(self, base: nn.Module, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise InvalidConfigError(f"SEMU adapts nn.Linear and nn.Conv2d layers, not {type(base).__name__}.")
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise InvalidConfigError("SEMU does not adapt grouped convolutions.")
        self.base = base
        r = u.shape[1]
        dtype, device = base.weight.dtype, base.weight.device
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
        a, b = self.lora_factors()
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
