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

from .captions import caption, fill, parse_prompt
from .classifier import accuracy, load_classifier, to_tensor
from .pipeline import SAMPLING, WEIGHTS_DIR, load_pipeline, pipeline_dir
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
