"""Single-file checkpoints in the original LDM layout (A1111, ComfyUI, Civitai): diffusers -> LDM keys.

diffusers reads these files with ``StableDiffusionPipeline.from_single_file`` (its
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint``
in ``diffusers/loaders/single_file_utils.py``); this module is the other direction, for the SD 1.x
layout (one CLIP text encoder under ``cond_stage_model.transformer.``, the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.``), so that a diffusers pipeline (the
shipped world, in the tests) can be written as the kind of file users download.

>>> from concept_erase import world  # doctest: +SKIP
>>> save_single_file(world.load_pipeline("cpu"), "world.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._io import atomic_path
from .errors import UnsupportedArchitectureError

__all__ = ["unet_to_ldm", "vae_to_ldm", "clip_to_ldm", "pipeline_to_ldm", "save_single_file",
           "LDM_UNET_PREFIX", "LDM_VAE_PREFIX", "LDM_CLIP_PREFIX"]

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."

# resnet sub-layers: diffusers name -> LDM name (UNet ResBlock)
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# VAE attention sub-layers: diffusers name -> LDM name (the LDM ones are 1x1 convolutions)
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _resnet(name: str, table) -> str:
    layer, _, param = name.rpartition(".")
    for new, old in table:
        if layer == new:
            return f"{old}.{param}"
    return name


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict -> LDM ``openaimodel`` keys (without the
    ``model.diffusion_model.`` prefix). ``config``: the UNet's config (``layers_per_block``, block types).
    Only the SD 1.x/2.x kind of UNet (no class or added embeddings) is written."""
    if config.get("class_embed_type") or config.get("addition_embed_type"):
        raise UnsupportedArchitectureError("Writing an LDM checkpoint supports UNets without class or added "
                                           "embeddings (SD 1.x/2.x); this one has them (SDXL?).")
    per = int(config["layers_per_block"])
    n_down = len(config["down_block_types"])
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        layer, _, param = key.rpartition(".")
        if layer in _UNET_TOP:
            new = f"{_UNET_TOP[layer]}.{param}"
        elif parts[0] == "down_blocks":
            block, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":  # the block's last input block: its `op` convolution
                new = f"input_blocks.{1 + block * (per + 1) + per}.0.op.{rest.split('.', 1)[1]}"
            else:
                index = 1 + block * (per + 1) + j
                new = (f"input_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets" else
                       f"input_blocks.{index}.1.{rest}")
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = (f"middle_block.{2 * j}.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets" else
                   f"middle_block.{2 * j + 1}.{rest}")
        elif parts[0] == "up_blocks":
            block, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":  # in the block's last output block, after its resnet (and attention)
                has_attention = config["up_block_types"][block].startswith("CrossAttn")
                new = f"output_blocks.{block * (per + 1) + per}.{2 if has_attention else 1}.{rest}"
            else:
                index = block * (per + 1) + j
                new = (f"output_blocks.{index}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets" else
                       f"output_blocks.{index}.1.{rest}")
        else:
            raise UnsupportedArchitectureError(f"UNet weight {key!r} has no place in an LDM checkpoint.")
        out[new] = value
    if n_down and not out:
        raise UnsupportedArchitectureError("The UNet state dict is empty.")
    return out


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict -> LDM ``autoencoder`` keys (without ``first_stage_model.``).
    The decoder's blocks are numbered from the lowest resolution in diffusers and from the highest
    in LDM; the mid-block attention's linears become 1x1 convolutions, as in the original files."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        coder, rest = parts[0], parts[1:]
        if coder in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        head = rest[0]
        if head in ("conv_in", "conv_out"):
            new = key
        elif head == "conv_norm_out":
            new = f"{coder}.norm_out.{rest[1]}"
        elif head in ("down_blocks", "up_blocks"):
            block, kind, j, tail = int(rest[1]), rest[2], rest[3], ".".join(rest[4:])
            name, ldm_block = ("down", block) if head == "down_blocks" else ("up", n_up - 1 - block)
            if kind in ("downsamplers", "upsamplers"):
                new = f"{coder}.{name}.{ldm_block}.{name}sample.{tail}"
            else:
                new = f"{coder}.{name}.{ldm_block}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        elif head == "mid_block":
            kind, j, tail = rest[1], int(rest[2]), ".".join(rest[3:])
            if kind == "resnets":
                new = f"{coder}.mid.block_{j + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{coder}.mid.attn_1.{_resnet(tail, _VAE_ATTENTION)}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        else:
            raise UnsupportedArchitectureError(f"VAE weight {key!r} has no place in an LDM checkpoint.")
        out[new] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` state dict -> the keys under ``cond_stage_model.transformer.`` (``text_model.*``;
    transformers 5.6+ stores them without the ``text_model.`` level)."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state_dict.items()}


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The UNet, VAE and text encoder of an SD 1.x-style pipeline as one LDM-layout state dict."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise UnsupportedArchitectureError("Writing an LDM checkpoint supports pipelines with one text encoder "
                                           "(SD 1.x/2.x with CLIP); this one has two (SDXL).")
    out = {}
    for prefix, part in ((LDM_UNET_PREFIX, unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)),
                         (LDM_VAE_PREFIX, vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)),
                         (LDM_CLIP_PREFIX, clip_to_ldm(pipe.text_encoder.state_dict()))):
        out.update({prefix + k: v.detach().to("cpu").contiguous() for k, v in part.items()})
    return out


def save_single_file(pipe, path: str | os.PathLike) -> Path:
    """Write ``pipe`` as one LDM-layout ``.safetensors`` file (atomically); returns the path."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    tensors = pipeline_to_ldm(pipe)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path
