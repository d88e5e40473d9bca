"""Membership inference on the forget data: is the erasure's training set still special?

The attacker scores each sample by the model's denoising loss on it (averaged over fixed timesteps
and noise) and guesses "member" for low losses. Members are the exact forget latents the adapter
was trained on (regenerated from the SEMU settings in its metadata); non-members are drawn the same
way from the same prompts with seeds training never used. The AUC of the attack separates them:
0.5 is ideal (the model treats the data it forgot like data it never saw); far from 0.5 either
way is a leak (below 0.5: the forget samples stand out by their *high* loss, a "Streisand effect").
The loss attack is the classic one of Yeom et al. ("Privacy Risk in Machine Learning", arXiv 1709.01604),
applied to diffusion models as in Matsumoto et al. ("Membership Inference Attacks against Diffusion
Models", arXiv 2302.03262).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion import add_noise, prompt_latents
from ..errors import InvalidConfigError

__all__ = ["auc", "leakage", "denoising_losses", "membership_auc", "semu_forget_samples"]

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of ``score > threshold`` separating positives from negatives
    (the Mann-Whitney U statistic over ``n_pos·n_neg`` pairs, ties counting one half).

    >>> auc([3, 4], [1, 2]), auc([1, 2], [1, 2])
    (1.0, 0.5)
    """
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise InvalidConfigError(f"AUC needs both classes; got {len(pos)} positives and {len(neg)} negatives.")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def leakage(value: float) -> str:
    """This project's reading of an MIA AUC: |AUC − 0.5| < 0.05 minimal, < 0.15 moderate, else significant."""
    deviation = abs(value - 0.5)
    return "minimal" if deviation < 0.05 else "moderate" if deviation < 0.15 else "significant"


@torch.no_grad()
def denoising_losses(pipe, latents: torch.Tensor, prompt_embeds: torch.Tensor, *,
                     timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0, batch_size: int = 32) -> np.ndarray:
    """Per-sample denoising loss ``mean_t ‖ε_θ(x_t, t, c) − ε‖²`` ``(N,)``. Sample ``i`` gets the same noise
    for every model (seeded by ``seed`` and ``i``), so models are compared on equal terms."""
    unet, scheduler = pipe.unet, pipe.scheduler
    device = pipe._execution_device
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    n = len(latents)
    noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed * 100_003 + i))
                         for i in range(n)])  # (N, C, h, w)
    out = torch.zeros(n)
    for t in timesteps:
        for i in range(0, n, batch_size):
            x0 = latents[i : i + batch_size].to(device=device, dtype=torch.float32)
            eps = noise[i : i + batch_size].to(device)
            tt = torch.full((len(x0),), int(t), device=device)
            x_t = add_noise(alphas, x0, eps, tt)
            pred = unet(x_t.to(unet.dtype), tt, encoder_hidden_states=prompt_embeds[i : i + batch_size].to(device)).sample
            out[i : i + batch_size] += F.mse_loss(pred.float(), eps, reduction="none").mean(dim=(1, 2, 3)).cpu()
    return (out / len(timesteps)).numpy()


def membership_auc(pipe, members: tuple[torch.Tensor, torch.Tensor], nonmembers: tuple[torch.Tensor, torch.Tensor],
                   *, timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0) -> dict:
    """AUC of the loss attack (score = −loss) on ``(latents, prompt_embeds)`` of members vs non-members.

    >>> membership_auc(pipe, (x_f, c_f), (x_n, c_n))["auc"]  # doctest: +SKIP
    0.51
    """
    loss_in = denoising_losses(pipe, *members, timesteps=timesteps, seed=seed)
    loss_out = denoising_losses(pipe, *nonmembers, timesteps=timesteps, seed=seed + 1)
    value = auc(-loss_in, -loss_out)
    return {"auc": value, "advantage": abs(value - 0.5) * 2, "leakage": leakage(value), "n_members": len(loss_in), "n_nonmembers": len(loss_out),
            "member_loss": float(loss_in.mean()), "nonmember_loss": float(loss_out.mean()),
            "timesteps": list(timesteps)}


def semu_forget_samples(pipe, metadata: dict, *, limit: int | None = None, nonmember_offset: int = 10_000_000):
    """The forget latents a SEMU adapter was trained on and as many never-seen ones, from its metadata.

    Returns ``((x_members, c_members), (x_nonmembers, c_nonmembers))``; ``pipe`` must be the base model.
    Raises :class:`InvalidConfigError` when the metadata does not say how the training data was made.
    """
    config, concept = metadata.get("config"), metadata.get("concept")
    if metadata.get("method") != "semu" or not config or not concept:
        raise InvalidConfigError(
            "Membership inference needs to know the adapter's training data; its metadata holds no SEMU config and "
            "concept (it was not made by `concept-erase erase`)."
        )
    n = int(config["num_forget_images"]) if limit is None else min(int(config["num_forget_images"]), limit)
    # exactly the trainer's data: the same prompts, cycled, and the same seeds (`diffusion.data_seeds`)
    kwargs = dict(seed=int(config["seed"]), steps=int(config["sample_steps"]),
                  guidance=float(config["sample_guidance"]))
    x_in, idx, emb = prompt_latents(pipe, list(concept["forget"]), n, offset=0, **kwargs)
    x_out, _, _ = prompt_latents(pipe, list(concept["forget"]), n, offset=nonmember_offset, **kwargs)
    c = emb[idx]
    return (x_in, c), (x_out, c)
