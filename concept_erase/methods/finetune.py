"""Fine-tuning a subset of the UNet's weights on images the base pipeline generates, for the methods
built on it (gradient ascent, task vectors), and their shared settings.

The pipeline's own parameters are never written: the method trains float32 *clones* of the weights
it owns and runs the UNet on them, cast to its dtype, with ``torch.func.functional_call``
(``common.mixed_precision_eps``), so the base model stays available and is bit-identical afterwards,
even on errors. The weight changes are exported as LoRA factors
(``dense.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import UnlearningAdapter
from ..concepts import Concept
from ..config import check_int, check_number, check_patterns, setting
from ..diffusion import add_noise, check_finite, frozen_unet, functional_eps, prompt_data, training_target
from .common import FORGET_OFFSET, RETAIN_OFFSET, master_weights, mixed_precision_eps, select_modules
from .dense import DenseExportSettings, adapter_from_deltas

__all__ = ["FinetuneSettings", "finetune_weights", "erase_by_finetuning"]


@dataclass
class FinetuneSettings(DenseExportSettings):
    """The data, optimiser and export settings of the methods that fine-tune UNet weights on images
    the base pipeline generates (:func:`finetune_weights`): gradient ascent and task vectors."""

    # Every Linear/Conv2d weight (norms and biases, <1% of the UNet, cannot be stored in a LoRA file).
    target_modules: tuple[str, ...] = setting(("*",), "glob patterns of the UNet module names to change")
    learning_rate: float = setting(1e-4, "learning rate")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    steps: int = setting(60, "training steps")
    batch_size: int = setting(8, "batch size")
    # Data: the same generated images as SEMU (SemuConfig's defaults).
    num_forget_images: int = setting(32, "forget images the base model generates")
    sample_steps: int = setting(20, "sampler steps when the pipeline generates training data")
    sample_guidance: float = setting(5.0, "guidance scale when the pipeline generates training data")
    max_timestep: int = setting(1000, "train on timesteps t in [0, max_timestep)")
    seed: int = setting(0, "random seed of the training data and steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_patterns(self, example="'*'")
        check_int(self, "steps", "batch_size", "num_forget_images", "sample_steps")
        check_int(self, "max_timestep", maximum=1000)
        check_number(self, "learning_rate")
        check_number(self, "weight_decay", "sample_guidance", allow_zero=True)


def finetune_weights(pipe, concept, modules: dict[str, nn.Module], config: FinetuneSettings, *, forget_weight: float,
                     retain_weight: float, progress: bool, desc: str) -> tuple[dict[str, torch.Tensor], float | None]:
    """Train clones of ``modules``' weights on the denoising loss of generated data and return them.

    loss = forget_weight · MSE(ε_θ(x_t, c_f), y) + retain_weight · MSE(ε_θ(x_t^r, c_r), y^r), AdamW, where y
    is the UNet's training target at x_t (ε, v or x_0: :func:`~concept_erase.diffusion.training_target`).
    Gradient ascent uses (−α, 1−α); a task vector's fine-tune uses (1, 0). ``config``
    supplies the data and optimiser fields the two configs share. Must run inside
    :func:`~concept_erase.diffusion.frozen_unet`.
    """
    unet = pipe.unet
    device = pipe._execution_device
    alphas = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    g = torch.Generator().manual_seed(config.seed)
    common = dict(seed=config.seed, steps=config.sample_steps, guidance=config.sample_guidance, progress=progress)
    x0_f, f_idx, c_f = prompt_data(pipe, concept.forget, config.num_forget_images, offset=FORGET_OFFSET,
                                   desc="forget latents", **common)
    use_retain = retain_weight != 0 and bool(concept.retain) and config.num_retain_images > 0
    if use_retain:
        x0_r, r_idx, c_r = prompt_data(pipe, concept.retain, config.num_retain_images, offset=RETAIN_OFFSET,
                                       desc="retain latents", **common)

    def batch(x0, idx, emb):
        b = torch.randint(0, len(x0), (min(config.batch_size, len(x0)),), generator=g)
        t = torch.randint(0, config.max_timestep, (len(b),), generator=g).to(device)
        noise = torch.randn(x0[b].shape, generator=g).to(device=device, dtype=x0.dtype)
        return add_noise(alphas, x0[b], noise, t), t, training_target(pipe.scheduler, x0[b], noise, t), emb[idx[b]]

    params = master_weights(modules)  # float32 whatever the UNet's dtype, so is AdamW's state
    eps = mixed_precision_eps(unet, params)
    opt = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    mse = torch.nn.functional.mse_loss
    value = None
    for step in bar:
        x_t, t, target, c = batch(x0_f, f_idx, c_f)
        loss_f = mse(eps(x_t, t, c), target)
        loss = forget_weight * loss_f
        if use_retain:
            xr_t, tr, target_r, cr = batch(x0_r, r_idx, c_r)
            loss = loss + retain_weight * mse(eps(xr_t, tr, cr), target_r)
        check_finite(loss, "loss", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        bar.set_postfix(loss=f"{value:.4f}", forget=f"{loss_f.item():.4f}")
    return {k: v.detach() for k, v in params.items()}, value


def erase_by_finetuning(pipe, concept: Concept, config: FinetuneSettings, *, method: str, forget_weight: float,
                        retain_weight: float, progress: bool, desc: str,
                        delta: Callable[[torch.Tensor], torch.Tensor] = lambda d: d) -> UnlearningAdapter:
    """Fine-tune the ``config.target_modules`` weights (:func:`finetune_weights`) and return the adapter
    of ``delta(θ_tuned − θ)`` per layer; the pipeline is unchanged."""
    start = time.perf_counter()
    unet = pipe.unet
    modules = select_modules(unet, config.target_modules)
    with frozen_unet(unet):
        tuned, final = finetune_weights(pipe, concept, modules, config, forget_weight=forget_weight,
                                        retain_weight=retain_weight, progress=progress, desc=desc)
        deltas = ((n, delta(tuned.pop(f"{n}.weight") - m.weight)) for n, m in modules.items())
        return adapter_from_deltas(
            deltas, pipe=pipe, method=method, concept=concept, config=config,
            trainable_parameters=sum(m.weight.numel() for m in modules.values()), start=start,
            max_error=config.lora_max_error, max_rank=config.lora_max_rank, extra={"final_loss": final},
        )
