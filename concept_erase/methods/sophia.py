"""Sophia, the clipped second-order optimiser (Liu et al., "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", arXiv 2305.14342, Algorithm 3), as SIMU uses it.

Per parameter θ with gradient g, every step::

    m ← β₁ m + (1 − β₁) g                          # EMA of gradients
    θ ← θ − η λ θ                                   # decoupled weight decay
    θ ← θ − η · clip(m / max(ρ h, ε), 1)            # element-wise clip to [−1, 1]

and every k steps, from a diagonal Hessian estimate ĥ, ``h ← β₂ h + (1 − β₂) ĥ``. The estimate here
is Gauss-Newton-Bartlett (GNB, Algorithm 2 of the paper) adapted to the MSE losses of a diffusion
UNet: with the model's prediction f on a batch of B examples, draw ŷ = sg(f) + z, z ~ N(0, I) (the
model's own Gaussian output distribution), ĝ = ∇ MSE(f, ŷ), ĥ = B · ĝ ⊙ ĝ (:func:`gnb_estimate`).

Why not the ``sophia-opt`` package: it is a one-release (2024) repackaging of the authors' research
code with no tests; its ``step(bs=5120)`` folds a batch-size constant into ρ, and its
``update_hessian`` squares whatever ``.grad`` holds. The update rule is short: this file implements
the paper's Algorithm 3 as written, and ``tests/test_simu.py`` checks it against a hand-written
reference on a quadratic. One property matters for masked training: a parameter whose gradient and
Hessian estimate are exactly zero (outside a mask) and that starts at zero never moves
(m = 0 ⇒ 0 / ε = 0; weight decay of 0 is 0).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidConfigError

__all__ = ["Sophia", "gnb_estimate"]


class Sophia(torch.optim.Optimizer):
    """Sophia with a caller-supplied diagonal Hessian estimate (:meth:`update_hessian`).

    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> opt = Sophia([p], lr=0.1, rho=1.0, weight_decay=0.0)
    >>> p.grad = torch.full((3,), 2.0); opt.update_hessian([torch.full((3,), 4.0)]); opt.step()
    >>> p.data  # m = 0.07, h = 0.04: clip(0.07 / 0.04, 1) = 1
    tensor([0.9000, 0.9000, 0.9000])
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99),
                 rho: float = 0.04, weight_decay: float = 0.1, eps: float = 1e-15):
        for name, value, ok in (("lr", lr, lr > 0), ("rho", rho, rho > 0), ("weight_decay", weight_decay,
                                weight_decay >= 0), ("eps", eps, eps > 0), ("betas[0]", betas[0], 0 <= betas[0] < 1),
                                ("betas[1]", betas[1], 0 <= betas[1] < 1)):
            if not ok:
                raise InvalidConfigError(f"Sophia: `{name}` is out of range: {value!r}.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, eps=eps))

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self, estimates: Sequence[torch.Tensor]) -> None:
        """h ← β₂ h + (1 − β₂) ĥ for every parameter, ``estimates`` in parameter order."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(estimates) != len(params):
            raise InvalidConfigError(f"Sophia.update_hessian got {len(estimates)} estimates for {len(params)} "
                                     "parameters.")
        i = 0
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                self._state(p)["hessian"].mul_(beta2).add_(estimates[i], alpha=1 - beta2)
                i += 1

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1 = group["betas"][0]
            lr, rho, wd, eps = group["lr"], group["rho"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m = state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                if wd:
                    p.mul_(1 - lr * wd)
                ratio = (m / torch.clamp(rho * state["hessian"], min=eps)).clamp_(-1.0, 1.0)
                p.add_(ratio, alpha=-lr)
        return loss


def gnb_estimate(predictions: Sequence[torch.Tensor], params: Sequence[torch.Tensor], *, batch_size: int,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Gauss-Newton-Bartlett diagonal Hessian estimate B·ĝ⊙ĝ of MSE losses on ``predictions``
    (each still attached to the graph; the graph is kept for the training backward pass)."""
    loss = 0.0
    for f in predictions:
        z = torch.randn(f.shape, generator=generator).to(device=f.device, dtype=f.dtype)
        loss = loss + F.mse_loss(f, f.detach() + z)
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return [batch_size * g * g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
