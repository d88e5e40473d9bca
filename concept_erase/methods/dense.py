"""Dense weight deltas -> LoRA factors, so every method ships the same kind of adapter file.

A method that changes whole weight matrices (ESD, gradient ascent, task vectors; UCE's edit is
low-rank but computed densely) hands its deltas ΔW here, one layer at a time. Each ΔW (a conv
kernel reshaped to ``out × in·kh·kw``) is factored by a thin SVD and truncated to the smallest rank
whose relative Frobenius error ‖ΔW − BA‖_F / ‖ΔW‖_F is at most ``max_error`` (optionally capped
at ``max_rank``); ``B = U_r S_r`` (out × r), ``A = V_rᵀ`` (r × in). The error actually obtained with
the stored float32 factors is measured and reported, per layer and over the whole adapter.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch

from dataclasses import dataclass

from ..adapter import UnlearningAdapter
from ..concepts import Concept
from ..config import Config, check_fraction, check_int, setting
from .common import make_adapter

__all__ = ["DenseExportSettings", "compress_delta", "adapter_from_deltas"]
logger = logging.getLogger(__name__)


@dataclass
class DenseExportSettings(Config):
    """The LoRA-export settings of every method whose deltas are dense; subclasses call ``super().__post_init__()``."""

    lora_max_error: float = setting(0.01, "largest relative error of the LoRA export of dense deltas, per layer")
    lora_max_rank: int | None = setting(None, "cap on the rank of the LoRA export of dense deltas")

    def __post_init__(self) -> None:
        check_fraction(self, "lora_max_error", low_open=False, high_open=True)
        if self.lora_max_rank is not None:
            check_int(self, "lora_max_rank")


def compress_delta(delta: torch.Tensor, *, max_error: float = 0.01, max_rank: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(lora_A, lora_B, relative_error)`` of one dense delta, in PEFT's shapes.

    Linear ``(out, in)`` -> A ``(r, in)``, B ``(out, r)``; conv ``(out, in, kh, kw)`` -> A
    ``(r, in, kh, kw)``, B ``(out, r, 1, 1)``. A zero delta gives rank-1 zero factors (B·A = 0 exactly).

    >>> a, b, err = compress_delta(torch.outer(torch.arange(3.0), torch.ones(4)))
    >>> a.shape, b.shape, err < 1e-6
    (torch.Size([1, 4]), torch.Size([3, 1]), True)
    """
    out_shape = delta.shape
    m = delta.detach().reshape(out_shape[0], -1).double()  # (out, in·kh·kw)
    total = float(m.norm())
    if total == 0.0:
        a = torch.zeros(1, m.shape[1], dtype=torch.float32)
        b = torch.zeros(out_shape[0], 1, dtype=torch.float32)
        err = 0.0
    else:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)  # (out, k), (k,), (k, in·kh·kw)
        energy = s * s
        tail = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # tail[k] = Σ_{i≥k} s_i²
        r = max(1, int((tail > (max_error * total) ** 2).sum()))  # smallest r with Σ_{i≥r} s_i² ≤ (ε‖ΔW‖)²
        if max_rank is not None:
            r = min(r, max_rank)
        b = (u[:, :r] * s[:r]).float()
        a = vh[:r].float()
        err = float((m - b.double() @ a.double()).norm()) / total
        del u, s, vh
    if delta.ndim == 4:
        a = a.reshape(a.shape[0], *out_shape[1:])
        b = b[:, :, None, None]
    return a.cpu().contiguous(), b.cpu().contiguous(), err


def adapter_from_deltas(deltas: Iterable[tuple[str, torch.Tensor]], *, pipe, method: str, concept: Concept,
                        config, trainable_parameters: int, start: float, max_error: float,
                        max_rank: int | None = None, extra: dict | None = None) -> UnlearningAdapter:
    """Compress ``(module name, ΔW)`` pairs (consumed one at a time) into an :class:`UnlearningAdapter`
    whose metadata has the fields every method reports."""
    tensors, ranks, errors = {}, {}, {}
    residual_sq = delta_sq = 0.0
    for name, delta in deltas:
        a, b, err = compress_delta(delta, max_error=max_error, max_rank=max_rank)
        norm_sq = float(delta.detach().double().norm()) ** 2
        tensors[f"unet.{name}.lora_A.weight"] = a
        tensors[f"unet.{name}.lora_B.weight"] = b
        ranks[name] = a.shape[0]
        errors[name] = err
        residual_sq += (err ** 2) * norm_sq
        delta_sq += norm_sq
        del delta
    adapter = make_adapter(
        tensors, pipe, method=method, concept=concept, config=config, ranks=ranks,
        trainable_parameters=trainable_parameters, start=start,
        # ‖ΔW − BA‖_F / ‖ΔW‖_F over all layers together, and the worst single layer
        compression_error=(residual_sq / delta_sq) ** 0.5 if delta_sq > 0 else 0.0,
        compression_error_max=max(errors.values(), default=0.0), compression_errors=errors,
        delta_norm=delta_sq ** 0.5, **(extra or {}),
    )
    meta = adapter.metadata
    logger.info("%s erased %r: %d layers, %d trainable parameters (%.3f%% of the UNet), compression error %.2e, "
                "%.1fs", method, concept.name, len(ranks), trainable_parameters,
                100 * meta["trainable_fraction"], meta["compression_error"], meta["seconds"])
    return adapter
