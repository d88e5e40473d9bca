"""Stable Diffusion XL with concept-erase's unlearning methods built in.

>>> from diffusers import DiffusionPipeline
>>> pipe = DiffusionPipeline.from_pretrained(
...     "stabilityai/stable-diffusion-xl-base-1.0",
...     custom_pipeline="pipelines/stable_diffusion_xl_unlearning.py",
...     trust_remote_code=True,
... )                                                            # doctest: +SKIP
>>> pipe.load_unlearning_adapter("my-sdxl-adapter.safetensors") # doctest: +SKIP

Loading, scaling, fusing and unloading adapters work on SDXL (tested on a tiny SDXL-architecture
model). Training SEMU adapters *on* SDXL is not supported yet: the trainer conditions the UNet on
text embeddings only, while SDXL also needs pooled embeddings and time ids.
"""

from diffusers import StableDiffusionXLPipeline

from concept_erase.loading import UnlearningMixin


class StableDiffusionXLUnlearningPipeline(UnlearningMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` + unlearning adapters (see the module docstring)."""
