"""Adversarial training of SEMU's R: robust SEMU (``SemuConfig(adversarial=True)``).

In the spirit of AdvUnlearn (Zhang et al., "Defensive Unlearning with Adversarial Training for Robust
Concept Erasure in Diffusion Models", arXiv 2405.15234): a bi-level problem whose inner level finds,
for the current adapted model, a prompt that brings the concept back, and whose outer level unlearns
on it,

    min_R  L_forget(R, c ⊕ δ*) + L_forget(R, c) + α L_retain(R),
    δ* = argmin_δ  ‖ε_{W + U R Vᵀ}(x_t(x₀), t, τ(c ⊕ δ)) − ε‖²      (the UnlearnDiffAtk objective)

with x₀ an image of the concept the base model drew, ``τ`` the pipeline's text encoder(s) and ``δ``
``k`` token embeddings appended to the prompt before its end token: the threat model of AdvUnlearn
and of the eval's attack (``concept_erase.evaluation.adversarial``). Two choices, both stated:

- **Soft tokens.** ``δ`` are free vectors in the token-embedding space (each kept within the largest
  norm of the vocabulary's embeddings), not snapped to vocabulary tokens: a superset of the eval's
  discrete attack, and the conditioning still comes out of the text encoder, so R is trained on
  hidden states the text encoder can produce. (A first version attacked the hidden states after
  the prompt directly; free hidden-state vectors lie off the text encoder's output manifold, and on
  a dev concept training against them cost 15 points of retain accuracy and made forgetting worse.)
- **A persistent, few-step attack.** AdvUnlearn runs a fresh multi-step attack every outer step
  (its "fast" variant one FGSM step). Here each forget prompt keeps its adversarial tokens across
  outer steps and every step refines them by ``adversarial_steps`` normalised-gradient steps (as
  persistent "free" adversarial training does), so a few inner steps per update accumulate into a
  strong attack over training.

With ``adversarial_retain`` the attack's tokens are also kept harmless to the retain prompts: each
step appends the batch's current ``δ`` to as many retain prompts and adds the retain term on them,

    + α ‖ε_{W + U R Vᵀ}(x_t(x_r), t, τ(c_r ⊕ δ*)) − ε_W(x_t(x_r), t, τ(c_r ⊕ δ*))‖²,

so R has to answer the tokens only where the concept is asked for. Without it, on the shapes world's
``no-red`` robust SEMU turned held-out yellow prompts red or gray: R learned to undo what ``δ`` does
to any colour, and the retain term protected only the 8 retain prompts themselves, never attacked.
It follows the preservation side of "Erasing Undesirable Concepts in Diffusion Models with
Adversarial Preservation" (Bui et al., arXiv 2410.15618), which preserves the concepts an erasure
disturbs most, here those the attack reaches; the teacher is the base model on the same tokens.

SDXL's two text encoders each get their own ``δ`` at the same positions (both tokenizers must agree
on them), and the pooled embedding follows the attack as the pipeline computes it. The outer update
is SEMU's own: only R of each layer trains, the text encoders and the base weights never do, and the
teacher of the forget loss stays the base model on the *clean* prompt.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from ...diffusion import Conditioning, encode_conditioning, frozen_unet
from ...errors import InvalidConfigError

__all__ = ["AdversarialPrompts", "FILLER"]

FILLER = " a"  # appended once per adversarial token to reserve its position; its embedding is replaced


def _text_encoders(pipe) -> list[tuple[object, torch.nn.Module]]:
    """``(tokenizer, text_encoder)`` pairs of the pipeline (one for SD 1.x/2.x, two for SDXL)."""
    pairs = []
    for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        if getattr(pipe, tok, None) is not None and getattr(pipe, enc, None) is not None:
            pairs.append((getattr(pipe, tok), getattr(pipe, enc)))
    if not pairs:
        raise InvalidConfigError("Robust SEMU (adversarial=True) attacks the prompt through the pipeline's text "
                                 "encoder, and this pipeline has none; set adversarial=False.")
    return pairs


def _slots(tokenizer, prompt: str, k: int) -> tuple[str, list[int]]:
    """The prompt with ``k`` reserved tokens before its end token, and their positions."""
    ids = tokenizer(prompt, truncation=False).input_ids
    text = prompt + FILLER * k
    with_slots = tokenizer(text, truncation=False).input_ids
    n, limit = len(ids) - 1, tokenizer.model_max_length
    filler = tokenizer(FILLER.strip(), add_special_tokens=False).input_ids
    if len(with_slots) > limit:
        raise InvalidConfigError(
            f"The prompt {prompt!r} takes {len(ids)} of the tokenizer's {limit} positions, so "
            f"adversarial_tokens={k} more do not fit; lower adversarial_tokens or shorten the prompt.")
    if len(filler) != 1 or with_slots[:n] != ids[:n] or with_slots[n:n + k] != filler * k:
        raise InvalidConfigError(f"The tokenizer does not give {FILLER.strip()!r} one token after {prompt!r}, so "
                                 "robust SEMU cannot place its adversarial tokens; set adversarial=False.")
    return text, list(range(n, n + k))


def _placements(encoders, prompts: list[str], k: int) -> tuple[list[str], torch.Tensor]:
    """Each prompt with ``k`` reserved tokens, and their positions ``(P, k)``, the same under every tokenizer."""
    slots = None
    for tokenizer, _ in encoders:
        found = [_slots(tokenizer, p, k) for p in prompts]
        positions = [s for _, s in found]
        if slots is not None and positions != slots:
            raise InvalidConfigError("The pipeline's two tokenizers split the prompts differently, so robust "
                                     "SEMU cannot place its adversarial tokens; set adversarial=False.")
        slots = positions
    return [text for text, _ in found], torch.tensor(slots)


class AdversarialPrompts:
    """Persistent adversarial token embeddings for each forget prompt.

    ``step_size``: one inner step, as a fraction of the mean norm of the vocabulary's embeddings.
    ``carriers``: other prompts (the retain prompts) that :meth:`carried` appends the tokens to.
    """

    def __init__(self, pipe, prompts: list[str], *, num_tokens: int, step_size: float, generator: torch.Generator,
                 carriers: list[str] | None = None):
        self.pipe = pipe
        self.encoders = _text_encoders(pipe)
        self.texts, self.positions = _placements(self.encoders, prompts, num_tokens)  # (P, k)
        self.carriers = _placements(self.encoders, carriers, num_tokens) if carriers else None
        self.step_size = step_size
        special = set(self.encoders[0][0].all_special_ids)
        vocab = torch.tensor([i for i in range(len(self.encoders[0][0])) if i not in special])
        init = vocab[torch.randint(len(vocab), (len(prompts), num_tokens), generator=generator)]  # (P, k)
        self.tokens = init  # the vocabulary tokens the attack starts from
        self.delta, self.max_norm, self.step = [], [], []
        for _, enc in self.encoders:
            table = enc.get_input_embeddings().weight.detach().float()
            norms = table[vocab.to(table.device)].norm(dim=-1)
            self.delta.append(table[init.to(table.device)].clone())  # (P, k, D): random vocabulary tokens
            self.max_norm.append(norms.max())
            self.step.append(step_size * norms.mean())

    @contextlib.contextmanager
    def _placed(self, positions: torch.Tensor, deltas: list[torch.Tensor]):
        """Within the block, each text encoder's token embeddings at ``positions`` ``(B, k)`` are
        ``deltas`` (one ``(B, k, D)`` tensor per encoder)."""
        handles = []
        for (_, enc), d in zip(self.encoders, deltas):
            index = positions.to(d.device)[..., None].expand(-1, -1, d.shape[-1])

            def hook(module, inputs, output, d=d, index=index):
                if output.shape[0] != len(index):  # another prompt batch (the unconditional one)
                    return output
                return output.scatter(1, index.to(output.device), d.to(output.dtype))

            handles.append(enc.get_input_embeddings().register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def conditioning(self, rows: torch.Tensor, deltas: list[torch.Tensor] | None = None) -> Conditioning:
        """The conditioning of the forget prompts ``rows`` with the attack's tokens in place (it carries
        the gradient to ``deltas`` when they require it)."""
        deltas = [d[rows] for d in self.delta] if deltas is None else deltas
        with self._placed(self.positions[rows], deltas):
            return encode_conditioning(self.pipe, [self.texts[i] for i in rows.tolist()],
                                       grad=any(d.requires_grad for d in deltas))

    @torch.no_grad()
    def carried(self, carrier_rows: torch.Tensor, rows: torch.Tensor) -> Conditioning:
        """The conditioning of the carrier prompts ``carrier_rows`` with the current tokens of the forget
        prompts ``rows`` appended (row ``i`` of one with row ``i`` of the other)."""
        if self.carriers is None:
            raise InvalidConfigError("These adversarial prompts were built without carriers (the retain prompts).")
        texts, positions = self.carriers
        with self._placed(positions[carrier_rows], [d[rows] for d in self.delta]):
            return encode_conditioning(self.pipe, [texts[i] for i in carrier_rows.tolist()])

    def _clamp(self, d: torch.Tensor, i: int) -> torch.Tensor:
        norm = d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return d * torch.clamp(self.max_norm[i] / norm, max=1.0)

    def attack(self, eps: Callable, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor, rows: torch.Tensor,
               steps: int) -> Conditioning:
        """Refine the tokens of ``rows`` by ``steps`` descent steps on the denoising loss of concept
        latents ``x_t`` (the adapted model ``eps`` pushed to recognise the concept again), keep them,
        and return the adversarial conditioning (detached: the outer step differentiates R only)."""
        d = [x[rows].clone() for x in self.delta]
        with contextlib.ExitStack() as frozen:
            for _, enc in self.encoders:
                frozen.enter_context(frozen_unet(enc))  # only the tokens take a gradient
            for _ in range(steps):
                d = [x.requires_grad_(True) for x in d]
                loss = F.mse_loss(eps(x_t, t, self.conditioning(rows, d)), target)
                grads = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    d = [self._clamp(x - F.normalize(g, dim=-1) * self.step[i], i)
                         for i, (x, g) in enumerate(zip(d, grads))]
            d = [x.detach() for x in d]
            for store, x in zip(self.delta, d):
                store[rows] = x  # a prompt drawn twice in the batch keeps its last refinement
            with torch.no_grad():
                return self.conditioning(rows, d)
