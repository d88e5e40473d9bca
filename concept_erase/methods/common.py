"""What the erasure methods share beyond the diffusion plumbing: choosing layers, the seed offsets
of their generated data, and the metadata every adapter carries (built here, once, for every method)."""

from __future__ import annotations

import fnmatch
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..adapter import UnlearningAdapter, unet_fingerprint
from ..concepts import Concept
from ..errors import InvalidConfigError, TrainingDivergedError
from ..version import library_versions
from ..world import WEIGHTS_DIR

__all__ = [
    "weight_modules", "select_modules", "adapter_metadata", "base_model_id", "make_adapter", "FORGET_OFFSET",
    "RETAIN_OFFSET",
]

# Seed offsets of the data a method generates (see `diffusion.data_seeds`).
FORGET_OFFSET = 0
RETAIN_OFFSET = 500_000


# ---------------------------------------------------------------- which layers
def weight_modules(unet: nn.Module, keep: Callable[[str], bool]) -> dict[str, nn.Module]:
    """``nn.Linear`` / ``nn.Conv2d`` modules of ``unet`` whose name passes ``keep``, in module order."""
    return {n: m for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and keep(n)}


def select_modules(unet: nn.Module, patterns: Iterable[str]) -> dict[str, nn.Module]:
    """Linear/Conv2d modules whose name matches a shell glob in ``patterns`` (``"*"``: all of them).

    >>> list(select_modules(unet, ["*attn2.to_k"]))[:1]  # doctest: +SKIP
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k']
    """
    patterns = tuple(patterns)
    found = weight_modules(unet, lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if not found:
        examples = list(weight_modules(unet, lambda n: True))[:4]
        raise InvalidConfigError(
            f"No nn.Linear or nn.Conv2d layer of the UNet matches `target_modules` {list(patterns)}. "
            f"Module names look like {examples}; patterns are shell globs such as '*attn2.to_k', or '*' for all."
        )
    return found


# ---------------------------------------------------------------- the adapter every method returns
def base_model_id(pipe) -> str:
    """What an adapter records as its base model (:func:`concept_erase.hub.base_model_id`):
    ``"concept-erase/shapes-world"`` for the shipped shapes world, a hub id as given (or recovered
    from a Hugging Face cache directory), else only the folder name of a local directory (a file
    never records a path of the machine it was made on)."""
    from ..hub import base_model_id as from_name

    return from_name(str(getattr(pipe, "name_or_path", None) or pipe.unet.config.get("_name_or_path", "") or ""),
                     world_dir=WEIGHTS_DIR)


def adapter_metadata(pipe, *, method: str, concept: Concept, config, ranks: dict[str, int],
                     trainable_parameters: int, start: float, **extra) -> dict:
    """The metadata every adapter carries: method, concept, config, per-layer ranks, trainable
    parameters (and their share of the UNet), the base model and its architecture fingerprint,
    wall time since ``start`` and library versions; ``extra`` adds method-specific fields."""
    unet = pipe.unet
    unet_params = sum(p.numel() for p in unet.parameters())
    meta = {
        "method": method,
        "concept": concept.to_dict(),
        "config": config.to_dict(),
        "ranks": dict(ranks),
        "trainable_parameters": int(trainable_parameters),
        "unet_parameters": unet_params,
        "trainable_fraction": trainable_parameters / unet_params,
        "base_model": base_model_id(pipe),
        "base_fingerprint": unet_fingerprint(unet),
        "versions": library_versions(),
        **extra,
    }
    meta["seconds"] = time.perf_counter() - start
    return meta


def make_adapter(tensors: dict[str, torch.Tensor], pipe, **metadata) -> UnlearningAdapter:
    """An :class:`UnlearningAdapter` of ``tensors`` with :func:`adapter_metadata` (same arguments).

    Factors holding NaN/inf (training blew up without a NaN loss, e.g. a huge learning rate) raise
    :class:`~concept_erase.errors.TrainingDivergedError` here: nothing is returned or written."""
    bad = sorted({k.rsplit(".lora_", 1)[0] for k, t in tensors.items() if not torch.isfinite(t).all()})
    if bad:
        method = metadata.get("method", "the method")
        raise TrainingDivergedError(
            f"Training diverged: {method} produced NaN/inf weights in {len(bad)} layer(s) (e.g. {bad[0]!r}); nothing "
            "was written. Lower the learning rate (or the number of steps) and run again.")
    return UnlearningAdapter(tensors, adapter_metadata(pipe, **metadata))
