"""Stable Diffusion XL with concept-erase's unlearning methods built in.

>>> from diffusers import DiffusionPipeline
>>> pipe = DiffusionPipeline.from_pretrained(
...     "stabilityai/stable-diffusion-xl-base-1.0",
...     custom_pipeline="pipelines/stable_diffusion_xl_unlearning.py",
...     trust_remote_code=True,
... )                                                            # doctest: +SKIP
>>> pipe.load_unlearning_adapter("my-sdxl-adapter.safetensors") # doctest: +SKIP

Loading, scaling, fusing and unloading adapters work on SDXL (tested on a tiny SDXL-architecture
model), and so does training them on SDXL (``concept-erase erase --base <an SDXL pipeline>``, or
``concept_erase.erase``): the methods condition the UNet on both text encoders' hidden states and
on SDXL's pooled embedding and time ids (``concept_erase.diffusion.Conditioning``;
``tests/test_sdxl_training.py``). The codebook method is the exception: it refuses SDXL.
"""

from diffusers import StableDiffusionXLPipeline

from concept_erase.loading import UnlearningMixin


class StableDiffusionXLUnlearningPipeline(UnlearningMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` + unlearning adapters (see the module docstring)."""
