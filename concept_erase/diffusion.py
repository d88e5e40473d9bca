"""Diffusion plumbing every method, the evaluation and the demo share.

- prompts -> what the UNet is conditioned on, as the pipeline itself computes it, for SD 1.x/2.x (one
  text encoder) and SDXL (two, plus the pooled embedding and the size/crop ``time_ids``)
  (:class:`Conditioning`, :func:`encode_conditioning`, :func:`null_conditioning`; :func:`encode_prompts`
  for the hidden states alone), with a warning (counts and an example) for prompts the text encoder
  would cut or cannot read (:func:`check_prompts`);
- images and clean latents drawn by the pipeline itself, seeded per image so that a result depends
  only on its prompt and seed, never on the batch (:func:`generate_images`, :func:`generate_latents`,
  :func:`prompt_data`, :func:`prompt_latents`); images -> latents through the VAE (:func:`encode_images`);
- the forward process q(x_t | x_0) from ᾱ_t (:func:`add_noise`) and the target the UNet is trained to
  predict there — ε, v or x_0, as the scheduler's ``prediction_type`` says (:func:`training_target`);
- the UNet frozen and restored (:func:`frozen_unet`), called with a :class:`Conditioning`
  (:func:`unet_prediction`), run with swapped-in weights (:func:`functional_eps`), losses checked for
  NaN/inf (:func:`check_finite`), pipeline progress bars silenced and restored (:func:`quiet_progress`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InvalidPromptError, TrainingDivergedError, UnsupportedArchitectureError

__all__ = [
    "Conditioning", "encode_conditioning", "null_conditioning", "encode_prompts", "check_prompts",
    "generate_images", "generate_latents", "prompt_data", "prompt_latents", "data_seeds", "cycle_indices",
    "encode_images", "add_noise", "training_target", "PREDICTION_TYPES", "frozen_unet", "unet_prediction",
    "functional_eps", "base_eps_of", "check_finite", "quiet_progress", "dtype_kwargs", "quiet_hf_logging",
]
logger = logging.getLogger(__name__)
_WARNED: set[tuple[int, str]] = set()  # (tokenizer, prompt) pairs already reported in this process


# ---------------------------------------------------------------- prompts and generated data
def check_prompts(pipe, prompts: Sequence[str], *, what: str = "prompts", warn: bool = True) -> dict[str, list[str]]:
    """The prompts the pipeline's text encoder will not see whole: ``"truncated"`` (longer than its
    context; the end is cut) and ``"unknown"`` (made only of words that are no token of its
    vocabulary, so they are spelled out in pieces the model was not trained on — in practice
    gibberish, or words outside the shapes world's vocabulary). With ``warn``, logs one warning
    with the counts and an example, once per prompt per process."""
    tokenizer = getattr(pipe, "tokenizer", None)
    found: dict[str, list[str]] = {"truncated": [], "unknown": []}
    if tokenizer is None or not prompts:
        return found
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Token indices sequence length is longer than ...": we report it ourselves
    try:
        ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
        words = sorted({w for p in prompts for w in re.findall(r"\w+", p.lower())})
        whole = {w for w, t in zip(words, tokenizer(words, add_special_tokens=False).input_ids if words else [])
                 if len(t) == 1}
    finally:
        hf_logging.set_verbosity(level)
    limit = tokenizer.model_max_length - 2  # the start and end tokens take two places
    for prompt, tokens in zip(prompts, ids):
        if len(tokens) > limit:
            found["truncated"].append(prompt)
        prompt_words = re.findall(r"\w+", prompt.lower())
        if prompt_words and not any(w in whole for w in prompt_words):
            found["unknown"].append(prompt)
    if warn:
        key = id(tokenizer)
        new = {k: [p for p in v if (key, p) not in _WARNED] for k, v in found.items()}
        parts = []
        if new["truncated"]:
            parts.append(f"{len(new['truncated'])} longer than the text encoder's {limit} tokens are cut at the end "
                         f"(e.g. {new['truncated'][0][:80]!r})")
        if new["unknown"]:
            parts.append(f"{len(new['unknown'])} consist only of words the tokenizer has no token for and are spelled "
                         f"out in pieces (e.g. {new['unknown'][0][:80]!r})")
        if parts:
            logger.warning("Of %d %s, %s.", len(prompts), what, "; ".join(parts))
            _WARNED.update((key, p) for v in new.values() for p in v)
    return found


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on, one row per prompt.

    ``hidden_states`` ``(N, T, D)`` go to cross-attention (``encoder_hidden_states``). SDXL's UNet
    (``addition_embed_type="text_time"``) also takes ``added_cond_kwargs``: ``text_embeds`` ``(N, P)``,
    the pooled, projected output of the second text encoder, and ``time_ids`` ``(N, 6)``, the
    micro-conditioning (original size, crop top-left, target size); both are ``None`` for SD 1.x/2.x.
    Indexing and :meth:`expand` act on the prompt (batch) dimension of every part together.

    >>> cond = encode_conditioning(pipe, ["a red circle", "a red square"])  # doctest: +SKIP
    >>> pipe.unet(x_t, t, **cond[[1, 0, 1]].unet_kwargs()).sample          # doctest: +SKIP
    """

    hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def _map(self, fn) -> "Conditioning":
        return Conditioning(*(None if x is None else fn(x) for x in (self.hidden_states, self.text_embeds,
                                                                      self.time_ids)))

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def __getitem__(self, index) -> "Conditioning":
        return self._map(lambda x: x[index])

    def expand(self, n: int) -> "Conditioning":
        """A one-prompt conditioning repeated ``n`` times (a view, as ``Tensor.expand``)."""
        if len(self) != 1:
            raise ValueError(f"expand() repeats a one-prompt Conditioning, but this one holds {len(self)}.")
        return self._map(lambda x: x.expand(n, *x.shape[1:]))

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        """The conditionings of ``parts`` one after the other (``torch.cat`` on the batch dimension)."""
        first = parts[0]
        return Conditioning(*(None if getattr(first, f) is None else torch.cat([getattr(p, f) for p in parts])
                              for f in ("hidden_states", "text_embeds", "time_ids")))

    @property
    def device(self) -> torch.device:
        return self.hidden_states.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden_states.dtype

    def unet_kwargs(self) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` for this conditioning."""
        kwargs = {"encoder_hidden_states": self.hidden_states}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return kwargs


def _conditioning_kind(pipe) -> str:
    """``"text"`` (SD 1.x/2.x: cross-attention only) or ``"text_time"`` (SDXL); anything else raises."""
    kind = pipe.unet.config.get("addition_embed_type")
    if kind is None:
        return "text"
    if kind == "text_time" and hasattr(pipe, "_get_add_time_ids") and hasattr(pipe, "text_encoder_2"):
        if pipe.config.get("requires_aesthetics_score", False):
            raise UnsupportedArchitectureError(
                f"{type(pipe).__name__} conditions on an aesthetic score (the SDXL refiner); concept-erase trains "
                "on base text-to-image pipelines: load the SDXL base model with StableDiffusionXLPipeline.")
        return "text_time"
    raise UnsupportedArchitectureError(
        f"The UNet of {type(pipe).__name__} has addition_embed_type={kind!r}; concept-erase knows how to condition "
        "SD 1.x/2.x UNets (None) and SDXL UNets ('text_time', in a StableDiffusionXLPipeline).")


def _encode(pipe, prompts: list[str], *, guidance: bool, grad: bool = False
            ) -> tuple[Conditioning, Conditioning | None]:
    """The pipeline's own ``encode_prompt``: the prompts' conditioning and, with ``guidance``, the
    unconditional one the pipeline pairs with it for classifier-free guidance. ``grad``: keep the
    autograd graph (robust SEMU's attack differentiates through the text encoders)."""
    kind = _conditioning_kind(pipe)
    device = pipe._execution_device
    with torch.enable_grad() if grad else torch.no_grad():
        if kind == "text":
            emb, neg = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=guidance)
            return Conditioning(emb), (Conditioning(neg) if guidance else None)
        # SDXL: both text encoders' penultimate hidden states concatenated (N, 77, 768 + 1280), the second
        # encoder's pooled projection (N, 1280), and the time ids the pipeline's __call__ uses at its
        # default size, no crop (original = target = default_sample_size · vae_scale_factor).
        emb, neg, pooled, neg_pooled = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                          do_classifier_free_guidance=guidance)
        size = pipe.default_sample_size * pipe.vae_scale_factor
        proj = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                else int(pooled.shape[-1]))
        time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=emb.dtype,
                                          text_encoder_projection_dim=proj).to(device)  # (1, 6)
        cond = Conditioning(emb, pooled, time_ids.expand(len(prompts), -1))
        null = Conditioning(neg, neg_pooled, time_ids.expand(len(prompts), -1)) if guidance else None
        return cond, null


def encode_conditioning(pipe, prompts: Sequence[str], *, grad: bool = False) -> Conditioning:
    """The UNet's conditioning for ``prompts`` as the pipeline computes it (see :func:`check_prompts`);
    with ``grad`` the autograd graph through the text encoder(s) is kept.

    >>> encode_conditioning(pipe, ["a red circle"]).hidden_states.shape  # doctest: +SKIP
    torch.Size([1, 77, 768])
    """
    check_prompts(pipe, prompts)
    return _encode(pipe, list(prompts), guidance=False, grad=grad)[0]


def null_conditioning(pipe) -> Conditioning:
    """The unconditional branch of classifier-free guidance, one row, as the pipeline builds it: the
    empty prompt's encoding (SD 1.x/2.x), or zeros when an SDXL pipeline has
    ``force_zeros_for_empty_prompt`` (the SDXL base model does)."""
    return _encode(pipe, [""], guidance=True)[1]


def encode_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Text embeddings ``(N, T, D)`` as the pipeline would compute them (see :func:`check_prompts`):
    the hidden states of :func:`encode_conditioning`."""
    return encode_conditioning(pipe, prompts).hidden_states


def _generators(device, seeds: Sequence[int]) -> list[torch.Generator]:
    gen_device = "cpu" if torch.device(device).type == "mps" else device
    return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]


def generate_images(pipe, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int = 32,
                    progress: bool = False, desc: str = "generate", **call_kwargs) -> np.ndarray:
    """One image per ``(prompt, seed)`` pair; returns ``(N, H, W, 3)`` floats in [0, 1].

    Each image has its own ``torch.Generator``, so an image depends only on its prompt and seed,
    not on the batch it was drawn in (up to float rounding in batched matmuls): the base model and
    an adapted model given the same pairs start from identical noise.

    >>> images = generate_images(pipe, ["a red circle"] * 2, [0, 1], num_inference_steps=20)  # doctest: +SKIP
    """
    if len(prompts) != len(seeds):
        raise InvalidPromptError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    if any(not isinstance(p, str) for p in prompts):
        raise InvalidPromptError("Every prompt must be a string.")
    device = getattr(pipe, "_execution_device", None) or pipe.device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = list(prompts[i : i + batch_size])
        result = pipe(chunk, generator=_generators(device, seeds[i : i + batch_size]), output_type="np", **call_kwargs)
        out.append(result.images)
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.float32)
    return np.concatenate(out)


def generate_latents(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float,
                     batch_size: int = 32, progress: bool = False, desc: str = "sample") -> torch.Tensor:
    """Clean latents x₀ ``(N, C, h, w)`` in the UNet's latent space, sampled by the pipeline itself."""
    device = pipe._execution_device
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        res = pipe(list(prompts[i : i + batch_size]), generator=_generators(device, seeds[i : i + batch_size]),
                   num_inference_steps=steps, guidance_scale=guidance, output_type="latent")
        out.append(res.images)
    return torch.cat(out)


def cycle_indices(n_items: int, n: int) -> list[int]:
    """``n`` indices cycling over ``n_items`` items: 0, 1, ..., n_items − 1, 0, 1, ..."""
    return [i % n_items for i in range(n)]


def data_seeds(seed: int, n: int, *, offset: int = 0) -> list[int]:
    """The seeds of the ``n`` images a method generates from its prompts: ``seed·1000003 + offset + i``.

    Every method uses this rule (forget data at offset 0, retain data at 500000), so methods run
    with the same ``seed`` train on the same images, and membership inference can regenerate them.
    """
    return [seed * 1_000_003 + offset + i for i in range(n)]


def prompt_data(pipe, prompts: Sequence[str], n: int, *, seed: int, offset: int, steps: int, guidance: float,
                progress: bool = False, desc: str = "sample") -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """``n`` clean latents ``(n, C, h, w)`` sampled by the pipeline from ``prompts`` (cycled), the
    prompt index of each, and the :class:`Conditioning` of ``prompts`` (``len(prompts)`` rows)."""
    idx = cycle_indices(len(prompts), n)
    with quiet_progress(pipe):
        x0 = generate_latents(pipe, [prompts[i] for i in idx], data_seeds(seed, n, offset=offset), steps=steps,
                              guidance=guidance, progress=progress, desc=desc)
        cond = encode_conditioning(pipe, prompts)
    return x0, torch.tensor(idx), cond


def prompt_latents(pipe, prompts: Sequence[str], n: int, *, seed: int, offset: int, steps: int, guidance: float,
                   progress: bool = False, desc: str = "sample") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`prompt_data` with the text embeddings ``(len(prompts), T, D)`` alone in place of the conditioning."""
    x0, idx, cond = prompt_data(pipe, prompts, n, seed=seed, offset=offset, steps=steps, guidance=guidance,
                                progress=progress, desc=desc)
    return x0, idx, cond.hidden_states


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] -> clean latents ``(B, C, h, w)`` in the UNet's space."""
    vae = pipe.vae
    device = pipe._execution_device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device=device, dtype=vae.dtype) * 2 - 1
        latents = vae.encode(x).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out.append(((latents - shift) * vae.config.scaling_factor).float())
    return torch.cat(out) if out else torch.zeros(0)


# ---------------------------------------------------------------- the forward process
def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al., "Denoising Diffusion Probabilistic Models",
    arXiv 2006.11239, eq. 4), for any t in [0, T).

    Not ``scheduler.add_noise``: a sampling scheduler (DPM-Solver++) only knows the timesteps of
    its last ``set_timesteps`` and silently noises every other t at the wrong level.
    """
    a = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output at x_t = :func:`add_noise` (``latents``, ``noise``, ``timesteps``):
    the noise ε (``prediction_type="epsilon"``: SD 1.x, SD 2.x-base, SDXL), the velocity
    v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (``"v_prediction"``: SD 2.x at 768 px; Salimans and Ho, "Progressive
    Distillation for Fast Sampling of Diffusion Models", arXiv 2202.00512, §4) or x_0 itself (``"sample"``).
    Every loss that compares the UNet's output with something other than another UNet output uses it.

    v comes from ``get_velocity`` of a ``DDPMScheduler`` with the pipeline scheduler's config (its noise
    schedule), as diffusers' training scripts compute it: a sampling scheduler's own ``get_velocity``
    (Euler) only knows the timesteps of its last ``set_timesteps``.

    >>> training_target(pipe.scheduler, x0, noise, t)  # doctest: +SKIP
    """
    kind = scheduler.config.get("prediction_type")
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if kind == "v_prediction":
        from diffusers import DDIMScheduler, DDPMScheduler

        schedule = scheduler if isinstance(scheduler, (DDPMScheduler, DDIMScheduler)) else \
            DDPMScheduler.from_config(scheduler.config)
        return schedule.get_velocity(latents, noise, timesteps.to(latents.device))
    raise UnsupportedArchitectureError(
        f"The pipeline's scheduler {type(scheduler).__name__} has prediction_type={kind!r}; concept-erase trains "
        f"UNets that predict one of {', '.join(PREDICTION_TYPES)} (flow-matching models are not supported). If the "
        "model predicts one of these, set it: pipe.scheduler = type(pipe.scheduler).from_config("
        "pipe.scheduler.config, prediction_type=...).")


# ---------------------------------------------------------------- the UNet
@contextlib.contextmanager
def frozen_unet(unet: nn.Module):
    """``unet`` (or any module: the attacks freeze the text encoder too) in eval mode with no parameter
    requiring grad; modes and flags restored on exit, ``.grad`` cleared."""
    requires_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    was_training = unet.training
    unet.eval()
    unet.requires_grad_(False)
    try:
        yield unet
    finally:
        for n, p in unet.named_parameters():
            if n in requires_grad:
                p.requires_grad_(requires_grad[n])
            p.grad = None
        unet.train(was_training)


def _unet_kwargs(c: Conditioning | torch.Tensor) -> dict:
    return c.unet_kwargs() if isinstance(c, Conditioning) else {"encoder_hidden_states": c}


def unet_prediction(unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, c: Conditioning | torch.Tensor
                    ) -> torch.Tensor:
    """The UNet's output at ``(x_t, t)`` conditioned on ``c`` (a :class:`Conditioning`, or bare hidden
    states ``(B, T, D)`` for a UNet without added conditions)."""
    return unet(x_t, t, **_unet_kwargs(c)).sample


def functional_eps(unet: nn.Module, params: dict[str, torch.Tensor]):
    """``eps(x_t, t, c)`` of ``unet`` with ``params`` (``"<module>.weight"`` -> tensor) swapped in; ``c`` as
    in :func:`unet_prediction`. (Named for ε; it is whatever the UNet predicts, see :func:`training_target`.)"""

    def eps(x_t, t, c):
        return torch.func.functional_call(unet, params, (x_t, t), _unet_kwargs(c)).sample

    return eps


def base_eps_of(unet: nn.Module):
    """``eps(x_t, t, c)`` of ``unet`` as it is, without gradients (the frozen base model's targets)."""

    def eps(x_t, t, c):
        with torch.no_grad():
            return unet_prediction(unet, x_t, t, c)

    return eps


def check_finite(loss: torch.Tensor, what: str, step: int, *, hint: str = "Lower `learning_rate`",
                 outcome: str = "the erasure was stopped and nothing was written") -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"The {what} became {loss.item()} at step {step}; {outcome}. {hint}, or check the prompts."
        )


@contextlib.contextmanager
def quiet_progress(pipe):
    """The pipeline's own progress bars off inside the block; its previous settings restored after."""
    config = getattr(pipe, "_progress_bar_config", None)
    saved = dict(config) if config is not None else None
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


# ---------------------------------------------------------------- loading diffusers models quietly
def dtype_kwargs(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype argument for the installed diffusers: ``dtype=`` where diffusers
    deprecates ``torch_dtype=`` in its favour (it then warns on every ``torch_dtype=``), else ``torch_dtype=``."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


@contextlib.contextmanager
def quiet_hf_logging():
    """diffusers' and transformers' progress bars ("Loading pipeline components...") and their log
    messages below errors off inside the block; their previous settings come back after, so a
    Python session that uses concept-erase as a library keeps its own. Nothing is silenced when
    the ``concept_erase`` logger is at DEBUG (the command line's ``--verbose``)."""
    if logging.getLogger("concept_erase").isEnabledFor(logging.DEBUG):
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging,
                                                                                  transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            lib.enable_progress_bar() if bars else lib.disable_progress_bar()
