"""Architectures of the shapes world: a tiny Stable Diffusion (VAE, UNet, CLIP text encoder) and
the concept classifier. Sizes were chosen by timing train steps on 2 CPU cores (see the README)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import MAX_LENGTH
from .vocab import BACKGROUNDS, COLOURS, SHAPES

__all__ = ["WorldArchitecture", "build_vae", "build_unet", "build_text_encoder", "build_schedulers", "WorldClassifier"]


@dataclass(frozen=True)
class WorldArchitecture:
    """Sizes of the world model. ``tiny()`` is for smoke tests."""

    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)  # 3 down-samplings: 64x64 pixels -> 8x8x4 latents
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    text_width: int = 128
    text_layers: int = 2

    @classmethod
    def tiny(cls) -> "WorldArchitecture":
        return cls(image_size=32, vae_channels=(8, 16), unet_channels=(32, 32, 32), text_width=32, text_layers=1)


def build_vae(arch: WorldArchitecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, arch.vae_channels[0]),
        sample_size=arch.image_size,
    )


def build_unet(arch: WorldArchitecture, latent_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_width,
        attention_head_dim=8,
        norm_num_groups=min(32, arch.unet_channels[0]),
    )


def build_text_encoder(arch: WorldArchitecture, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=arch.text_width,
            intermediate_size=2 * arch.text_width,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def build_schedulers() -> tuple[DDPMScheduler, DPMSolverMultistepScheduler]:
    """Training (DDPM) and sampling (DPM-Solver++) schedulers sharing Stable Diffusion's noise schedule."""
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return DDPMScheduler(**common), DPMSolverMultistepScheduler(**common)


class WorldClassifier(nn.Module):
    """A small CNN that reads colour, shape and background from a world image.

    ``forward(images)`` takes ``(B, 3, H, W)`` floats in ``[0, 1]`` and returns a dict of logits
    ``{"colour": (B, 8), "shape": (B, 6), "background": (B, 3)}``; ``features(images)`` returns the
    ``(B, feature_dim)`` penultimate activations used for FID in this world.
    """

    heads = {"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS}

    def __init__(self, width: int = 16, feature_dim: int = 128):
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        stem = nn.Sequential(nn.Conv2d(3, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.body = nn.Sequential(stem, block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))  # H/16
        self.proj = nn.Sequential(nn.Linear(4 * w, feature_dim), nn.ReLU(inplace=True))
        self.feature_dim = feature_dim
        self.colour = nn.Linear(feature_dim, len(COLOURS))
        self.shape = nn.Linear(feature_dim, len(SHAPES))
        self.background = nn.Linear(feature_dim, len(BACKGROUNDS))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - 0.5) / 0.25  # (B, 3, H, W) in [0, 1] -> roughly unit scale
        x = self.body(x).mean(dim=(2, 3))  # global average pool: (B, 4w)
        return self.proj(x)  # (B, feature_dim)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {"colour": self.colour(f), "shape": self.shape(f), "background": self.background(f)}
