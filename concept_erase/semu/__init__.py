"""SEMU: SVD-based efficient machine unlearning for diffusion UNets."""

from .config import SemuConfig
from .layers import SemuLayer
from .svd import gradient_subspace, project_perpendicular, select_rank
from .trainer import erase

__all__ = ["SemuConfig", "SemuLayer", "erase", "gradient_subspace", "project_perpendicular", "select_rank"]
