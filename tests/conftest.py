"""Shared fixtures. Tests run offline: HF_HUB_OFFLINE is set before diffusers is imported."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("CONCEPT_ERASE_HOME", os.path.join(os.path.dirname(__file__), ".adapters-home-unused"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def build_tiny_pipeline(seed: int = 0):
    """A random tiny Stable Diffusion pipeline (world tokenizer, 32x32 images, 8x8 latents)."""
    from diffusers import StableDiffusionPipeline

    from concept_erase.world.models import WorldArchitecture, build_schedulers, build_text_encoder, build_unet, build_vae
    from concept_erase.world.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    arch = WorldArchitecture.tiny()
    tok = build_tokenizer()
    vae = build_vae(arch)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=build_text_encoder(arch, len(tok)), tokenizer=tok, unet=build_unet(arch, 16),
        scheduler=build_schedulers()[1], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    # random UNet weights are small; make the output depend visibly on the text
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "attn2" in name and p.ndim == 2:
                p.mul_(4)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe():
    import concept_erase  # noqa: F401  (attaches the pipeline methods)

    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "pipe"
    build_tiny_pipeline().save_pretrained(path)
    return path


TINY_CALL = dict(num_inference_steps=3, guidance_scale=4.0, height=32, width=32, output_type="np")


def tiny_images(pipe, prompt="a red circle", seed=0):
    return pipe([prompt, "a blue star"], generator=[torch.Generator().manual_seed(seed + i) for i in range(2)],
                **TINY_CALL).images


@pytest.fixture(scope="session")
def world_pipe():
    import concept_erase
    from concept_erase import world

    return world.load_pipeline()


@pytest.fixture(scope="session")
def world_classifier():
    from concept_erase import world

    return world.load_classifier()


@pytest.fixture
def tiny_concept():
    from concept_erase import Concept

    return Concept(name="red", forget=["a red circle", "a red square"], anchor=["a gray circle", "a gray square"],
                   retain=["a blue circle", "a green star"])


@pytest.fixture
def fast_config():
    from concept_erase import SemuConfig

    # target_pool=0: a base forward per step (the pool's own tests set it)
    return SemuConfig(steps=4, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2,
                      gradient_batches=2, learning_rate=0.05, target_pool=0)
