"""Training on the target the scheduler predicts (ε, v or x_0), and every training method on a tiny
Stable Diffusion 2.x pipeline (v-prediction, OpenCLIP-style text encoder, linear projections in the
transformer blocks, one attention-head count per block as in SD 2.1's config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

import concept_erase  # noqa: F401  (the pipeline methods)
from concept_erase import Concept, UnlearningAdapter
from concept_erase.diffusion import add_noise, training_target
from concept_erase.errors import UnsupportedArchitectureError
from concept_erase.methods import erase_with
from concept_erase.world.tokenizer import MAX_LENGTH, build_tokenizer

# Stable Diffusion 2.1's noise schedule (stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json).
SD2_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="v_prediction")
CALL = dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32)
CONCEPT = Concept(name="red", forget=["a red circle", "a red square"], anchor=["a gray circle", "a gray square"],
                  retain=["a blue circle"])

# A few steps each (2-3), on 2 forget images of 16x16 latents.
DATA = dict(num_forget_images=2, sample_steps=2, batch_size=2)
FAST = {
    "semu": dict(steps=3, num_retain_images=2, gradient_batches=1, learning_rate=0.05,
                 target_modules=("*attn2.to_k", "*attn2.to_v"), **DATA),
    "esd-x": dict(iterations=2, sample_steps=2, learning_rate=1e-2),
    "esd-u": dict(iterations=2, sample_steps=2, learning_rate=1e-3),
    "uce": dict(),
    "gradient-ascent": dict(steps=2, num_retain_images=2, learning_rate=1e-3, **DATA),
    "task-vector": dict(steps=2, learning_rate=1e-3, **DATA),
    "simu": dict(steps=2, num_retain_images=2, attribution_images=2, attribution_steps=2, learning_rate=1e-2, **DATA),
}


def sd2_scheduler(kind: str = "ddim"):
    if kind == "ddim":  # the scheduler SD 2.1 ships
        return DDIMScheduler(**SD2_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return EulerDiscreteScheduler(**SD2_SCHEDULE, timestep_spacing="trailing")


def tiny_sd2(scheduler: str = "ddim", seed: int = 0) -> StableDiffusionPipeline:
    """SD 2.1's architecture, scaled down: 16x16 latents, a 2-layer 32-wide GELU CLIP text encoder."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(  # OpenCLIP ViT-H/14 as diffusers converts it: gelu, not quick_gelu
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4, 4),  # SD 2.1: [5, 10, 20, 20]
        use_linear_projection=True, upcast_attention=True, norm_num_groups=8,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    with torch.no_grad():  # random weights are small; let the text move the output visibly
        for name, p in unet.named_parameters():
            if "attn2" in name and p.ndim == 2:
                p.mul_(4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=sd2_scheduler(scheduler), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt="a red circle"):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **CALL).images


# ---------------------------------------------------------------- the target
def test_training_target_follows_the_prediction_type():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 400, 999])
    for cls in (DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        eps_sched = cls(**{**SD2_SCHEDULE, "prediction_type": "epsilon"})
        assert training_target(eps_sched, x0, noise, t) is noise
        sample_sched = cls(**{**SD2_SCHEDULE, "prediction_type": "sample"})
        assert training_target(sample_sched, x0, noise, t) is x0
        v = training_target(cls(**SD2_SCHEDULE), x0, noise, t)
        a = DDPMScheduler(**SD2_SCHEDULE).alphas_cumprod[t].view(-1, 1, 1, 1)
        assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)  # v = √ᾱ ε − √(1−ᾱ) x_0


def test_the_v_target_is_what_the_sampler_reads_as_v():
    """diffusers' DDIM step, fed the target as the model output at x_t, recovers x_0 and ε exactly."""
    scheduler = sd2_scheduler("ddim")
    scheduler.set_timesteps(1000)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for step in (10, 500, 990):
        t = torch.tensor([step])
        x_t = add_noise(scheduler.alphas_cumprod, x0, noise, t)
        out = scheduler.step(training_target(scheduler, x0, noise, t), step, x_t)
        assert torch.allclose(out.pred_original_sample, x0, atol=1e-4)
        if step >= 500:  # ε read as v gives a wrong x_0 (at small t, x_t ≈ x_0 whatever the output)
            assert not torch.allclose(scheduler.step(noise, step, x_t).pred_original_sample, x0, atol=1e-1)


def test_an_unknown_prediction_type_is_refused_by_name():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    with pytest.raises(UnsupportedArchitectureError, match="prediction_type='flow_prediction'"):
        training_target(DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True), x0, x0,
                        torch.tensor([3]))
    with pytest.raises(UnsupportedArchitectureError, match="FlowMatchEulerDiscreteScheduler has prediction_type=None"):
        training_target(FlowMatchEulerDiscreteScheduler(), x0, x0, torch.tensor([3]))


# ---------------------------------------------------------------- a UNet that predicts v exactly
class VelocityOracle(ModelMixin, ConfigMixin):
    """A stand-in UNet whose data is always ``x_star``: at (x_t, t) it outputs the exact v target
    v = √ᾱ ε − √(1−ᾱ) x* with ε = (x_t − √ᾱ x*)/√(1−ᾱ), plus ``block.attn2.to_k``'s change since
    construction (so that the methods have a layer to train, and the output is exact at the start).
    Sampling with it (DDIM, final ᾱ = 1) generates x* itself."""

    @register_to_config
    def __init__(self, sample_size: int = 16, in_channels: int = 4, out_channels: int = 4,
                 time_cond_proj_dim: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("x_star", torch.randn(1, in_channels, sample_size, sample_size, generator=g))
        self.register_buffer("alphas_cumprod", DDPMScheduler(**SD2_SCHEDULE).alphas_cumprod.clone())
        self.block = nn.Module()
        self.block.attn2 = nn.Module()
        self.block.attn2.to_k = nn.Linear(in_channels, in_channels, bias=False)
        self.register_buffer("w0", self.block.attn2.to_k.weight.detach().clone())

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        t = torch.as_tensor(timestep).long().reshape(-1)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).expand(sample.shape[0], 1, 1, 1)
        eps = (sample - a.sqrt() * self.x_star) / (1 - a).sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * self.x_star
        h = sample.mean((2, 3))  # (B, C)
        out = v + (self.block.attn2.to_k(h) - h @ self.w0.T)[:, :, None, None]
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


@pytest.fixture(scope="module")
def oracle_pipe():
    pipe = tiny_sd2()
    scheduler = DDIMScheduler(**SD2_SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=1)  # ends at x_0
    return StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                   unet=VelocityOracle(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


ORACLE = {  # methods whose loss regresses on the data's target, set to use only that loss
    "gradient-ascent": dict(steps=3, num_retain_images=0, target_modules=("*attn2.to_k",), learning_rate=1e-4, **DATA),
    "task-vector": dict(steps=3, target_modules=("*attn2.to_k",), learning_rate=1e-4, **DATA),
    "simu": dict(steps=3, loss="graddiff", num_retain_images=0, target_modules=("*attn2.to_k",),
                 attribution_images=2, attribution_steps=2, threshold=0.01, learning_rate=1e-4, **DATA),
    "semu": dict(steps=3, objective="gradient_ascent", num_retain_images=0, gradient_batches=1,
                 target_modules=("*attn2.to_k",), learning_rate=1e-4, **DATA),
}


def test_the_oracle_sampler_generates_its_data(oracle_pipe):
    x0 = oracle_pipe("a red circle", num_inference_steps=3, guidance_scale=4.0, output_type="latent",
                     generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(x0, oracle_pipe.unet.x_star, atol=1e-3)
    # against it, an ε target is far off: the losses below can tell the two apart
    t = torch.tensor([100, 500, 900])
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    x_t = add_noise(oracle_pipe.scheduler.alphas_cumprod, x0.expand(3, -1, -1, -1), noise, t)
    assert F.mse_loss(oracle_pipe.unet(x_t, t).sample, noise) > 0.1


@pytest.mark.parametrize("method", list(ORACLE))
def test_the_loss_is_zero_for_a_unet_that_predicts_v_exactly(method, oracle_pipe):
    """With a v-prediction scheduler every data loss must compare the UNet with v; against ε the
    oracle's loss would be of order 1 (the test above), against v it is ~0."""
    adapter = erase_with(method, oracle_pipe, CONCEPT, progress=False, **ORACLE[method])
    assert abs(adapter.metadata["final_loss"]) < 1e-3, adapter.metadata["final_loss"]


# ---------------------------------------------------------------- every method on SD 2.x
@pytest.fixture(scope="module")
def sd2_pipe():
    return tiny_sd2()


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


@pytest.mark.parametrize("method", list(FAST))
def test_every_method_erases_on_sd2_and_the_adapter_loads_in_diffusers(method, sd2_pipe, tmp_path):
    pipe = sd2_pipe
    state = _state(pipe)
    base = _image(pipe)
    adapter = erase_with(method, pipe, CONCEPT, progress=False, **FAST[method])
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in state.items())  # training left it alone
    if "final_loss" in adapter.metadata:
        assert np.isfinite(adapter.metadata["final_loss"])
    path = adapter.save(tmp_path / f"{method}.safetensors")
    assert UnlearningAdapter.load(path).modules == adapter.modules

    pipe.load_lora_weights(str(path), adapter_name="plain")  # diffusers' own loader
    plain = _image(pipe)
    pipe.unload_lora_weights()
    pipe.load_unlearning_adapter(str(path))
    ours = _image(pipe)
    pipe.unload_unlearning_adapter()

    assert np.abs(plain - base).max() > 1e-3  # the forget prompt's output changes
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    after = pipe.unet.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)  # unloaded exactly
    np.testing.assert_array_equal(_image(pipe), base)


def test_esd_on_an_euler_v_prediction_pipeline(tmp_path):
    """Euler keeps its samples in σ-space (std up to σ_max ≈ 14.6 here); ESD's partial samples reach
    the UNet scaled to the forward process's x_t (std ≈ 1), in sampling and in the loss alike."""
    pipe = tiny_sd2("euler")
    base = _image(pipe)
    stds = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: stds.append(float(args[0].std())))
    try:
        adapter = erase_with("esd-x", pipe, CONCEPT, progress=False, **{**FAST["esd-x"], "iterations": 4})
    finally:
        hook.remove()
    assert stds and max(stds) < 2.0, stds
    pipe.load_unlearning_adapter(str(adapter.save(tmp_path / "esd.safetensors")))
    assert np.abs(_image(pipe) - base).max() > 1e-3
