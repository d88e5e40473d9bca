"""Seeded, batch-invariant image generation with any diffusers text-to-image pipeline."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InvalidPromptError

__all__ = ["generate"]


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
    **call_kwargs,
) -> np.ndarray:
    """Generate one image per ``(prompt, seed)`` pair; returns ``(N, H, W, 3)`` floats in [0, 1].

    Each image has its own ``torch.Generator``, so an image depends only on its prompt and seed,
    not on the batch it was drawn in: the base model and an adapted model given the same pairs
    start from identical noise.

    >>> images = generate(pipe, ["a red circle"] * 2, [0, 1], num_inference_steps=20)  # doctest: +SKIP
    """
    if len(prompts) != len(seeds):
        raise InvalidPromptError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    if any(not isinstance(p, str) for p in prompts):
        raise InvalidPromptError("Every prompt must be a string.")
    device = getattr(pipe, "_execution_device", None) or pipe.device
    gen_device = "cpu" if torch.device(device).type == "mps" else device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = list(prompts[i : i + batch_size])
        gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        result = pipe(chunk, generator=gens, output_type="np", **call_kwargs)
        out.append(result.images)
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.float32)
    return np.concatenate(out)
