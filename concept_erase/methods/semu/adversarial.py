"""Adversarial training of SEMU's R: robust SEMU (``SemuConfig(adversarial=True)``).

In the spirit of AdvUnlearn (Zhang et al., "Defensive Unlearning with Adversarial Training for Robust
Concept Erasure in Diffusion Models", arXiv 2405.15234): a bi-level problem whose inner level finds,
for the current adapted model, a prompt that brings the concept back, and whose outer level unlearns
on it,

    min_R  L_forget(R, c_adv) + L_forget(R, c) + α L_retain(R),
    c_adv = argmin_δ  ‖ε_{W + U R Vᵀ}(x_t(x₀), t, c ⊕ δ) − ε‖²          (the UnlearnDiffAtk objective)

with x₀ an image of the concept the base model drew. Two adaptations, both stated:

- **Where the attack lives.** AdvUnlearn (and the eval's attack, ``evaluation/adversarial.py``)
  optimise ``k`` token embeddings appended to the prompt and run the text encoder. CLIP's causal
  mask means such tokens can change only the hidden states at and after their own positions, so
  here the attack acts on those positions directly: the ``k`` hidden-state vectors right after the
  prompt's own tokens are free (each kept within the largest norm of that prompt's hidden states).
  This is a superset of what ``k`` appended tokens can reach at those positions, costs no
  text-encoder pass, and works for every UNet the package trains (SD 1.x/2.x/SDXL), since only
  ``encoder_hidden_states`` change.
- **A persistent, few-step attack.** AdvUnlearn runs a fresh multi-step attack every outer step
  (its "fast" variant one FGSM step). Here each forget prompt keeps its adversarial vectors across
  outer steps and every step refines them by ``adversarial_steps`` normalised-gradient steps (as
  persistent "free" adversarial training does), so a few inner steps per update accumulate into a
  strong attack over training.

The outer update is SEMU's own: only R of each layer trains, so the attack never touches the base
weights, and the teacher of the forget loss stays the base model on the *clean* prompt.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...diffusion import Conditioning

__all__ = ["AdversarialPrompts", "prompt_lengths"]


class AdversarialPrompts:
    """Persistent adversarial hidden states for each forget prompt (rows of ``c_forget``).

    ``lengths[i]``: how many token positions prompt ``i`` occupies (its start token and words); the
    ``num_tokens`` positions after them are the attack's. ``step_size`` is the size of one inner step
    as a fraction of the prompt's largest hidden-state norm.
    """

    def __init__(self, c_forget: Conditioning, lengths: list[int], *, num_tokens: int, step_size: float,
                 generator: torch.Generator):
        h = c_forget.hidden_states.detach().float()
        n, seq, _ = h.shape
        if len(lengths) != n:
            raise ValueError(f"{len(lengths)} prompt lengths for {n} forget prompts.")
        k = min(num_tokens, seq - 1)
        starts = torch.tensor([min(int(length), seq - k) for length in lengths])
        self.positions = starts[:, None] + torch.arange(k)[None, :]  # (P, k)
        self.c_forget = c_forget
        self.max_norm = h.norm(dim=-1).amax(dim=1)  # (P,)
        rows = torch.arange(n)[:, None]
        # start from the clean hidden states at those positions, nudged so the first gradient is informative
        noise = torch.randn(h[rows, self.positions].shape, generator=generator).to(h.device)
        start = h[rows, self.positions] + 0.01 * self.max_norm[:, None, None] * F.normalize(noise, dim=-1)
        self.delta = self._clamp(start, torch.arange(n))
        self.step_size = step_size

    def _clamp(self, d: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        limit = self.max_norm[rows][:, None, None]
        norm = d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return d * torch.clamp(limit / norm, max=1.0)

    def conditioning(self, rows: torch.Tensor, delta: torch.Tensor | None = None) -> Conditioning:
        """The forget conditioning of ``rows`` with the attack's vectors in place."""
        delta = self.delta[rows] if delta is None else delta
        c = self.c_forget[rows]
        h = c.hidden_states.clone()
        index = self.positions[rows].to(h.device)[..., None].expand(-1, -1, h.shape[-1])
        h = h.scatter(1, index, delta.to(h.dtype))
        return Conditioning(h, c.text_embeds, c.time_ids)

    def attack(self, eps: Callable, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor, rows: torch.Tensor,
               steps: int) -> Conditioning:
        """Refine the vectors of ``rows`` by ``steps`` descent steps on the denoising loss of concept
        latents ``x_t`` (the adapted model ``eps`` pushed to recognise the concept again), keep them,
        and return the adversarial conditioning (detached: the outer step differentiates R only)."""
        d = self.delta[rows].clone()
        for _ in range(steps):
            d.requires_grad_(True)
            loss = F.mse_loss(eps(x_t, t, self.conditioning(rows, d)), target)
            (grad,) = torch.autograd.grad(loss, [d])
            with torch.no_grad():
                step = F.normalize(grad, dim=-1) * (self.step_size * self.max_norm[rows])[:, None, None]
                d = self._clamp(d - step, rows)
        d = d.detach()
        self.delta[rows] = d  # a prompt drawn twice in the batch keeps its last refinement
        return self.conditioning(rows, d)


def prompt_lengths(pipe, prompts: list[str]) -> list[int]:
    """Token positions each prompt occupies before its end token (start token included)."""
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2")
    ids = tokenizer(list(prompts), truncation=True, max_length=tokenizer.model_max_length).input_ids
    return [len(x) - 1 for x in ids]
