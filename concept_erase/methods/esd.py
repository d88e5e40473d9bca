"""ESD (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, arXiv 2303.07345): fine-tune
a copy of the UNet so that, conditioned on the concept, it predicts the frozen model's *negatively guided* noise

    ε_θ(x_t, c, t)  ←  ε*(x_t, t) − η·(ε*(x_t, c, t) − ε*(x_t, t))        (paper eq. 5)

on x_t reached by partially sampling the frozen model with the concept prompt (no dataset). As its authors
do, ESD trains on the concept's name (``Concept.phrase``: "nudity", "Van Gogh", "red"); a concept
without a phrase falls back to its forget prompts.
ESD-x trains the cross-attention (attn2) layers, ESD-u everything else. The full-weight deltas are
compressed to LoRA factors (``dense.py``).

Official code: github.com/rohitgandikota/erasing, ``esd_sd.py`` (2024, diffusers) and the CompVis
code of the paper (``train-scripts/train-esd.py``). Deviation: only the *weights* of the selected
Linear/Conv2d layers are trained; the official code also trains their biases (≈0.1% of those
parameters), which a LoRA file cannot carry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..concepts import Concept, resolve_concept
from ..config import check_choice, check_int, check_number, setting
from ..diffusion import (Conditioning, base_eps_of, check_finite, encode_conditioning, frozen_unet, functional_eps,
                         null_conditioning, unet_prediction)
from ..objectives import esd as esd_loss
from .common import float32_eps, master_weights, mixed_precision_eps, weight_modules
from .dense import DenseExportSettings, adapter_from_deltas

__all__ = ["EsdConfig", "erase_esd", "TRAIN_METHODS", "partial_sample"]

# Which Linear/Conv2d layers each variant trains (esd_sd.py `get_esd_trainable_parameters`).
TRAIN_METHODS = {
    "esd-x": lambda name: "attn2" in name,  # cross-attention: 5.1% of SD 1.x
    "esd-u": lambda name: "attn2" not in name,  # everything else: 94.9%
    "esd-all": lambda name: True,
    "esd-x-strict": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
}


@dataclass
class EsdConfig(DenseExportSettings):
    """Settings of ESD. Defaults are the official ones (esd_sd.py) unless a comment says otherwise.

    >>> EsdConfig(train_method="esd-u").iterations
    200
    """

    train_method: str = setting("esd-x", "ESD layer set: esd-x (cross-attention), esd-u (all but it), esd-all, "
                                         "esd-x-strict (attn2 to_k/to_v)", choices=tuple(TRAIN_METHODS))
    # esd_sd.py --train_method: esd-x | esd-u | esd-all | esd-x-strict
    # η of paper eq. 5 (and the CompVis code, --negative_guidance 1.0). esd_sd.py writes the target as
    # ε*(c) − η'(ε*(c) − ε*(∅)) with η' = 2, which is the same target as η = 1 here.
    negative_guidance: float = setting(1.0, "ESD: negative-guidance strength η")
    iterations: int = setting(200, "ESD: training iterations")  # esd_sd.py --iterations 200 (CompVis code: 1000)
    learning_rate: float = setting(5e-5, "learning rate")  # esd_sd.py --lr 5e-5, Adam (CompVis code: 1e-5)
    batch_size: int = setting(1, "batch size")  # esd_sd.py: batchsize = 1
    # Partial sampling of x_t with the concept prompt: esd_sd.py runs 50 DDIM steps at guidance 3 and stops
    # at a uniformly drawn step. Here: the pipeline's own scheduler; 20 steps is the shapes world's sampler
    # setting (world.SAMPLING); use 50 on Stable Diffusion.
    sample_steps: int = setting(20, "sampler steps when the pipeline generates training data")
    # esd_sd.py --guidance_scale 3
    sample_guidance: float = setting(3.0, "guidance scale when the pipeline generates training data")
    seed: int = setting(0, "random seed of the training data and steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "train_method", tuple(TRAIN_METHODS))
        check_int(self, "iterations", "batch_size", "sample_steps")
        check_number(self, "learning_rate")
        check_number(self, "negative_guidance", "sample_guidance", allow_zero=True)


def partial_sample(pipe, scheduler, c: Conditioning, c_null: Conditioning, stop: int, *, guidance: float,
                   generator: torch.Generator) -> torch.Tensor:
    """x at the ``stop``-th timestep of ``scheduler`` (already ``set_timesteps``), as the sampler keeps it:
    ``stop`` sampler steps of the frozen UNet from pure noise with classifier-free guidance, conditioned on
    ``c`` (``B`` prompts) against the one-row ``c_null`` (bare hidden states stand for themselves)."""
    c, c_null = (x if isinstance(x, Conditioning) else Conditioning(x) for x in (c, c_null))
    unet = pipe.unet
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (len(c), unet.config.in_channels, *size)
    x = torch.randn(shape, generator=generator).to(device=c.device, dtype=c.dtype) * scheduler.init_noise_sigma
    cond = Conditioning.cat([c_null.expand(len(c)), c])
    with torch.no_grad():
        for t in scheduler.timesteps[:stop]:
            inp = scheduler.scale_model_input(torch.cat([x, x]), t)
            e_null, e_c = unet_prediction(unet, inp, t, cond).chunk(2)
            x = scheduler.step(e_null + guidance * (e_c - e_null), t, x).prev_sample
    return x


def erase_esd(pipe, concept: Concept | str | dict, config: EsdConfig | None = None, *,
              progress: bool = True):
    """Erase ``concept`` from ``pipe`` with ESD; returns an adapter, the pipeline is unchanged.

    >>> adapter = erase_esd(pipe, "no-red", EsdConfig(train_method="esd-x"))  # doctest: +SKIP
    """
    concept = resolve_concept(concept)
    config = config or EsdConfig()
    start = time.perf_counter()
    unet = pipe.unet
    modules = weight_modules(unet, TRAIN_METHODS[config.train_method])
    g = torch.Generator().manual_seed(config.seed)
    # A private scheduler: the pipeline's keeps its state. Same class and noise schedule.
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    prompts = concept.phrase_prompts()  # esd_sd.py --prompt: the concept's name
    c_f = encode_conditioning(pipe, prompts)  # P rows
    c_null = null_conditioning(pipe)  # 1 row: the pipeline's unconditional branch

    with frozen_unet(unet):
        params = master_weights(modules)  # float32 whatever the UNet's dtype, so is Adam's state
        eps, base_eps = mixed_precision_eps(unet, params), float32_eps(base_eps_of(unet))
        opt = torch.optim.Adam(params.values(), lr=config.learning_rate)
        bar = tqdm(range(config.iterations), desc=f"esd {concept.name}", disable=not progress)
        loss_value = None
        for it in bar:
            fi = torch.randint(0, len(prompts), (config.batch_size,), generator=g)
            stop = int(torch.randint(0, config.sample_steps, (1,), generator=g))  # run_till_timestep
            scheduler.set_timesteps(config.sample_steps, device=c_f.device)
            x_t = partial_sample(pipe, scheduler, c_f[fi], c_null, stop, guidance=config.sample_guidance, generator=g)
            # Euler-type schedulers keep x in σ-space (x_0 + σε); the UNet takes x / √(σ² + 1), the forward
            # process's sample at t. DDIM and DPM-Solver keep that sample already (scale_model_input is 1 there).
            x_t = scheduler.scale_model_input(x_t, scheduler.timesteps[stop])
            t = scheduler.timesteps[stop].expand(config.batch_size)
            null = c_null.expand(config.batch_size)
            loss = esd_loss(eps, base_eps, x_t, t, None, c_f[fi], None, null, eta=config.negative_guidance)
            check_finite(loss, "ESD loss", it)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.4f}", t=int(t[0]))
        del opt
        deltas = ((n, params[f"{n}.weight"].detach() - m.weight) for n, m in modules.items())
        return adapter_from_deltas(
            deltas, pipe=pipe, method=config.train_method, concept=concept, config=config,
            trainable_parameters=sum(m.weight.numel() for m in modules.values()), start=start,
            max_error=config.lora_max_error, max_rank=config.lora_max_rank, extra={"final_loss": loss_value},
        )
