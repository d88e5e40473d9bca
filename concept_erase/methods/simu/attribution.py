"""SIMU's critical neurons ("SIMU: Selective Influence Machine Unlearning", Agarwal, Pamnani and
Hakkani-Tür, §3.1, the attribution score Att(w_l^k) and the layer-wise mask of Figure 1), on a UNet.

A *neuron* is one output unit of a target ``nn.Linear`` (a row of its weight): the feed-forward
layers' units, as in the paper's MLP neurons, and the attention projections' units. Its attribution
is the integrated gradient of the loss with respect to the neuron's activation, scaled from 0 to its
value (the knowledge-neuron attribution the paper builds on, Dai et al., arXiv 2104.08696, eq. 3),
by a Riemann sum of ``m`` steps::

    Att_b(k) = (1/m) Σ_{i=1..m} ∂L_b / ∂g_k  at g = i/m        # gate g_k multiplies activation k

for each example b (all target layers are gated together: the path runs from "no transformer-block
contribution" to the full model through the residual stream), then Att(k) = mean_b |Att_b(k)|.
The **layer-wise mask** keeps neuron k of layer l when Att(k) ≥ t · max_j Att(j) over that layer
(t = 0.3 and m = 5 are the paper's defaults, Figures 2-3). The **dual-neuron** variant (Figure 5)
keeps the forget-critical neurons that are *not* critical for the retain data:
M_dual = M_forget ∧ ¬M_retain.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from ...errors import InvalidConfigError

__all__ = ["neuron_gates", "attribution_scores", "critical_masks", "dual_masks", "MASK_KINDS"]

MASK_KINDS = ("forget", "dual")


@contextlib.contextmanager
def neuron_gates(modules: dict[str, nn.Module], gates: dict[str, torch.Tensor]):
    """Multiply every output unit of each module by its gate (``(B, out)``) inside the block."""
    handles = []

    def hook(gate):
        def fn(module, inputs, output):
            units = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            if output.shape[0] != gate.shape[0] or units != gate.shape[1]:
                raise InvalidConfigError(f"Neuron gates {tuple(gate.shape)} do not fit the output {tuple(output.shape)} "
                                         f"of {type(module).__name__}; SIMU gates nn.Linear and nn.Conv2d outputs.")
            if isinstance(module, nn.Linear):  # (B, ..., out)
                return output * gate.view(gate.shape[0], *([1] * (output.ndim - 2)), gate.shape[1])
            return output * gate.view(*gate.shape, *([1] * (output.ndim - 2)))  # conv: (B, out, H, W)

        return fn

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook(gates[name])))
        yield
    finally:
        for h in handles:
            h.remove()


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[0]


def attribution_scores(modules: dict[str, nn.Module], per_example_loss: Callable[[object], torch.Tensor],
                       batches: Iterable[object], *, steps: int = 5) -> dict[str, torch.Tensor]:
    """Att(k) = mean over examples of |(1/m) Σ_i ∂L_b/∂g_k (g = i/m)| for every output unit of ``modules``.

    ``per_example_loss(batch)`` runs the model on one batch and returns the loss of each example
    ``(B,)``; examples must not interact (a UNet in eval mode does not). Returns ``(out,)`` float64
    scores per module name.

    >>> lin = nn.Linear(2, 3)
    >>> s = attribution_scores({"lin": lin}, lambda x: (lin(x) ** 2).sum(-1), [torch.ones(4, 2)], steps=2)
    >>> s["lin"].shape
    torch.Size([3])
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidConfigError(f"`attribution_steps` must be a positive integer but is {steps!r}.")
    totals = {name: torch.zeros(_out_features(m), dtype=torch.float64) for name, m in modules.items()}
    count = 0
    for batch in batches:
        per_example = None  # Σ_i ∂L_b/∂g (B, out) per module
        for i in range(1, steps + 1):
            gates, size = {}, None
            for name, m in modules.items():
                size = size or _batch_size(batch)
                gates[name] = torch.full((size, _out_features(m)), i / steps, device=m.weight.device,
                                         dtype=m.weight.dtype, requires_grad=True)
            with neuron_gates(modules, gates):
                losses = per_example_loss(batch)
            grads = torch.autograd.grad(losses.sum(), list(gates.values()))  # example b only moves L_b
            if per_example is None:
                per_example = [g.detach().double() for g in grads]
            else:
                for acc, g in zip(per_example, grads):
                    acc.add_(g.detach().double())
        for (name, total), acc in zip(totals.items(), per_example):
            total.add_((acc / steps).abs().sum(0).cpu())
        count += per_example[0].shape[0]
    if count == 0:
        raise InvalidConfigError("SIMU attribution got no examples; give at least one forget prompt and image.")
    return {name: t / count for name, t in totals.items()}


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])


def critical_masks(scores: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Layer-wise mask: unit k of layer l is critical when Att(k) ≥ ``threshold`` · max Att over layer l.

    A layer whose scores are all zero has no critical unit.

    >>> critical_masks({"l": torch.tensor([1.0, 0.2, 0.5])}, 0.3)["l"]
    tensor([ True, False,  True])
    """
    if not 0 < threshold <= 1:
        raise InvalidConfigError(f"`threshold` must be in (0, 1] but is {threshold!r}.")
    out = {}
    for name, s in scores.items():
        top = s.max() if s.numel() else torch.tensor(0.0)
        out[name] = (s >= threshold * top) & (s > 0) if top > 0 else torch.zeros_like(s, dtype=torch.bool)
    return out


def dual_masks(forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dual-neuron masks: critical for the forget data and not for the retain data (M_f ∧ ¬M_r)."""
    if forget.keys() != retain.keys():
        raise InvalidConfigError("Forget and retain masks cover different layers.")
    return {name: forget[name] & ~retain[name] for name in forget}
