"""Relearning attack: fine-tune the adapted model on the forget prompts and time the concept's return.

An erasure that only hides a concept comes back after a few fine-tuning steps. The attacker
fine-tunes the UNet (with the adapter in place) with the ordinary denoising loss on images of the
concept drawn by the *base* model for the forget prompts, and the concept rate of the forget
prompts is measured along the way. The curve is compared with the base model's concept rate:
``steps_to_recover`` is the first checkpoint where the rate reaches ``recover_fraction`` of it.

Every parameter the attack trains is copied first and restored afterwards, even on error.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, check_fraction, check_int, check_number, setting
from ..diffusion import add_noise, check_finite
from ..errors import InvalidConfigError
from .classifiers import ConceptClassifier

__all__ = ["RelearnConfig", "relearning_attack", "trainable_parameters", "concept_rate"]


@dataclass
class RelearnConfig(Config):
    """Settings of the relearning attack."""

    steps: int = setting(40, "fine-tuning steps")
    learning_rate: float = setting(1e-4, "Adam learning rate")
    batch_size: int = setting(8, "batch size")
    eval_every: int = setting(10, "steps between concept-rate measurements")
    # glob over UNet parameter names (LoRA factors excluded); "*" = the whole UNet
    params: str = setting("*attn2*", "glob over UNet parameter names the attack trains ('*': all)")
    recover_fraction: float = setting(0.5, "share of the base model's concept rate that counts as recovered")
    seed: int = setting(0, "random seed of the attack")

    def __post_init__(self) -> None:
        check_int(self, "steps", "batch_size", "eval_every")
        check_number(self, "learning_rate")
        check_fraction(self, "recover_fraction")


def trainable_parameters(unet, pattern: str) -> dict[str, torch.nn.Parameter]:
    """UNet parameters whose name matches ``pattern`` (PEFT's ``lora_`` factors never)."""
    found = {n: p for n, p in unet.named_parameters() if fnmatch.fnmatch(n, pattern) and "lora_" not in n}
    if not found:
        raise InvalidConfigError(f"No UNet parameter matches {pattern!r}; try '*attn2*' or '*'.")
    return found


@contextlib.contextmanager
def _restored(params: dict[str, torch.nn.Parameter]):
    saved = {n: p.detach().clone() for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.data = saved[n]
                p.requires_grad_(flags[n])
                p.grad = None


def concept_rate(pipe, classifier, prompts, seeds, idx, call_kwargs) -> float:
    """Share of images of (prompt, seed) pairs in which any label of `idx` is detected."""
    device = pipe._execution_device
    images = pipe(list(prompts), generator=[torch.Generator(device).manual_seed(s) for s in seeds], output_type="pt",
                  **call_kwargs).images
    return float(classifier.detected(np.asarray(classifier.score(images.float().cpu())))[:, idx].any(1).mean())


def relearning_attack(pipe, classifier: ConceptClassifier, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                      eval_prompts: list[str], eval_seeds: list[int], target: str, *, base_rate: float | None = None,
                      config: RelearnConfig | None = None, call_kwargs: dict | None = None) -> dict:
    """Fine-tune ``pipe`` (adapter loaded) on ``latents`` ``(N, C, h, w)`` with ``prompt_embeds``
    ``(N, T, D)`` and return the concept rate of ``eval_prompts`` every ``eval_every`` steps.
    The pipeline's weights are exactly as before when this returns."""
    config = config or RelearnConfig()
    call_kwargs = {k: v for k, v in (call_kwargs or {}).items() if k != "output_type"}
    idx = classifier.concept_indices(target)
    unet, scheduler = pipe.unet, pipe.scheduler
    device = pipe._execution_device
    g = torch.Generator().manual_seed(config.seed)
    params = trainable_parameters(unet, config.params)
    x0 = latents.to(device=device, dtype=torch.float32)
    cond = prompt_embeds.to(device)
    n_train = scheduler.config.num_train_timesteps
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    half = unet.dtype in (torch.float16, torch.bfloat16)
    curve = [{"step": 0, "concept_rate": concept_rate(pipe, classifier, eval_prompts, eval_seeds, idx, call_kwargs)}]
    with _restored(params):
        chosen = {id(p) for p in params.values()}
        others = [p for p in unet.parameters() if id(p) not in chosen]
        other_flags = [p.requires_grad for p in others]
        try:
            for p in others:
                p.requires_grad_(False)
            for p in params.values():
                if half:  # train in fp32 under autocast; the fp16 originals come back afterwards
                    p.data = p.data.float()
                p.requires_grad_(True)
            opt = torch.optim.Adam(list(params.values()), lr=config.learning_rate)
            autocast = torch.autocast(device_type=torch.device(device).type, dtype=unet.dtype) if half \
                else contextlib.nullcontext()
            for step in range(1, config.steps + 1):
                pick = torch.randint(len(x0), (min(config.batch_size, len(x0)),), generator=g)
                t = torch.randint(0, n_train, (len(pick),), generator=g)
                noise = torch.randn((len(pick), *x0.shape[1:]), generator=g).to(device)
                x_t = add_noise(alphas, x0[pick.to(device)], noise, t.to(device))
                with autocast:
                    pred = unet(x_t, t.to(device), encoder_hidden_states=cond[pick.to(device)]).sample
                loss = F.mse_loss(pred.float(), noise)
                check_finite(loss, "relearning loss", step, hint="Lower the relearning learning rate",
                             outcome="the attack was stopped and the weights restored")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step % config.eval_every == 0 or step == config.steps:
                    with torch.no_grad(), autocast:
                        rate = concept_rate(pipe, classifier, eval_prompts, eval_seeds, idx, call_kwargs)
                    curve.append({"step": step, "concept_rate": rate, "loss": loss.detach().item()})
        finally:
            for p, flag in zip(others, other_flags):
                p.requires_grad_(flag)
    recover = None
    if base_rate is not None and base_rate > 0:
        recover = next((c["step"] for c in curve if c["concept_rate"] >= config.recover_fraction * base_rate), None)
    return {"curve": curve, "base_rate": base_rate, "steps_to_recover": recover,
            "final_rate": curve[-1]["concept_rate"],
            "recovered_fraction": (curve[-1]["concept_rate"] / base_rate) if base_rate else None,
            "trained_parameters": int(sum(p.numel() for p in params.values())), "settings": config.to_dict()}
