"""Task-vector negation (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv 2212.04089):
fine-tune on the concept, τ = θ_ft − θ, and subtract it: θ' = θ − s·τ.

The fine-tune is the ordinary denoising loss on images the base pipeline generates from the forget
prompts (SEMU's data, same seeds). The adapter stores ΔW = −s·τ, compressed to LoRA factors
(``dense.py``); s = 0 gives exactly zero factors, i.e. exactly the base model, and s = −1 re-adds
the fine-tune. (Any adapter is itself a task vector: its ``set_unlearning_scale`` is s.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..concepts import Concept, resolve_concept
from ..config import check_number, setting
from .finetune import FinetuneSettings, erase_by_finetuning

__all__ = ["TaskVectorConfig", "erase_task_vector"]


@dataclass
class TaskVectorConfig(FinetuneSettings):
    """Settings of task-vector negation (the fine-tuning settings of :class:`FinetuneSettings`, plus s).

    >>> TaskVectorConfig(scale=0.0).scale
    0.0
    """

    scale: float = setting(1.0, "task vector: s in θ − s·τ (0 = the base model)")  # negation at full strength
    # Ilharco et al. fine-tune with AdamW, lr 1e-5, weight decay 0.1, 2000+ iterations of batch 128 (CLIP).
    # Scaled to the shapes world: lr 1e-4, 60 steps of 8 generated images (FinetuneSettings' defaults).
    weight_decay: float = setting(0.1, "AdamW weight decay")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "scale", positive=False)


def erase_task_vector(pipe, concept: Concept | str | dict, config: TaskVectorConfig | None = None, *,
                      progress: bool = True):
    """Erase ``concept`` by negating the task vector of a fine-tune on it; the pipeline is unchanged.

    >>> adapter = erase_task_vector(pipe, "no-red", TaskVectorConfig(scale=1.0))  # doctest: +SKIP
    """
    concept, config = resolve_concept(concept), config or TaskVectorConfig()
    # ΔW = θ' − θ = −s·(θ_ft − θ); s = 0 is exactly 0 (so are the LoRA factors)
    return erase_by_finetuning(pipe, concept, config, method="task-vector", forget_weight=1.0, retain_weight=0.0,
                               progress=progress, desc=f"fine-tune {concept.name}",
                               delta=lambda d: -config.scale * d)
