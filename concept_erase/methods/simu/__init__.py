"""SIMU ("SIMU: Selective Influence Machine Unlearning", Agarwal, Pamnani and Hakkani-Tür) for diffusion
UNets: the config, the critical-neuron attribution and masks, and the masked Sophia fine-tuning."""

from .attribution import attribution_scores, critical_masks, dual_masks, neuron_gates
from .config import SimuConfig
from .trainer import erase, masked_weights, unet_critical_masks

__all__ = ["SimuConfig", "erase", "attribution_scores", "critical_masks", "dual_masks", "neuron_gates",
           "masked_weights", "unet_critical_masks"]
