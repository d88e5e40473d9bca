"""The world pipeline: where its weights are, how it is sampled, and loading it (offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsNotFoundError

__all__ = ["WEIGHTS_DIR", "SAMPLING", "pipeline_dir", "load_pipeline"]

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The sampler settings the shipped model is measured at (DPM-Solver++ is the pipeline's scheduler).
SAMPLING: dict = {"num_inference_steps": 20, "guidance_scale": 5.0}


def pipeline_dir(weights_dir: str | Path | None = None) -> Path:
    """Directory of the world pipeline, loadable with ``StableDiffusionPipeline.from_pretrained``."""
    path = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    path = path / "pipeline" if (path / "pipeline").is_dir() else path
    if not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(
            f"No world pipeline at {str(path)!r} (model_index.json missing). Reinstall concept-erase, or train "
            "one with `concept-erase world train --out DIR` and pass `weights_dir=DIR`."
        )
    return path


def load_pipeline(device: str | torch.device = "cpu", *, weights_dir: str | Path | None = None,
                  torch_dtype: torch.dtype = torch.float32, progress: bool = False):
    """Load the shipped world model as a ``diffusers.StableDiffusionPipeline`` (offline).

    >>> pipe = load_pipeline()
    >>> pipe("a red circle", generator=torch.Generator().manual_seed(0), **SAMPLING).images[0].size
    (64, 64)
    """
    from diffusers import StableDiffusionPipeline

    from ..diffusion import dtype_kwargs, quiet_hf_logging

    with quiet_hf_logging():  # no "Loading pipeline components..." bar (shown with --verbose)
        pipe = StableDiffusionPipeline.from_pretrained(  # dtype= or torch_dtype=, as the installed diffusers wants
            pipeline_dir(weights_dir), **dtype_kwargs(torch_dtype), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=True,
        )
    pipe.set_progress_bar_config(disable=not progress)
    return pipe.to(device)
