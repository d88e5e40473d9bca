"""The shared diffusion plumbing: seeded data from prompts, the forward process, the frozen UNet,
finiteness checks and quiet progress bars, as every method, the evaluation and the demo use them."""

from __future__ import annotations

import pytest
import torch

from concept_erase.diffusion import (
    add_noise, check_finite, data_seeds, encode_prompts, frozen_unet, generate_images, generate_latents,
    prompt_latents, quiet_progress,
)
from concept_erase.errors import InvalidPromptError, TrainingDivergedError

from .conftest import TINY_CALL

CALL = {k: v for k, v in TINY_CALL.items() if k != "output_type"}


def test_training_noise_follows_ddpm_at_every_timestep(tiny_pipe):
    """q(x_t | x_0) for any t, even though the pipeline's sampler (DPM-Solver++) only knows its own timesteps."""
    from diffusers import DDPMScheduler

    tiny_pipe.scheduler.set_timesteps(3)  # what sampling leaves behind
    ddpm = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    t = torch.tensor([0, 7, 250, 501, 900, 999])
    ours = add_noise(tiny_pipe.scheduler.alphas_cumprod, x0, noise, t)
    assert torch.allclose(ours, ddpm.add_noise(x0, noise, t), atol=1e-6)


def test_images_depend_on_prompt_and_seed_only_not_on_the_batch(tiny_pipe):
    prompts, seeds = ["a red circle", "a blue star", "a red circle"], [3, 4, 5]
    together = generate_images(tiny_pipe, prompts, seeds, batch_size=3, **CALL)
    one_by_one = generate_images(tiny_pipe, prompts, seeds, batch_size=1, **CALL)
    # same starting noise per image; batched matmuls may differ in the last float bits, nothing more
    assert together.shape == (3, 32, 32, 3) and abs(together - one_by_one).max() < 1e-5
    assert abs(together[0] - together[2]).max() > 1e-3  # same prompt, other seed: another image
    with pytest.raises(InvalidPromptError, match="2 prompts but 1 seeds"):
        generate_images(tiny_pipe, prompts[:2], [0], **CALL)


def test_prompt_latents_are_the_methods_data_rule(tiny_pipe):
    """n latents of the prompts cycled, seeded seed·1000003 + offset + i: what membership inference regenerates."""
    prompts = ["a red circle", "a red star"]
    x0, idx, emb = prompt_latents(tiny_pipe, prompts, 3, seed=2, offset=500_000, steps=2, guidance=4.0)
    assert data_seeds(2, 3, offset=500_000) == [2_500_006, 2_500_007, 2_500_008]
    assert idx.tolist() == [0, 1, 0] and emb.shape[0] == 2
    assert torch.equal(emb, encode_prompts(tiny_pipe, prompts))
    direct = generate_latents(tiny_pipe, ["a red circle", "a red star", "a red circle"], data_seeds(2, 3, offset=500_000),
                              steps=2, guidance=4.0)
    assert torch.equal(x0, direct)


def test_frozen_unet_restores_modes_and_flags_even_on_error(tiny_pipe):
    unet = tiny_pipe.unet
    unet.train()
    first = unet.conv_out.weight
    first.requires_grad_(True)
    unet.conv_in.weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_unet(unet):
            assert not unet.training and not any(p.requires_grad for p in unet.parameters())
            raise RuntimeError("boom")
    assert unet.training and first.requires_grad and not unet.conv_in.weight.requires_grad
    unet.eval()


def test_quiet_progress_restores_the_pipelines_own_settings(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=False, desc="mine")
    with quiet_progress(tiny_pipe):
        assert tiny_pipe._progress_bar_config["disable"] is True
    assert tiny_pipe._progress_bar_config == {"disable": False, "desc": "mine"}


def test_a_non_finite_loss_stops_with_a_message_that_says_what_to_do():
    check_finite(torch.tensor(1.0), "loss", 3)
    with pytest.raises(TrainingDivergedError, match=r"The loss became nan at step 3; the erasure was stopped and "
                                                    r"nothing was written. Lower `learning_rate`, or check the prompts"):
        check_finite(torch.tensor(float("nan")), "loss", 3)
