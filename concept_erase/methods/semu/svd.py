"""SEMU's subspace: project the forget gradient perpendicular to the weight, then keep the top
singular directions by explained variance ("SEMU: Singular Value Decomposition for Efficient Machine
Unlearning", arXiv 2502.07587, eq. 4-6). ``random_subspace`` is the ablation that replaces those
directions by random orthonormal ones of the same rank.

``preserved_basis`` and the ``keep_off`` argument of ``gradient_subspace`` are an option on top of SEMU:
the null-space constraint of model editing ("AlphaEdit: Null-Space Constrained Knowledge Editing for
Language Models", arXiv 2410.02355, eq. 4-5; for concept erasure, "SPEED: Scalable, Precise, and
Efficient Concept Erasure for Diffusion Models", arXiv 2503.07392, which also preserves the empty
prompt). A cross-attention key/value layer sees only the text encoder's outputs, so when every
adapted direction V_r is orthogonal to the principal directions of the embeddings of the prompts to
keep, U_r R V_rᵀ c = 0 for every c in their span whatever R becomes: those prompts reach the adapter
only through the share of their energy left outside it."""

from __future__ import annotations

import torch

from ...errors import InvalidConfigError

__all__ = ["as_matrix", "project_perpendicular", "select_rank", "prepared_gradient", "gradient_subspace",
           "random_subspace", "preserved_basis"]


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A linear weight ``(out, in)`` as is; a conv kernel ``(out, in, kh, kw)`` as ``(out, in*kh*kw)``."""
    return t.reshape(t.shape[0], -1)


def project_perpendicular(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """G⊥ = G − (⟨G, W⟩_F / ‖W‖_F²) W, so that ⟨G⊥, W⟩_F = 0.

    The official code divides by ‖W‖_F (exact only when ‖W‖_F = 1); this is the exact projection.
    """
    norm_sq = (weight * weight).sum()
    if norm_sq == 0:
        return grad.clone()
    return grad - ((grad * weight).sum() / norm_sq) * weight


def select_rank(singular_values: torch.Tensor, gamma: float) -> int:
    """The smallest k whose top-k singular directions explain at least ``gamma`` of the variance.

    Explained variance e_i = s_i² / Σ s_j². The result is at least 1 and at most the numerical
    rank (singular values above ``max(m, n) · eps · s_max`` count), so ``gamma = 1.0`` keeps every
    non-zero direction. (The official code's ``searchsorted(cumsum, γ, right)`` can return 0.)

    >>> select_rank(torch.tensor([3.0, 2.0, 1.0, 0.0]), 0.9)  # e = [9, 4, 1] / 14; 13/14 ≥ 0.9
    2
    """
    if not 0 < gamma <= 1:
        raise InvalidConfigError(f"`gamma` must be in (0, 1] but is {gamma!r}.")
    s = singular_values.detach().double()
    if s.numel() == 0 or s.max() <= 0:
        return 1
    tol = s.max() * torch.finfo(singular_values.dtype).eps * max(s.numel(), 1) * 4
    numerical_rank = int((s > tol).sum())
    energy = s * s
    cum = torch.cumsum(energy, 0) / energy.sum()
    k = int((cum < gamma - 1e-12).sum()) + 1  # first index where cum >= gamma, 1-based
    return max(1, min(k, numerical_rank))


def prepared_gradient(grad: torch.Tensor, weight: torch.Tensor, *, project: bool = True,
                      row_mask: torch.Tensor | None = None, keep_off: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 matrix whose SVD :func:`gradient_subspace` takes: the gradient as ``(out, in·k)``,
    projected perpendicular to the weight, then restricted to ``row_mask``'s rows and kept off
    ``keep_off``'s input directions (each step only when asked)."""
    g = as_matrix(grad).double()
    w = as_matrix(weight).double()
    if project:
        g = project_perpendicular(g, w)
    if row_mask is not None:
        g = g * row_mask.to(device=g.device, dtype=g.dtype)[:, None]  # (out, 1)
    if keep_off is not None:
        if keep_off.shape[0] != g.shape[1]:
            raise InvalidConfigError(f"The preserved basis has {keep_off.shape[0]} rows but the layer takes "
                                     f"{g.shape[1]} inputs.")
        q = keep_off.to(device=g.device, dtype=g.dtype)
        g = g - (g @ q) @ q.T
    return g


def gradient_subspace(grad: torch.Tensor, weight: torch.Tensor, gamma: float, *, max_rank: int | None = None,
                      project: bool = True, row_mask: torch.Tensor | None = None,
                      keep_off: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U_r (out, r)``, ``S_r (r,)``, ``V_r (in·k, r)`` of the (projected) gradient of one layer.

    ``row_mask`` (``(out,)`` bool, SEMU x SIMU) keeps only those rows of the projected gradient, and
    U_r is exactly zero outside them, so the adapter U_r R V_rᵀ changes no other output neuron.
    ``keep_off`` (``(in, k)`` orthonormal, from :func:`preserved_basis`) removes those input directions
    from the gradient after every other projection, so V_r ⟂ ``keep_off`` and the adapter maps every
    input in its span to zero.
    Works on one layer at a time in float64 on the gradient's device; nothing but the factors is kept.
    The factors are float32 (or the weight's dtype when it is wider): they become trainable SEMU layers.
    """
    g = prepared_gradient(grad, weight, project=project, row_mask=row_mask, keep_off=keep_off)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)  # thin SVD: (out, k), (k,), (k, in)
    if row_mask is not None:
        u = u * row_mask.to(device=u.device, dtype=u.dtype)[:, None]  # rounding leaves ~1e-17; columns stay orthonormal
    r = select_rank(s, gamma)
    if max_rank is not None:
        r = min(r, max_rank)
    dtype = torch.promote_types(weight.dtype, torch.float32) if weight.is_floating_point() else torch.float32
    return u[:, :r].to(dtype), s[:r].to(dtype), vh[:r].T.contiguous().to(dtype)


def random_subspace(out_features: int, in_features: int, rank: int, *, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random orthonormal ``U (out, r)`` and ``V (in·k, r)``: the Q factors of seeded Gaussian matrices.

    The "random" subspace ablation: same rank as :func:`gradient_subspace` chose, no gradient information.

    >>> u, v = random_subspace(6, 4, 2, generator=torch.Generator().manual_seed(0))
    >>> u.shape, v.shape, torch.allclose(u.T @ u, torch.eye(2), atol=1e-6)
    (torch.Size([6, 2]), torch.Size([4, 2]), True)
    """
    if not 1 <= rank <= min(out_features, in_features):
        raise InvalidConfigError(f"A random subspace of rank {rank} does not fit a {out_features} x {in_features} "
                                 "weight.")
    u = torch.linalg.qr(torch.randn(out_features, rank, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_features, rank, generator=generator, dtype=torch.float64))[0]
    return u.to(dtype), v.to(dtype)


def preserved_basis(embeddings: torch.Tensor, energy: float) -> torch.Tensor:
    """An orthonormal basis ``(D, k)`` of the top principal directions (uncentred) of ``embeddings``
    ``(..., D)`` that hold at least ``energy`` of their summed squared norm: the input directions the
    ``keep_off`` projection of :func:`gradient_subspace` closes to the adapter.

    >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> preserved_basis(x, 0.9).abs().T  # 9 of 10 parts of the energy lie along the first axis
    tensor([[1., 0., 0.]])
    """
    if not 0 < energy <= 1:
        raise InvalidConfigError(f"The preserved energy must be in (0, 1] but is {energy!r}.")
    x = embeddings.detach().reshape(-1, embeddings.shape[-1]).double()
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = select_rank(s, energy)
    return vh[:k].T.contiguous().float()
