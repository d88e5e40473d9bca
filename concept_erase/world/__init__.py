"""The shapes world: concept-erase's embedded default.

A procedurally drawn world of coloured shapes on backgrounds, a tiny real Stable Diffusion pipeline
trained on it (shipped with the package, runs offline on a CPU in about a second per 16 images) and
a concept classifier that knows the ground truth. Everything in concept-erase can be tried and
measured on it without a GPU, a network or downloaded weights.

>>> from concept_erase import world
>>> pipe = world.load_pipeline()
>>> images = pipe(["a red circle", "a blue star"], **world.SAMPLING).images
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsNotFoundError
from .captions import caption, fill, parse_prompt
from .classifier import accuracy, load_classifier, to_tensor
from .render import IMAGE_SIZE, Scene, render, render_batch
from .tokenizer import build_tokenizer
from .vocab import (
    ALLOWED_BACKGROUNDS, BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, SHAPES, SYNONYMS, TRAIN_TEMPLATES,
)

__all__ = [
    "load_pipeline", "load_classifier", "pipeline_dir", "WEIGHTS_DIR", "SAMPLING",
    "render", "render_batch", "Scene", "caption", "fill", "parse_prompt", "accuracy", "to_tensor",
    "build_tokenizer", "COLOURS", "SHAPES", "BACKGROUNDS", "SYNONYMS", "ALLOWED_BACKGROUNDS",
    "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "IMAGE_SIZE",
]

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

    pipe = StableDiffusionPipeline.from_pretrained(
        pipeline_dir(weights_dir), torch_dtype=torch_dtype, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=not progress)
    return pipe.to(device)
