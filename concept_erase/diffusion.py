"""Diffusion plumbing every method, the evaluation and the demo share.

- prompts -> text embeddings as the pipeline computes them (:func:`encode_prompts`), with a warning
  (counts and an example) for prompts the text encoder would cut or cannot read (:func:`check_prompts`);
- images and clean latents drawn by the pipeline itself, seeded per image so that a result depends
  only on its prompt and seed, never on the batch (:func:`generate_images`, :func:`generate_latents`,
  :func:`prompt_latents`); images -> latents through the VAE (:func:`encode_images`);
- the forward process q(x_t | x_0) from ᾱ_t (:func:`add_noise`);
- the UNet frozen and restored (:func:`frozen_unet`), run with swapped-in weights
  (:func:`functional_eps`), losses checked for NaN/inf (:func:`check_finite`), pipeline progress
  bars silenced and restored (:func:`quiet_progress`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InvalidPromptError, TrainingDivergedError

__all__ = [
    "encode_prompts", "check_prompts", "generate_images", "generate_latents", "prompt_latents", "data_seeds",
    "cycle_indices",
    "encode_images", "add_noise", "frozen_unet", "functional_eps", "base_eps_of", "check_finite", "quiet_progress",
]
logger = logging.getLogger(__name__)
_WARNED: set[tuple[int, str]] = set()  # (tokenizer, prompt) pairs already reported in this process


# ---------------------------------------------------------------- prompts and generated data
def check_prompts(pipe, prompts: Sequence[str], *, what: str = "prompts", warn: bool = True) -> dict[str, list[str]]:
    """The prompts the pipeline's text encoder will not see whole: ``"truncated"`` (longer than its
    context; the end is cut) and ``"unknown"`` (made only of words that are no token of its
    vocabulary, so they are spelled out in pieces the model was not trained on — in practice
    gibberish, or words outside the shapes world's vocabulary). With ``warn``, logs one warning
    with the counts and an example, once per prompt per process."""
    tokenizer = getattr(pipe, "tokenizer", None)
    found: dict[str, list[str]] = {"truncated": [], "unknown": []}
    if tokenizer is None or not prompts:
        return found
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Token indices sequence length is longer than ...": we report it ourselves
    try:
        ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
        words = sorted({w for p in prompts for w in re.findall(r"\w+", p.lower())})
        whole = {w for w, t in zip(words, tokenizer(words, add_special_tokens=False).input_ids if words else [])
                 if len(t) == 1}
    finally:
        hf_logging.set_verbosity(level)
    limit = tokenizer.model_max_length - 2  # the start and end tokens take two places
    for prompt, tokens in zip(prompts, ids):
        if len(tokens) > limit:
            found["truncated"].append(prompt)
        prompt_words = re.findall(r"\w+", prompt.lower())
        if prompt_words and not any(w in whole for w in prompt_words):
            found["unknown"].append(prompt)
    if warn:
        key = id(tokenizer)
        new = {k: [p for p in v if (key, p) not in _WARNED] for k, v in found.items()}
        parts = []
        if new["truncated"]:
            parts.append(f"{len(new['truncated'])} longer than the text encoder's {limit} tokens are cut at the end "
                         f"(e.g. {new['truncated'][0][:80]!r})")
        if new["unknown"]:
            parts.append(f"{len(new['unknown'])} consist only of words the tokenizer has no token for and are spelled "
                         f"out in pieces (e.g. {new['unknown'][0][:80]!r})")
        if parts:
            logger.warning("Of %d %s, %s.", len(prompts), what, "; ".join(parts))
            _WARNED.update((key, p) for v in new.values() for p in v)
    return found


def encode_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Text embeddings ``(N, T, D)`` as the pipeline would compute them (see :func:`check_prompts`)."""
    check_prompts(pipe, prompts)
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(list(prompts), pipe._execution_device, 1, False)
    return emb


def _generators(device, seeds: Sequence[int]) -> list[torch.Generator]:
    gen_device = "cpu" if torch.device(device).type == "mps" else device
    return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]


def generate_images(pipe, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int = 32,
                    progress: bool = False, desc: str = "generate", **call_kwargs) -> np.ndarray:
    """One image per ``(prompt, seed)`` pair; returns ``(N, H, W, 3)`` floats in [0, 1].

    Each image has its own ``torch.Generator``, so an image depends only on its prompt and seed,
    not on the batch it was drawn in (up to float rounding in batched matmuls): the base model and
    an adapted model given the same pairs start from identical noise.

    >>> images = generate_images(pipe, ["a red circle"] * 2, [0, 1], num_inference_steps=20)  # doctest: +SKIP
    """
    if len(prompts) != len(seeds):
        raise InvalidPromptError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    if any(not isinstance(p, str) for p in prompts):
        raise InvalidPromptError("Every prompt must be a string.")
    device = getattr(pipe, "_execution_device", None) or pipe.device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = list(prompts[i : i + batch_size])
        result = pipe(chunk, generator=_generators(device, seeds[i : i + batch_size]), output_type="np", **call_kwargs)
        out.append(result.images)
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.float32)
    return np.concatenate(out)


def generate_latents(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float,
                     batch_size: int = 32, progress: bool = False, desc: str = "sample") -> torch.Tensor:
    """Clean latents x₀ ``(N, C, h, w)`` in the UNet's latent space, sampled by the pipeline itself."""
    device = pipe._execution_device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        res = pipe(list(prompts[i : i + batch_size]), generator=_generators(device, seeds[i : i + batch_size]),
                   num_inference_steps=steps, guidance_scale=guidance, output_type="latent")
        out.append(res.images)
    return torch.cat(out)


def cycle_indices(n_items: int, n: int) -> list[int]:
    """``n`` indices cycling over ``n_items`` items: 0, 1, ..., n_items − 1, 0, 1, ..."""
    return [i % n_items for i in range(n)]


def data_seeds(seed: int, n: int, *, offset: int = 0) -> list[int]:
    """The seeds of the ``n`` images a method generates from its prompts: ``seed·1000003 + offset + i``.

    Every method uses this rule (forget data at offset 0, retain data at 500000), so methods run
    with the same ``seed`` train on the same images, and membership inference can regenerate them.
    """
    return [seed * 1_000_003 + offset + i for i in range(n)]


def prompt_latents(pipe, prompts: Sequence[str], n: int, *, seed: int, offset: int, steps: int, guidance: float,
                   progress: bool = False, desc: str = "sample") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` clean latents ``(n, C, h, w)`` sampled by the pipeline from ``prompts`` (cycled), the
    prompt index of each, and the text embeddings of ``prompts`` ``(len(prompts), T, D)``."""
    idx = cycle_indices(len(prompts), n)
    with quiet_progress(pipe):
        x0 = generate_latents(pipe, [prompts[i] for i in idx], data_seeds(seed, n, offset=offset), steps=steps,
                              guidance=guidance, progress=progress, desc=desc)
        emb = encode_prompts(pipe, prompts)
    return x0, torch.tensor(idx), emb


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] -> clean latents ``(B, C, h, w)`` in the UNet's space."""
    vae = pipe.vae
    device = pipe._execution_device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device=device, dtype=vae.dtype) * 2 - 1
        latents = vae.encode(x).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out.append(((latents - shift) * vae.config.scaling_factor).float())
    return torch.cat(out) if out else torch.zeros(0)


# ---------------------------------------------------------------- the forward process
def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al., "Denoising Diffusion Probabilistic Models",
    arXiv 2006.11239, eq. 4), for any t in [0, T).

    Not ``scheduler.add_noise``: a sampling scheduler (DPM-Solver++) only knows the timesteps of
    its last ``set_timesteps`` and silently noises every other t at the wrong level.
    """
    a = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


# ---------------------------------------------------------------- the UNet
@contextlib.contextmanager
def frozen_unet(unet: nn.Module):
    """``unet`` (or any module: the attacks freeze the text encoder too) in eval mode with no parameter
    requiring grad; modes and flags restored on exit, ``.grad`` cleared."""
    requires_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    was_training = unet.training
    unet.eval()
    unet.requires_grad_(False)
    try:
        yield unet
    finally:
        for n, p in unet.named_parameters():
            if n in requires_grad:
                p.requires_grad_(requires_grad[n])
            p.grad = None
        unet.train(was_training)


def functional_eps(unet: nn.Module, params: dict[str, torch.Tensor]):
    """``eps(x_t, t, c)`` of ``unet`` with ``params`` (``"<module>.weight"`` -> tensor) swapped in."""

    def eps(x_t, t, c):
        return torch.func.functional_call(unet, params, (x_t, t), {"encoder_hidden_states": c}).sample

    return eps


def base_eps_of(unet: nn.Module):
    """``eps(x_t, t, c)`` of ``unet`` as it is, without gradients (the frozen base model's targets)."""

    def eps(x_t, t, c):
        with torch.no_grad():
            return unet(x_t, t, encoder_hidden_states=c).sample

    return eps


def check_finite(loss: torch.Tensor, what: str, step: int, *, hint: str = "Lower `learning_rate`",
                 outcome: str = "the erasure was stopped and nothing was written") -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"The {what} became {loss.item()} at step {step}; {outcome}. {hint}, or check the prompts."
        )


@contextlib.contextmanager
def quiet_progress(pipe):
    """The pipeline's own progress bars off inside the block; its previous settings restored after."""
    config = getattr(pipe, "_progress_bar_config", None)
    saved = dict(config) if config is not None else None
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved
