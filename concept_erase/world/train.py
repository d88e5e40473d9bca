"""Train the shapes world from scratch: ``concept-erase world train --out DIR``.

Four stages, each seeded so the same command gives an equivalent model:

1. render a pool of scenes (procedural, parallel over processes, deterministic by chunk seed);
2. the concept classifier, on renders with blur/noise augmentation (generated images are softer);
3. the VAE (64x64 pixels -> 8x8x4 latents), then the pool is encoded once;
4. UNet + CLIP text encoder jointly, epsilon prediction, min-SNR weighting, EMA weights, 10% caption
   dropout for classifier-free guidance.

The output directory holds ``pipeline/`` (a ``StableDiffusionPipeline`` in fp16 safetensors),
``classifier.safetensors`` and ``training_log.json`` (settings, stage times, final losses).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._io import atomic_path, atomic_write_json, check_output_dir, replace_dir, temp_dir_beside
from ..errors import InvalidConfigError, TrainingDivergedError
from .captions import caption
from .models import WorldArchitecture, WorldClassifier, build_schedulers, build_text_encoder, build_unet, build_vae
from .render import render_batch
from .tokenizer import build_tokenizer

__all__ = ["WorldTrainConfig", "train_world", "train_classifier"]
logger = logging.getLogger(__name__)


@dataclass
class WorldTrainConfig:
    """Settings of ``concept-erase world train``; the defaults are what the shipped model used."""

    seed: int = 0
    pool_size: int = 24_000  # rendered scenes (~80 per colour x shape x background)
    classifier_steps: int = 1_000
    classifier_batch: int = 96
    vae_steps: int = 1_200
    vae_batch: int = 32
    vae_lr: float = 1e-3
    decoder_steps: int = 1_500  # decoder-only refinement: sharper colours, same latent space
    decoder_lr: float = 5e-4
    unet_steps: int = 5_000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    min_snr_gamma: float = 5.0  # Hang et al. 2023, min-SNR loss weighting
    ema_decay: float = 0.9995
    arch: WorldArchitecture = field(default_factory=WorldArchitecture)

    @classmethod
    def smoke(cls) -> "WorldTrainConfig":
        """A few steps of everything on a tiny architecture: keeps the training code alive in tests."""
        return cls(pool_size=64, classifier_steps=3, classifier_batch=16, vae_steps=3, vae_batch=8, decoder_steps=2, unet_steps=3,
                   unet_batch=8, warmup_steps=1, arch=WorldArchitecture.tiny())

    def __post_init__(self) -> None:
        for name in ("pool_size", "classifier_steps", "vae_steps", "unet_steps", "unet_batch", "vae_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"`{name}` must be a positive integer but is {value!r}.")
        if not 0 <= self.caption_dropout < 1:
            raise InvalidConfigError(f"`caption_dropout` must be in [0, 1) but is {self.caption_dropout!r}.")


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list]:
    n, seed, size = args
    return render_batch(n, seed=seed, size=size)


def render_pool(n: int, *, seed: int, size: int, chunk: int = 500, workers: int = 2):
    """Render ``n`` scenes in chunks seeded ``(seed, i)``: identical whatever the number of workers."""
    jobs = [(min(chunk, n - i), seed * 100_003 + i // chunk, size) for i in range(0, n, chunk)]
    images, scenes = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for imgs, scs in tqdm(pool.map(_render_chunk, jobs), total=len(jobs), desc="render scenes", unit="chunk"):
            images.append(imgs)
            scenes.extend(scs)
    return np.concatenate(images), scenes


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Make renders look like decoded samples: slight blur, noise, brightness and contrast jitter."""
    b = x.shape[0]
    if torch.rand((), generator=g) < 0.5:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 0.5 + x * 0.5
    x = x * (1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)) + 0.06 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    x = x + 0.03 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def _check_finite(loss: torch.Tensor, stage: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"{stage}: the loss became {loss.item()} at step {step}; nothing was written. "
            "Lower the learning rate or check the input data."
        )


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int, batch: int, seed: int,
                     progress: bool = True) -> WorldClassifier:
    """Train :class:`WorldClassifier` on ``images`` (N, 3, H, W) uint8 and ``labels`` (N, 3)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = WorldClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, min(100, steps)))
    model.train()
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for step in bar:
        idx = torch.randint(len(images), (batch,), generator=g)
        x = _augment(images[idx].float() / 255, g)
        logits = model(x)
        y = labels[idx]
        loss = sum(F.cross_entropy(logits[k], y[:, i]) for i, k in enumerate(("colour", "shape", "background")))
        _check_finite(loss, "classifier", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()


def refine_decoder(vae, images: torch.Tensor, *, steps: int, batch: int, lr: float, g: torch.Generator,
                   progress: bool = True) -> float:
    """Train the VAE decoder alone on reconstructions (encoder frozen, so the latent space and
    anything trained on it stay valid). The joint stage leaves saturated colours on dark
    backgrounds muddy (green came back gray); this stage fixes most of it."""
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, min(100, steps)))
    bar = tqdm(range(steps), desc="vae decoder", disable=not progress)
    loss = torch.tensor(0.0)
    for step in bar:
        idx = torch.randint(len(images), (batch,), generator=g)
        x = images[idx].float() / 127.5 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        _check_finite(loss, "vae decoder", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.requires_grad_(False)
    return loss.item()


WORLD_MARKERS = ("pipeline/model_index.json", "training_log.json")  # what `train_world` writes


def train_world(out_dir: str | Path, config: WorldTrainConfig | None = None, *, progress: bool = True,
                overwrite: bool = False) -> Path:
    """Train every component and write them to ``out_dir``.

    ``out_dir`` is checked before training: it must be absent, empty, or (with ``overwrite``) a
    world model made by this function; a directory holding anything else is never replaced. The
    model is built in a hidden directory beside it and swapped in at the end; an existing model is
    deleted only once the new one is in place."""
    from diffusers import StableDiffusionPipeline
    from diffusers.training_utils import EMAModel

    config = config or WorldTrainConfig()
    out_dir = check_output_dir(out_dir, overwrite=overwrite, owned=WORLD_MARKERS, replace=True, what="a world model")
    arch = config.arch
    times: dict[str, float] = {}
    log: dict[str, float] = {}
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    t0 = time.perf_counter()
    images_np, scenes = render_pool(config.pool_size, seed=config.seed, size=arch.image_size)
    images = _to_tensor(images_np)
    labels = torch.tensor([s.labels for s in scenes])
    times["render"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    classifier = train_classifier(images, labels, steps=config.classifier_steps, batch=config.classifier_batch,
                                  seed=config.seed, progress=progress)
    times["classifier"] = time.perf_counter() - t0

    # --- VAE ---
    t0 = time.perf_counter()
    vae = build_vae(arch)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, config.vae_steps, config.warmup_steps))
    bar = tqdm(range(config.vae_steps), desc="vae", disable=not progress)
    for step in bar:
        idx = torch.randint(len(images), (config.vae_batch,), generator=g)
        x = images[idx].float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-5 * kl
        _check_finite(loss, "vae", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    log["vae_loss"] = loss.item()
    log["decoder_loss"] = refine_decoder(vae, images, steps=config.decoder_steps, batch=config.vae_batch,
                                         lr=config.decoder_lr, g=g, progress=progress)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means, stds = [], []
        for i in tqdm(range(0, len(images), 256), desc="encode pool", disable=not progress):  # encoder only
            dist = vae.encode(images[i : i + 256].float() / 127.5 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        means, stds = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    times["vae"] = time.perf_counter() - t0

    # --- UNet + text encoder ---
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(arch, len(tokenizer))
    latent_size = means.shape[-1]
    unet = build_unet(arch, latent_size)
    train_sched, sample_sched = build_schedulers()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3)
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, config.unet_steps, config.warmup_steps))
    alphas = train_sched.alphas_cumprod
    unet.train()
    text_encoder.train()
    bar = tqdm(range(config.unet_steps), desc="unet", disable=not progress)
    running = None
    for step in bar:
        idx = torch.randint(len(images), (config.unet_batch,), generator=g)
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scaling  # (B, 4, h, w)
        caps = ["" if rng.random() < config.caption_dropout else caption(scenes[i], rng) for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        cond = text_encoder(ids)[0]  # (B, T, D)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, train_sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
        pred = unet(train_sched.add_noise(x0, noise, t), t, cond).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=config.min_snr_gamma) / snr  # min-SNR-γ for epsilon prediction
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        _check_finite(loss, "unet", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    ema.copy_to(params)
    log["unet_loss"] = running
    times["unet"] = time.perf_counter() - t0

    # --- save (atomically: build in a temporary directory, then swap it in) ---
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sample_sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out_dir = check_output_dir(out_dir, overwrite=overwrite, owned=WORLD_MARKERS, replace=True, what="a world model")
    tmp = temp_dir_beside(out_dir)
    try:
        _save_world(tmp, pipe, unet, vae, classifier, config, times, log)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only if the swap did not happen
    logger.info("world model written to %s (%s)", out_dir, ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return out_dir


def _save_world(tmp: Path, pipe, unet, vae, classifier, config, times, log) -> None:
    from safetensors.torch import save_file

    # UNet and VAE in fp16 keep the package small; diffusers upcasts them to fp32 on load. The text
    # encoder stays fp32 (it is tiny) because transformers would otherwise load it as fp16.
    unet.half()
    vae.half()
    pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
    with atomic_path(tmp / "classifier.safetensors") as p:
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in classifier.state_dict().items()}, str(p),
                  metadata={"format": "pt", "concept_erase": json.dumps({"feature_dim": classifier.feature_dim})})
    atomic_write_json(tmp / "training_log.json", {"config": asdict(config), "seconds": times, "final": log})
