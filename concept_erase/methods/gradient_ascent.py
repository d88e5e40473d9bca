"""Gradient ascent with a retain term (the "gradient difference" baseline of Maini et al., "TOFU: A
Task of Fictitious Unlearning for LLMs", arXiv 2401.06121; plain ascent as in Jang et al., "Knowledge
Unlearning for Mitigating Privacy Risks in Language Models", arXiv 2210.01504): *maximise* the
denoising loss on the forget data while minimising it on the retain data,
loss = α·(−L_forget) + (1−α)·L_retain, with AdamW.

The forget and retain data are images the base pipeline generates from the concept's prompts,
exactly the data SEMU trains on (same seeds). The full-weight deltas are compressed to LoRA
factors (``dense.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..concepts import Concept, resolve_concept
from ..config import check_fraction, check_int, setting
from .finetune import FinetuneSettings, erase_by_finetuning

__all__ = ["GradientAscentConfig", "erase_gradient_ascent"]


@dataclass
class GradientAscentConfig(FinetuneSettings):
    """Settings of gradient ascent (the fine-tuning settings of :class:`FinetuneSettings`, plus α).

    >>> GradientAscentConfig().alpha
    0.5
    """

    # loss = α·(−L_forget) + (1−α)·L_retain; α = 0.5 weighs forgetting and retaining equally.
    alpha: float = setting(0.5, "gradient ascent: weight α of the forget term, 1 − α of the retain term")
    # The LLM recipe this baseline comes from is AdamW, lr 1e-5, 3 epochs over the forget set; on the
    # shapes world that moves nothing in 3 epochs of 32 images: 1e-4 for 60 steps of 8 is the scaled
    # setting (FinetuneSettings' defaults). Weight decay 0.01 is AdamW's default.
    num_retain_images: int = setting(32, "retain images the base model generates")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "alpha")
        check_int(self, "num_retain_images", minimum=0)


def erase_gradient_ascent(pipe, concept: Concept | str | dict, config: GradientAscentConfig | None = None, *,
                          progress: bool = True):
    """Erase ``concept`` by gradient ascent on its generated images; the pipeline is unchanged.

    >>> adapter = erase_gradient_ascent(pipe, "no-red")  # doctest: +SKIP
    """
    concept, config = resolve_concept(concept), config or GradientAscentConfig()
    return erase_by_finetuning(pipe, concept, config, method="gradient-ascent", forget_weight=-config.alpha,
                               retain_weight=1 - config.alpha, progress=progress,
                               desc=f"gradient ascent {concept.name}")
