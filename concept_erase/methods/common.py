"""Plumbing the peer methods share: config checks, the frozen base UNet, training a subset of its
weights without touching the pipeline, forget/retain data, and the metadata every adapter carries.

The pipeline's own parameters are never written: a method trains *clones* of the weights it owns
and runs the UNet on them with ``torch.func.functional_call``, so the base model stays available
for the frozen targets (ESD's ε*, the retain term) and is bit-identical afterwards, even on errors.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, fields
from importlib import metadata as importlib_metadata
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidConfigError, TrainingDivergedError
from ..semu.trainer import encode_prompts, generate_latents

__all__ = [
    "MethodConfig", "check_int", "check_positive", "check_choice", "check_fraction", "check_timestep", "check_lora",
    "weight_modules",
    "frozen_unet", "functional_eps", "base_eps_of", "add_noise", "check_finite", "prompt_data", "finetune_weights",
    "versions",
]


class MethodConfig:
    """Mixin for the flat config dataclasses: ``to_dict`` / ``from_dict`` for the adapter metadata."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------- checks (messages name the field)
def check_int(cfg, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise InvalidConfigError(f"`{name}` must be {what} but is {value!r}.")


def check_positive(cfg, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= 0 if allow_zero else value > 0)
        if not ok:
            raise InvalidConfigError(
                f"`{name}` must be a finite {'non-negative' if allow_zero else 'positive'} number but is {value!r}."
            )


def check_fraction(cfg, name: str, *, low_open: bool = True) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        raise InvalidConfigError(f"`{name}` must be in {'(0, 1]' if low_open else '[0, 1]'} but is {value!r}.")


def check_choice(cfg, name: str, choices) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise InvalidConfigError(f"`{name}` must be one of {', '.join(map(repr, choices))} but is {value!r}.")


def check_timestep(cfg) -> None:
    value = cfg.max_timestep
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise InvalidConfigError(f"`max_timestep` must be an integer in [1, 1000] but is {value!r}.")


def check_lora(cfg) -> None:
    """The shared ``lora_max_error`` / ``lora_max_rank`` fields of the dense methods."""
    value = cfg.lora_max_error
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InvalidConfigError(f"`lora_max_error` must be in [0, 1) but is {value!r}.")
    if cfg.lora_max_rank is not None:
        check_int(cfg, "lora_max_rank")


# ---------------------------------------------------------------- the UNet
def weight_modules(unet: nn.Module, keep: Callable[[str], bool]) -> dict[str, nn.Module]:
    """``nn.Linear`` / ``nn.Conv2d`` modules of ``unet`` whose name passes ``keep``, in module order."""
    return {n: m for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and keep(n)}


@contextlib.contextmanager
def frozen_unet(unet: nn.Module):
    """``unet`` in eval mode with no parameter requiring grad; both restored on exit."""
    requires_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    was_training = unet.training
    unet.eval()
    unet.requires_grad_(False)
    try:
        yield unet
    finally:
        for n, p in unet.named_parameters():
            p.requires_grad_(requires_grad[n])
        unet.train(was_training)


def functional_eps(unet: nn.Module, params: dict[str, torch.Tensor]):
    """``eps(x_t, t, c)`` of ``unet`` with ``params`` (``"<module>.weight"`` -> tensor) swapped in."""

    def eps(x_t, t, c):
        return torch.func.functional_call(unet, params, (x_t, t), {"encoder_hidden_states": c}).sample

    return eps


def base_eps_of(unet: nn.Module):
    def eps(x_t, t, c):
        with torch.no_grad():
            return unet(x_t, t, encoder_hidden_states=c).sample

    return eps


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM eq. 4), for any t in [0, T).

    Not ``scheduler.add_noise``: a sampling scheduler (DPM-Solver++) only knows the timesteps of
    its last ``set_timesteps`` and silently noises every other t at the wrong level.
    """
    a = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"The {what} became {loss.item()} at step {step}; the erasure was stopped and nothing was written. "
            "Lower `learning_rate`, or check the prompts."
        )


# ---------------------------------------------------------------- data from prompts alone
def _cycle(n_items: int, n: int) -> list[int]:
    return [i % n_items for i in range(n)]


@contextlib.contextmanager
def _quiet(pipe):
    config = getattr(pipe, "_progress_bar_config", None)
    saved = dict(config) if config is not None else None
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


def prompt_data(pipe, prompts: list[str], n: int, *, seed: int, offset: int, steps: int, guidance: float,
                progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` clean latents ``(n, C, h, w)`` sampled by the pipeline from ``prompts`` (cycled), the
    prompt index of each, and the text embeddings ``(len(prompts), T, D)``.

    Seeds follow the SEMU trainer (``seed·1000003 + offset + i``), so every method that generates
    data with the same ``seed`` trains on the same images.
    """
    idx = _cycle(len(prompts), n)
    with _quiet(pipe):
        x0 = generate_latents(pipe, [prompts[i] for i in idx], [seed * 1_000_003 + offset + i for i in range(n)],
                              steps=steps, guidance=guidance, progress=progress, desc=desc)
        emb = encode_prompts(pipe, prompts)
    return x0, torch.tensor(idx), emb


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("concept-erase", "torch", "diffusers", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------- fine-tuning on generated data
def finetune_weights(pipe, concept, modules: dict[str, nn.Module], config, *, forget_weight: float,
                     retain_weight: float, progress: bool, desc: str) -> tuple[dict[str, torch.Tensor], float | None]:
    """Train clones of ``modules``' weights on the denoising loss of generated data and return them.

    loss = forget_weight · MSE(ε_θ(x_t, c_f), ε) + retain_weight · MSE(ε_θ(x_t^r, c_r), ε), AdamW.
    Gradient ascent uses (−α, 1−α) (seed 001); a task vector's fine-tune uses (1, 0). ``config``
    supplies the data and optimiser fields the two configs share. Must run inside :func:`frozen_unet`.
    """
    unet = pipe.unet
    device = pipe._execution_device
    alphas = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    g = torch.Generator().manual_seed(config.seed)
    common = dict(seed=config.seed, steps=config.sample_steps, guidance=config.sample_guidance, progress=progress)
    x0_f, f_idx, c_f = prompt_data(pipe, concept.forget, config.num_forget_images, offset=0, desc="forget latents",
                                   **common)
    use_retain = retain_weight != 0 and bool(concept.retain) and config.num_retain_images > 0
    if use_retain:
        x0_r, r_idx, c_r = prompt_data(pipe, concept.retain, config.num_retain_images, offset=500_000,
                                       desc="retain latents", **common)

    def batch(x0, idx, emb):
        b = torch.randint(0, len(x0), (min(config.batch_size, len(x0)),), generator=g)
        t = torch.randint(0, config.max_timestep, (len(b),), generator=g).to(device)
        noise = torch.randn(x0[b].shape, generator=g).to(device=device, dtype=x0.dtype)
        return add_noise(alphas, x0[b], noise, t), t, noise, emb[idx[b]]

    params = {f"{n}.weight": m.weight.detach().clone().requires_grad_(True) for n, m in modules.items()}
    eps = functional_eps(unet, params)
    opt = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    mse = torch.nn.functional.mse_loss
    value = None
    for step in bar:
        x_t, t, noise, c = batch(x0_f, f_idx, c_f)
        loss_f = mse(eps(x_t, t, c), noise)
        loss = forget_weight * loss_f
        if use_retain:
            xr_t, tr, noise_r, cr = batch(x0_r, r_idx, c_r)
            loss = loss + retain_weight * mse(eps(xr_t, tr, cr), noise_r)
        check_finite(loss, "loss", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        bar.set_postfix(loss=f"{value:.4f}", forget=f"{loss_f.item():.4f}")
    return {k: v.detach() for k, v in params.items()}, value
