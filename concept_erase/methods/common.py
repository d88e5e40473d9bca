"""What the erasure methods share beyond the diffusion plumbing: choosing layers, the seed offsets
of their generated data, mixed precision, and the metadata every adapter carries (built here, once,
for every method).

Mixed precision follows diffusers' training scripts (``train_text_to_image_lora.py``: the frozen
weights in ``weight_dtype``, the trainable ones upcast by ``cast_training_params`` to float32): a
method trains float32 copies of the weights it owns (:func:`master_weights`), so its optimiser
state is float32 too, and runs the UNet in the base model's dtype on copies cast at every forward
pass (:func:`mixed_precision_eps`); predictions come back as float32 and losses are computed in
float32. On a float32 base model every cast is a no-op.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..adapter import UnlearningAdapter, unet_fingerprint
from ..concepts import Concept
from ..diffusion import functional_eps
from ..errors import InvalidConfigError, TrainingDivergedError
from ..version import library_versions
from ..world import WEIGHTS_DIR

__all__ = [
    "weight_modules", "select_modules", "adapter_metadata", "base_model_id", "make_adapter", "FORGET_OFFSET",
    "RETAIN_OFFSET", "master_weights", "mixed_precision_eps", "float32_eps",
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


# ---------------------------------------------------------------- mixed precision
def master_weights(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Trainable float32 copies ``{"<module>.weight": W}`` of ``modules``' weights, whatever their dtype
    (the modules themselves are not touched). An optimiser over them keeps float32 state."""
    return {f"{n}.weight": m.weight.detach().to(torch.float32, copy=True).requires_grad_(True)
            for n, m in modules.items()}


def float32_eps(eps: Callable) -> Callable:
    """``eps`` with its prediction returned as float32, so that losses on it are float32."""

    def eps32(x_t, t, c):
        return eps(x_t, t, c).float()

    return eps32


def mixed_precision_eps(unet: nn.Module, params: dict[str, torch.Tensor]) -> Callable:
    """``eps(x_t, t, c)`` of ``unet`` with ``params`` (float32 master weights, see :func:`master_weights`)
    cast to the UNet's dtype at every call and swapped in; the prediction is float32. The gradient
    flows back through the cast to the float32 weights."""
    dtype = unet.dtype

    def eps(x_t, t, c):
        return functional_eps(unet, {k: v.to(dtype) for k, v in params.items()})(x_t, t, c).float()

    return eps


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
