"""The single-file pipelines in pipelines/: loadable as diffusers custom pipelines, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import concept_erase
from concept_erase import SemuConfig, UnlearningAdapter, erase

from .conftest import TINY_CALL

PIPELINES = Path(__file__).parents[1] / "pipelines"


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_stable_diffusion_custom_pipeline(tiny_pipe_dir, tiny_concept, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        tiny_pipe_dir, custom_pipeline=str(PIPELINES / "stable_diffusion_unlearning.py"), trust_remote_code=True,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionUnlearningPipeline"
    assert isinstance(pipe, concept_erase.UnlearningMixin)
    cfg = SemuConfig(steps=3, num_forget_images=2, num_retain_images=0, sample_steps=2, batch_size=2, gradient_batches=1,
                     learning_rate=0.05)
    path = erase(pipe, tiny_concept, cfg, progress=False).save(tmp_path / "a.safetensors")
    state = _state(pipe)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = pipe("a red circle", generator=g(), **TINY_CALL).images
    pipe.load_unlearning_adapter(str(path))
    assert not np.allclose(pipe("a red circle", generator=g(), **TINY_CALL).images, base, atol=1e-5)
    pipe.unload_unlearning_adapter()
    after = _state(pipe)
    assert all(torch.equal(state[k], after[k]) for k in state)


def _tiny_sdxl():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from concept_erase.world.tokenizer import build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8,
    )
    cfg = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
               num_attention_heads=4, num_hidden_layers=2, vocab_size=300, projection_dim=32,
               max_position_embeddings=16)
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    tok = build_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**cfg)), text_encoder_2=CLIPTextModelWithProjection(
            CLIPTextConfig(**cfg)), tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_xl_custom_pipeline_loads_adapters(tmp_path):
    from diffusers import DiffusionPipeline

    _tiny_sdxl().save_pretrained(tmp_path / "sdxl")
    pipe = DiffusionPipeline.from_pretrained(
        tmp_path / "sdxl", custom_pipeline=str(PIPELINES / "stable_diffusion_xl_unlearning.py"),
        trust_remote_code=True, local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionXLUnlearningPipeline"
    # an adapter on the SDXL UNet's cross-attention keys/values: rank-2 factors
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, m in pipe.unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(2, m.in_features, generator=g)
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(m.out_features, 2, generator=g)
    path = UnlearningAdapter(tensors, {"method": "test", "name": "sdxl-test"}).save(tmp_path / "x.safetensors")
    state = _state(pipe)
    call = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    base = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).images
    pipe.load_unlearning_adapter(str(path))
    changed = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).images
    assert not np.allclose(changed, base, atol=1e-5)
    pipe.fuse_unlearning_adapter()
    fused = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).images
    assert np.abs(fused - changed).max() < 1e-4
    pipe.unload_unlearning_adapter()
    after = _state(pipe)
    assert all(torch.equal(state[k], after[k]) for k in state)
