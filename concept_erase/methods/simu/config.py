"""``SimuConfig``: every setting of a SIMU erasure, validated, and serialised into the adapter file."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_choice, check_fraction, check_int, check_number, check_patterns, setting
from ..dense import DenseExportSettings
from .attribution import MASK_KINDS

__all__ = ["SimuConfig", "SIMU_OBJECTIVES", "SIMU_TARGETS"]

SIMU_OBJECTIVES = ("graddiff", "relabel")
# The feed-forward layers (GEGLU input projection and output projection) and every attention
# projection of every transformer block: the UNet's counterparts of an LLM's MLP and attention.
SIMU_TARGETS = ("*ff.net.0.proj", "*ff.net.2", "*attn1.to_q", "*attn1.to_k", "*attn1.to_v", "*attn1.to_out.0",
                "*attn2.to_q", "*attn2.to_k", "*attn2.to_v", "*attn2.to_out.0")


@dataclass
class SimuConfig(DenseExportSettings):
    """Settings of SIMU (critical-neuron mask + masked Sophia fine-tuning).

    >>> SimuConfig().attribution_steps, SimuConfig().threshold
    (5, 0.3)
    """

    target_modules: tuple[str, ...] = setting(SIMU_TARGETS, "glob patterns of the UNet layers whose neurons are scored")
    # The paper's defaults (Figures 2-3): m = 5 Riemann steps of the attribution, threshold t = 0.3.
    attribution_steps: int = setting(5, "SIMU: Riemann steps m of the integrated-gradient attribution")
    threshold: float = setting(0.3, "SIMU: layer-wise mask threshold t (fraction of the layer's top attribution)")
    # "dual": forget-critical and not retain-critical (the paper's Dual-Neuron variant, Figure 5);
    # it needs retain prompts, and falls back to "forget" without them.
    mask_kind: str = setting("dual", "SIMU: critical neurons: forget-critical, or dual (forget and not retain)",
                             choices=MASK_KINDS)
    # The paper updates the critical MLP neurons and every attention projection. On a UNet the
    # concept lives in cross-attention, and updating every attention row costs retention
    # (README, "SIMU"): attention projections are masked too unless this is off.
    mask_attention: bool = setting(True, "SIMU: mask attention projections too (off: train all their rows)")
    attribution_images: int = setting(16, "SIMU: forget (and retain) images the attribution is computed on")
    # GradDiff = forget ascent + retain descent (the paper's SIMU-GradDiff); relabel = SEMU's objective.
    loss: str = setting("relabel", "SIMU: objective of the masked fine-tuning (graddiff or relabel)",
                        choices=SIMU_OBJECTIVES)
    retain_weight: float = setting(1.0, "SIMU: weight of the retain term")
    # Sophia (arXiv 2305.14342): betas, ρ and weight decay are the paper's GPT-2 settings; the
    # learning rate bounds each step's change of a weight (the update is clipped to [−1, 1]).
    # Tuned on no-blue (not a benchmark concept; README, "SIMU"): 2e-4 x 100 steps left 67% of the
    # forget images blue, 1e-3 x 100 erased but cost retain accuracy, 5e-4 x 150 did both.
    learning_rate: float = setting(5e-4, "Sophia learning rate (the largest change of a weight per step)")
    beta1: float = setting(0.965, "Sophia: EMA of the gradient")
    beta2: float = setting(0.99, "Sophia: EMA of the Hessian estimate")
    rho: float = setting(0.04, "Sophia: ρ, the scale of the Hessian in the clipped update")
    weight_decay: float = setting(0.0, "Sophia: decoupled weight decay (of the delta, which starts at 0)")
    hessian_interval: int = setting(10, "Sophia: steps between Hessian estimates (k)")
    steps: int = setting(150, "training steps")
    batch_size: int = setting(8, "batch size")
    num_forget_images: int = setting(32, "forget images the base model generates")
    num_retain_images: int = setting(32, "retain images the base model generates")
    sample_steps: int = setting(20, "sampler steps when the pipeline generates training data")
    sample_guidance: float = setting(5.0, "guidance scale when the pipeline generates training data")
    max_timestep: int = setting(1000, "train on timesteps t in [0, max_timestep)")
    seed: int = setting(0, "random seed of the training data and steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_patterns(self, example="'*ff.net.2'")
        check_int(self, "attribution_steps", "attribution_images", "hessian_interval", "batch_size",
                  "num_forget_images", "sample_steps")
        check_int(self, "steps", "num_retain_images", minimum=0)
        check_int(self, "max_timestep", maximum=1000)
        check_fraction(self, "threshold")
        check_fraction(self, "beta1", "beta2", low_open=False, high_open=True)
        check_choice(self, "mask_kind", MASK_KINDS)
        check_choice(self, "loss", SIMU_OBJECTIVES)
        check_number(self, "learning_rate", "rho")
        check_number(self, "retain_weight", "weight_decay", "sample_guidance", allow_zero=True)
