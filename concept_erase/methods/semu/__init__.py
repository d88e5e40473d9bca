"""SEMU ("SEMU: Singular Value Decomposition for Efficient Machine Unlearning", arXiv 2502.07587)
for diffusion UNets: config, the gradient subspace (svd), the W + U R Vᵀ layer, and the trainer."""

from .config import SemuConfig
from .layers import SemuLayer
from .svd import gradient_subspace, project_perpendicular, select_rank
from .trainer import erase, gradient_spectra

__all__ = ["SemuConfig", "SemuLayer", "erase", "gradient_spectra", "gradient_subspace", "project_perpendicular",
           "select_rank"]
