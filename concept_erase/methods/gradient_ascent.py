"""Gradient ascent (seed 001, §2): *maximise* the denoising loss on the forget data while minimising
it on the retain data, loss = α·(−L_forget) + (1−α)·L_retain, with AdamW.

The forget and retain data are images the base pipeline generates from the concept's prompts,
exactly the data SEMU trains on (same seeds). The full-weight deltas are compressed to LoRA
factors (``dense.py``).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

from ..concepts import Concept, resolve_concept
from ..errors import InvalidConfigError
from .common import (
    MethodConfig, check_fraction, check_int, check_lora, check_positive, check_timestep, finetune_weights, frozen_unet,
    weight_modules,
)
from .dense import adapter_from_deltas

__all__ = ["GradientAscentConfig", "erase_gradient_ascent", "select_modules"]


def select_modules(unet, patterns: tuple[str, ...]):
    """Linear/Conv2d modules whose name matches a glob in ``patterns`` (``"*"``: all of them)."""
    found = weight_modules(unet, lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if not found:
        raise InvalidConfigError(
            f"No nn.Linear or nn.Conv2d layer of the UNet matches `target_modules` {list(patterns)}; patterns are "
            "shell globs over module names such as '*attn2*' or '*' for every layer."
        )
    return found


@dataclass
class GradientAscentConfig(MethodConfig):
    """Settings of gradient ascent. Seed 001 values are noted; the world-scaled ones differ where said.

    >>> GradientAscentConfig().alpha
    0.5
    """

    # Seed 001 trains model.parameters(); here every Linear/Conv2d weight (norms and biases, <1% of the
    # UNet, cannot be stored in a LoRA file).
    target_modules: tuple[str, ...] = ("*",)
    alpha: float = 0.5  # seed 001: loss = α·(−L_forget) + (1−α)·L_retain, α = 0.5
    # Seed 001: AdamW, lr 1e-5, 3 epochs over the forget loader (an LLM recipe). On the shapes world that
    # moves nothing in 3 epochs of 32 images; 1e-4 for 60 steps of 8 is the scaled setting.
    learning_rate: float = 1e-4
    weight_decay: float = 0.01  # AdamW's default, as in the seed
    steps: int = 60
    batch_size: int = 8
    # Data: the same generated images as SEMU (SemuConfig's defaults).
    num_forget_images: int = 32
    num_retain_images: int = 32
    sample_steps: int = 20
    sample_guidance: float = 5.0
    max_timestep: int = 1000
    lora_max_error: float = 0.01
    lora_max_rank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise InvalidConfigError("`target_modules` is empty; give at least one module name pattern, e.g. '*'.")
        check_fraction(self, "alpha")
        check_int(self, "steps", "batch_size", "num_forget_images", "sample_steps")
        check_int(self, "num_retain_images", minimum=0)
        check_positive(self, "learning_rate")
        check_positive(self, "weight_decay", "sample_guidance", allow_zero=True)
        check_timestep(self)
        check_lora(self)


def erase_gradient_ascent(pipe, concept: Concept | str | dict, config: GradientAscentConfig | None = None, *,
                          progress: bool = True):
    """Erase ``concept`` by gradient ascent on its generated images; the pipeline is unchanged.

    >>> adapter = erase_gradient_ascent(pipe, "no-red")  # doctest: +SKIP
    """
    concept = resolve_concept(concept)
    config = config or GradientAscentConfig()
    start = time.perf_counter()
    unet = pipe.unet
    modules = select_modules(unet, config.target_modules)
    with frozen_unet(unet):
        trained, final = finetune_weights(pipe, concept, modules, config, forget_weight=-config.alpha,
                                          retain_weight=1 - config.alpha, progress=progress,
                                          desc=f"gradient ascent {concept.name}")
        deltas = ((n, trained.pop(f"{n}.weight") - m.weight) for n, m in modules.items())
        return adapter_from_deltas(
            deltas, unet=unet, pipe=pipe, method="gradient-ascent", concept=concept, config=config,
            trainable_parameters=sum(m.weight.numel() for m in modules.values()), start=start,
            max_error=config.lora_max_error, max_rank=config.lora_max_rank, extra={"final_loss": final},
        )
