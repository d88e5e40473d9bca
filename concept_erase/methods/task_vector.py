"""Task-vector negation (Ilharco et al., ICLR 2023, "Editing models with task arithmetic"; seed 001, §3):
fine-tune on the concept, τ = θ_ft − θ, and subtract it: θ' = θ − s·τ.

The fine-tune is the ordinary denoising loss on images the base pipeline generates from the forget
prompts (SEMU's data, same seeds). The adapter stores ΔW = −s·τ, compressed to LoRA factors
(``dense.py``); s = 0 gives exactly zero factors, i.e. exactly the base model, and s = −1 re-adds
the fine-tune. (Any adapter is itself a task vector: its ``set_unlearning_scale`` is s.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..concepts import Concept, resolve_concept
from ..errors import InvalidConfigError
from .common import (
    MethodConfig, check_int, check_lora, check_positive, check_timestep, finetune_weights, frozen_unet,
)
from .dense import adapter_from_deltas
from .gradient_ascent import select_modules

__all__ = ["TaskVectorConfig", "erase_task_vector"]


@dataclass
class TaskVectorConfig(MethodConfig):
    """Settings of task-vector negation.

    >>> TaskVectorConfig(scale=0.0).scale
    0.0
    """

    scale: float = 1.0  # s in θ − s·τ; seed 001 `negate_task_vector(scale=1.0)`
    target_modules: tuple[str, ...] = ("*",)  # every Linear/Conv2d weight (the paper fine-tunes the whole model)
    # Ilharco et al. fine-tune with AdamW, lr 1e-5, weight decay 0.1, 2000+ iterations of batch 128 (CLIP).
    # Scaled to the shapes world: lr 1e-4, 60 steps of 8 generated images.
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    steps: int = 60
    batch_size: int = 8
    num_forget_images: int = 32  # SEMU's data (SemuConfig's defaults)
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
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise InvalidConfigError(f"`scale` must be a finite number but is {self.scale!r}.")
        check_int(self, "steps", "batch_size", "num_forget_images", "sample_steps")
        check_positive(self, "learning_rate")
        check_positive(self, "weight_decay", "sample_guidance", allow_zero=True)
        check_timestep(self)
        check_lora(self)


def erase_task_vector(pipe, concept: Concept | str | dict, config: TaskVectorConfig | None = None, *,
                      progress: bool = True):
    """Erase ``concept`` by negating the task vector of a fine-tune on it; the pipeline is unchanged.

    >>> adapter = erase_task_vector(pipe, "no-red", TaskVectorConfig(scale=1.0))  # doctest: +SKIP
    """
    concept = resolve_concept(concept)
    config = config or TaskVectorConfig()
    start = time.perf_counter()
    unet = pipe.unet
    modules = select_modules(unet, config.target_modules)
    with frozen_unet(unet):
        tuned, final = finetune_weights(pipe, concept, modules, config, forget_weight=1.0, retain_weight=0.0,
                                        progress=progress, desc=f"fine-tune {concept.name}")
        # ΔW = θ' − θ = −s·(θ_ft − θ); s = 0 is exactly 0 (so are the LoRA factors)
        deltas = ((n, -config.scale * (tuned.pop(f"{n}.weight") - m.weight)) for n, m in modules.items())
        return adapter_from_deltas(
            deltas, unet=unet, pipe=pipe, method="task-vector", concept=concept, config=config,
            trainable_parameters=sum(m.weight.numel() for m in modules.values()), start=start,
            max_error=config.lora_max_error, max_rank=config.lora_max_rank, extra={"final_loss": final},
        )
