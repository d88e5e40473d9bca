"""Unlearning losses on a diffusion UNet, shared by SEMU and the peer methods.

Each loss is a function of the adapted model's prediction ``eps`` (a callable ``eps(x_t, t, c)``,
``c`` a :class:`~concept_erase.diffusion.Conditioning`) and of the frozen base model's ``base_eps``
(same signature, no gradient). ``target`` is what the UNet is trained to output at x_t — ε, v or x_0
as its scheduler predicts (:func:`~concept_erase.diffusion.training_target`); losses that compare two
model outputs (relabelling, ESD) do not use it, losses against the data (gradient ascent, the forget
gradient) must. Names are what ``SemuConfig(objective=...)`` and ``--objective`` accept.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InvalidConfigError

__all__ = ["OBJECTIVES", "GRADIENT_LOSSES", "forget_loss", "forget_target", "gradient_loss"]

Eps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _relabel_target(base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, eta: float):
    return base_eps(x_t, t, c_anchor), 1.0


def _esd_target(base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, eta: float):
    e_null, e_c = base_eps(x_t, t, c_null), base_eps(x_t, t, c_forget)
    return e_null - eta * (e_c - e_null), 1.0


def _ascent_target(base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, eta: float):
    return target, -1.0


# each objective is sign · MSE(ε_θ'(x_t, c_forget), y): what y and the sign are, with no gradient
_TARGETS = {"relabel": _relabel_target, "esd": _esd_target, "gradient_ascent": _ascent_target}


def forget_target(name: str, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, eta: float = 1.0
                  ) -> tuple[torch.Tensor, float]:
    """The objective ``name`` split into what needs no gradient and what does: ``(y, sign)`` such that
    the loss is ``sign · MSE(ε_θ'(x_t, c_forget), y)``. ``y`` depends only on the frozen base model and
    the batch, so it can be computed ahead of training, in large no-grad batches (SEMU's target pool).

    >>> y, sign = forget_target("relabel", base_eps, x_t, t, target, c_f, c_a, c_null)  # doctest: +SKIP
    >>> loss = sign * F.mse_loss(eps(x_t, t, c_f), y)                                    # doctest: +SKIP
    """
    if name not in _TARGETS:
        raise InvalidConfigError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
    with torch.no_grad():
        return _TARGETS[name](base_eps, x_t, t, target, c_forget, c_anchor, c_null, eta)


def _regression(name: str, eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, eta: float):
    y, sign = forget_target(name, base_eps, x_t, t, target, c_forget, c_anchor, c_null, eta=eta)
    return sign * F.mse_loss(eps(x_t, t, c_forget), y)


def relabel(eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, eta: float = 1.0):
    """Relabelling (SalUn, arXiv 2310.12508; SEMU, arXiv 2502.07587): MSE(ε_θ'(x_t, c_f), sg ε_θ(x_t, c_a))."""
    return _regression("relabel", eps, base_eps, x_t, t, target, c_forget, c_anchor, c_null, eta)


def esd(eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, eta: float = 1.0):
    """ESD negative guidance (arXiv 2303.07345, eq. 5): MSE(ε_θ'(x_t, c), ε*(x_t, ∅) − η(ε*(x_t, c) − ε*(x_t, ∅)))."""
    return _regression("esd", eps, base_eps, x_t, t, target, c_forget, c_anchor, c_null, eta)


def gradient_ascent(eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, eta: float = 1.0):
    """Plain gradient ascent on the denoising loss of the forget data: −MSE(ε_θ'(x_t, c_f), target)."""
    return _regression("gradient_ascent", eps, base_eps, x_t, t, target, c_forget, c_anchor, c_null, eta)


OBJECTIVES = {"relabel": relabel, "esd": esd, "gradient_ascent": gradient_ascent}


def forget_loss(name: str) -> Callable:
    if name not in OBJECTIVES:
        raise InvalidConfigError(f"Unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]


def guided_ascent(eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, guidance: float = 7.5):
    """The official SEMU SD code's forget-gradient loss: −MSE(target, (1+w)·ε_θ(x_t, c_f) − w·ε_θ(x_t, ∅))
    (the official code's target is ε; guidance is linear, so a v-predicting UNet's guided v is compared with v)."""
    guided = (1 + guidance) * eps(x_t, t, c_forget) - guidance * eps(x_t, t, c_null)
    return -F.mse_loss(guided, target)


def relabel_gradient(eps: Eps, base_eps: Eps, x_t, t, target, c_forget, c_anchor, c_null, *, guidance: float = 7.5):
    """The relabel loss itself: its gradient at the base weights points where training will go."""
    with torch.no_grad():
        target = eps(x_t, t, c_anchor)
    return F.mse_loss(eps(x_t, t, c_forget), target)


GRADIENT_LOSSES = {"guided_ascent": guided_ascent, "relabel": relabel_gradient}


def gradient_loss(name: str) -> Callable:
    if name not in GRADIENT_LOSSES:
        raise InvalidConfigError(f"Unknown gradient loss {name!r}; choose one of {', '.join(GRADIENT_LOSSES)}.")
    return GRADIENT_LOSSES[name]
