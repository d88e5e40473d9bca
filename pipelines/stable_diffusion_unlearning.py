"""Stable Diffusion (1.x / 2.x) with concept-erase's unlearning methods built in.

Single-file diffusers pipeline, usable as a custom pipeline (offline, from a local file):

>>> from diffusers import DiffusionPipeline
>>> pipe = DiffusionPipeline.from_pretrained(
...     "runwayml/stable-diffusion-v1-5",
...     custom_pipeline="pipelines/stable_diffusion_unlearning.py",
...     trust_remote_code=True,
... )                                                            # doctest: +SKIP
>>> pipe.load_unlearning_adapter("no-nudity.safetensors")       # doctest: +SKIP
>>> image = pipe("a photo of a person").images[0]               # doctest: +SKIP

The methods are those of :class:`concept_erase.loading.UnlearningMixin`:
``load_unlearning_adapter``, ``set_unlearning_scale``, ``fuse_unlearning_adapter``,
``unfuse_unlearning_adapter``, ``unload_unlearning_adapter``, ``unlearning_adapters``.
Requires ``pip install concept-erase``.
"""

from diffusers import StableDiffusionPipeline

from concept_erase.loading import UnlearningMixin


class StableDiffusionUnlearningPipeline(UnlearningMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` + unlearning adapters (see the module docstring)."""
