"""Scale benchmark: SEMU vs ESD-x vs UCE on the Stable Diffusion 1.5 UNet.

    python benchmarks/bench_scale.py [--quick] [--out scale.json]
    python benchmarks/bench_scale.py --device cuda --dtype bf16 --latent 64 --steps 5

The UNet is SD 1.5's architecture (860 M parameters) built from its config with random weights;
the text encoder is a random one-layer CLIP model that turns prompts into 77 × 768 embeddings, so
nothing is downloaded. The real trainers run unmodified (``erase_with``) inside a
``StableDiffusionPipeline``; only timers and memory probes are wrapped around their phases:

- SEMU: data (sampling forget/retain latents), forget-gradient accumulation, SVD, R training;
- ESD: partial sampling of x_t (per sampler step) and the training step;
- UCE: the closed-form solves.

The runs share one subprocess and one pipeline (the methods leave it unchanged); ``--isolate``
gives each run its own process. Peak memory on Linux: the peak RSS of each phase (``VmHWM``, reset
through ``/proc/self/clear_refs`` at every phase boundary) above the RSS when the phase began, and
per run the RSS before it plus its largest phase peak; elsewhere ``ru_maxrss``; on CUDA,
``torch.cuda.max_memory_allocated`` with the same resets. ``MALLOC_MMAP_THRESHOLD_`` is fixed so
freed tensors go back to the OS and RSS follows live memory.

It also checks a claim about SEMU's memory: that gradient accumulation and the SVD keep at most
one layer's dense gradient beyond what autograd holds. A control run does one forward/backward
of the same loss (what autograd holds: the graph and one gradient per target layer); the
accumulation phase's extra peak is compared with the size of one layer's gradient and of all of them.

Settings (CPU defaults, so a run takes minutes): batch 1 for every method, 16×16 latents,
``--steps`` training steps, ``--sample-steps`` sampler steps for data and for ESD's x_t. Costs are
reported per unit (per step, per sampler step, per layer) so they scale to the default settings,
which the ``projected`` column does, assuming cost linear in batch size (true on a CPU, pessimistic
on a GPU): SEMU 32 forget + 32 retain images × 20 sampler steps, 32 gradient images, 150 steps of
batch 16; ESD 200 iterations of batch 1, each on average 24.5 of 50 sampler steps deep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SD15_UNET_CONFIG = {  # runwayml/stable-diffusion-v1-5, unet/config.json (architecture fields)
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "sample_size": 64,
}
# A small UNet of the same layout, for a smoke run of this script (--unet tiny).
TINY_UNET_CONFIG = {**SD15_UNET_CONFIG, "block_out_channels": (32, 64, 64, 64), "cross_attention_dim": 768}
SDXL_UNET_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (architecture fields)
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "sample_size": 128,
}
TINY_SDXL_UNET_CONFIG = {**SDXL_UNET_CONFIG, "block_out_channels": (32, 64, 64), "transformer_layers_per_block": (1, 1, 2),
                         "attention_head_dim": (2, 4, 4)}
UNET_CONFIGS = {"sd15": SD15_UNET_CONFIG, "tiny": TINY_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG,
                "tiny-sdxl": TINY_SDXL_UNET_CONFIG}

# SEMU layer sets for the growth-with-layers runs (glob patterns over module names).
LAYER_SETS = {
    "attn2 v": ("*attn2.to_v",),
    "attn2 k,v": ("*attn2.to_k", "*attn2.to_v"),
    "attn2 q,k,v,o": ("*attn2.to_q", "*attn2.to_k", "*attn2.to_v", "*attn2.to_out.0"),
    "attn1+attn2": ("*attn1.to_*", "*attn2.to_*"),
}
# Default settings the "projected" column scales the measured unit costs to (SemuConfig; esd_sd.py).
OFFICIAL = {"semu_images": 32, "semu_sample_steps": 20, "semu_steps": 150, "semu_batch": 16,
            "esd_iterations": 200, "esd_mean_depth": 24.5}


# ---------------------------------------------------------------- memory probes
class Meter:
    """Peak memory of a phase, in bytes above the level when :meth:`start` was called."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.linux = Path("/proc/self/clear_refs").exists()

    @staticmethod
    def _status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    def current(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return self._status("VmRSS:") if self.linux else 0

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.linux:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM:") if self.linux else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Phases:
    """Wall time and peak memory of consecutive phases: ``mark(name)`` closes the current one and
    opens the next; a phase's peak is measured above the memory in use when it began."""

    def __init__(self, meter: Meter, device: str):
        self.meter, self.device = meter, device
        self.times, self.peaks = {}, {}
        self.name = None

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def _open(self, name: str | None) -> None:
        self.base = self.meter.current()
        self.meter.reset()
        self.peak = 0
        self.name, self.t0 = name, time.perf_counter()

    def fold(self) -> None:
        """Fold the probe's peak so far into the phase's and reset it (for nested measurements)."""
        self.peak = max(self.peak, self.meter.peak() - self.base)
        self.meter.reset()

    def start(self, name: str) -> None:
        self._sync()
        self._open(name)

    def mark(self, name: str | None) -> None:
        self._sync()
        if self.name is not None:
            self.fold()
            self.times[self.name] = self.times.get(self.name, 0.0) + time.perf_counter() - self.t0
            self.peaks[self.name] = max(self.peaks.get(self.name, 0), self.peak)
        self._open(name)


# ---------------------------------------------------------------- the pipeline
def build_pipeline(unet_kind: str, latent: int, device: str, dtype):
    """A StableDiffusionPipeline around the SD 1.5 UNet, or a StableDiffusionXLPipeline around SDXL's
    (random weights, ``latent``² latents)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from concept_erase.world.tokenizer import build_tokenizer

    config = {**UNET_CONFIGS[unet_kind], "sample_size": latent}
    # Build on the meta device and fill in random weights: 860 M parameters initialise in seconds.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim >= 2:  # N(0, 1/fan_in): activations keep their scale through the random network
                p.normal_(0, p[0].numel() ** -0.5, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    unet = unet.to(dtype)
    tok = build_tokenizer()
    tok.model_max_length = 77  # SD's 77 tokens
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=768,
                                        num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1)).to(device, dtype)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), norm_num_groups=8, latent_channels=4).to(device, dtype)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if "sdxl" in unet_kind:  # SDXL: a second (projected) text encoder of width 1280; 768 + 1280 = 2048
        from diffusers import StableDiffusionXLPipeline
        from transformers import CLIPTextModelWithProjection

        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=1280, intermediate_size=1280, num_hidden_layers=1, num_attention_heads=20,
            max_position_embeddings=77, projection_dim=1280, bos_token_id=0, eos_token_id=1,
            pad_token_id=1)).to(device, dtype)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                         tokenizer_2=tok, unet=unet, scheduler=sched)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_concept(n_prompts: int):
    """``n_prompts`` distinct forget prompts (and anchors, retain prompts) in the world vocabulary."""
    from concept_erase import Concept
    from concept_erase.world.vocab import SHAPES

    templates = ["a red {}", "the red {}", "a {} that is red", "red {}, dark background",
                 "a dark background with a red {}", "a red {} on a light background", "red {}",
                 "a light background with a red {}"]
    forget = [t.format(s) for t in templates for s in SHAPES][:n_prompts]
    if len(forget) < n_prompts:
        raise SystemExit(f"at most {len(templates) * len(SHAPES)} forget prompts")
    return Concept(name="red", forget=forget, anchor=[p.replace("red", "gray") for p in forget],
                   retain=[f"a {c} {s}" for c in ("blue", "green") for s in SHAPES][:8])


# ---------------------------------------------------------------- one run (in a subprocess)
def _target_bytes(pipe, patterns) -> tuple[int, int, int]:
    from concept_erase.methods.common import select_modules as find_targets

    sizes = [m.weight.numel() * m.weight.element_size() for m in find_targets(pipe.unet, patterns).values()]
    return len(sizes), sum(sizes), max(sizes)


def _control_backward(pipe, patterns, concept, phases: Phases) -> None:
    """One forward/backward of SEMU's gradient loss at batch 1: what autograd itself holds."""
    import torch

    from concept_erase.objectives import gradient_loss
    from concept_erase.methods.common import select_modules as find_targets
    from concept_erase.diffusion import encode_conditioning, null_conditioning, unet_prediction

    unet = pipe.unet
    weights = [m.weight for m in find_targets(unet, patterns).values()]
    unet.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    c, null = encode_conditioning(pipe, concept.forget[:1]), null_conditioning(pipe)  # SDXL: + pooled, time ids
    size = unet.config.sample_size
    x = torch.randn(1, 4, size, size, device=c.device, dtype=c.dtype)
    t = torch.tensor([500], device=c.device)

    def eps(x_t, tt, cc):
        return unet_prediction(unet, x_t, tt, cc)

    phases.start("control: forward+backward")
    loss = gradient_loss("guided_ascent")(eps, eps, x, t, torch.randn_like(x), c, c, null, guidance=7.5)
    grads = torch.autograd.grad(loss, weights)
    phases.mark(None)
    del grads, loss
    unet.requires_grad_(True)


_PIPES: dict = {}


def run_one(spec: dict) -> dict:
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["dtype"]]
    device = spec["device"]
    key = (spec["unet"], spec["latent"], device, spec["dtype"])
    t0 = time.perf_counter()
    if key not in _PIPES:  # the methods leave the pipeline unchanged (tests/test_methods.py), so runs share it
        _PIPES.clear()
        gc.collect()
        _PIPES[key] = build_pipeline(spec["unet"], spec["latent"], device, dtype)
    pipe = _PIPES[key]
    build_s = time.perf_counter() - t0
    gc.collect()
    concept = make_concept(spec["prompts"])
    meter = Meter(device)
    phases = Phases(meter, device)
    result = {**spec, "build_s": build_s, "unet_parameters": sum(p.numel() for p in pipe.unet.parameters())}
    rss_before = meter.current()
    method = spec["method"]

    from concept_erase.methods import erase_with

    if method == "semu":
        import concept_erase.methods.semu.trainer as trainer

        patterns = LAYER_SETS[spec["layers"]]
        result["layers_n"], result["grad_bytes_all"], result["grad_bytes_max_layer"] = _target_bytes(pipe, patterns)
        if spec.get("control"):
            _control_backward(pipe, patterns, concept, phases)
        gen, svd, inject = trainer.prompt_data, trainer.gradient_subspace, trainer.inject_
        calls = {"gen": 0, "svd": 0}
        n_gen = 2  # forget and retain latents

        def gen_(*a, **k):
            out = gen(*a, **k)
            calls["gen"] += 1
            if calls["gen"] == n_gen:
                phases.mark("gradient")  # the rest of the data phase (text embeddings) is negligible
            return out

        svd_peaks = []

        options = spec.get("semu_options", {})
        streamed = options.get("stream_gradient", False)

        def svd_(*a, **k):  # one layer: its transient is measured above the memory in use just before it
            if calls["svd"] == 0 and not streamed:  # streamed: the SVDs run between the groups' passes,
                phases.mark("svd")                   # so they stay inside the "gradient" phase

            calls["svd"] += 1
            phases.fold()
            before = meter.current()
            out = svd(*a, **k)
            svd_peaks.append(meter.peak() - before)
            return out

        def inject_(*a, **k):
            phases.mark("train")  # with a target pool, building it is part of "train"
            return inject(*a, **k)

        pools = trainer._target_pools

        def pools_(*a, **k):  # the pool is built once before the steps; its cost is amortised, not per step
            phases.mark("pool")
            out = pools(*a, **k)
            phases.mark("train")
            return out

        trainer._target_pools = pools_
        trainer.prompt_data, trainer.gradient_subspace, trainer.inject_ = gen_, svd_, inject_
        n_images = spec["prompts"] * spec["images_per_prompt"]
        phases.start("data")
        try:
            adapter = erase_with("semu", pipe, concept, progress=False, target_modules=patterns, steps=spec["steps"],
                                 num_forget_images=n_images, num_retain_images=n_images,
                                 sample_steps=spec["sample_steps"], batch_size=1, gradient_batches=n_images,
                                 **{"target_pool": 0, **options})  # the control: a base forward every step
        finally:
            trainer.prompt_data, trainer.gradient_subspace, trainer.inject_ = gen, svd, inject
            trainer._target_pools = pools
        phases.mark(None)
        result["gradient_batches"] = n_images
        result["s_per_gradient_batch"] = phases.times["gradient"] / n_images
        result["s_per_sample_step"] = phases.times["data"] / (2 * n_images * spec["sample_steps"])
        result["s_per_svd_layer"] = phases.times.get("svd", 0.0) / result["layers_n"]
        result["s_per_step"] = phases.times["train"] / spec["steps"]
        result["svd_transient_max"] = max(svd_peaks)
        o = OFFICIAL
        result["projected_s"] = (2 * o["semu_images"] * o["semu_sample_steps"] * result["s_per_sample_step"]
                                 + o["semu_images"] * result["s_per_gradient_batch"]
                                 + phases.times.get("svd", 0.0) + o["semu_steps"] * o["semu_batch"] * result["s_per_step"])
    elif method.startswith("esd"):
        import concept_erase.methods.esd as esd

        sample = esd.partial_sample
        depth = {"steps": 0, "s": 0.0}

        def sample_(pipe_, scheduler, c, c_null, stop, **k):
            t = time.perf_counter()
            out = sample(pipe_, scheduler, c, c_null, stop, **k)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            depth["steps"] += stop
            depth["s"] += time.perf_counter() - t
            return out

        esd.partial_sample = sample_
        phases.start("train")
        try:
            adapter = erase_with("esd-x", pipe, concept, progress=False, train_method=method,
                                 iterations=spec["steps"], sample_steps=spec["sample_steps"], batch_size=1)
        finally:
            esd.partial_sample = sample
        phases.mark(None)
        result["layers_n"] = len(adapter.modules)
        result["s_per_sample_step"] = depth["s"] / depth["steps"] if depth["steps"] else None
        # training step time, the LoRA export (SVD of every delta) amortised over the steps
        result["s_per_step"] = (phases.times["train"] - depth["s"]) / spec["steps"]
        if result["s_per_sample_step"] is not None:
            result["projected_s"] = OFFICIAL["esd_iterations"] * (
                result["s_per_step"] + OFFICIAL["esd_mean_depth"] * result["s_per_sample_step"])
    elif method == "uce":
        phases.start("solve")
        adapter = erase_with("uce", pipe, concept, progress=False, with_to_k=spec["layers"] != "attn2 v")
        phases.mark(None)
        result["layers_n"] = len(adapter.modules)
        result["s_per_step"] = None
        result["projected_s"] = phases.times["solve"]
    else:
        raise SystemExit(f"unknown method {method!r}")

    meta = adapter.metadata
    result.update(
        trainable_parameters=meta["trainable_parameters"], trainable_fraction=meta["trainable_fraction"],
        seconds=meta["seconds"], compression_error=meta["compression_error"],
        phase_s=phases.times, phase_peak_bytes=phases.peaks, rss_before_bytes=rss_before,
        # peak RSS of this run: the memory in use before it plus its largest phase peak
        peak_rss_bytes=rss_before + max((v for k, v in phases.peaks.items() if not k.startswith("control")), default=0),
        process_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        cuda_max_bytes=torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        stored_parameters=adapter.num_parameters,
    )
    return result


# ---------------------------------------------------------------- the plan and the report
def plan(args) -> list[dict]:
    base = dict(unet=args.unet, latent=args.latent, device=args.device, dtype=args.dtype, threads=args.threads,
                steps=args.steps, sample_steps=args.sample_steps, images_per_prompt=1, prompts=args.prompts)
    runs = [
        # the three methods at their default layer sets
        dict(base, group="methods", method="semu", layers="attn2 k,v", control=True),
        dict(base, group="methods", method="esd-x", layers="attn2 all"),
        dict(base, group="methods", method="uce", layers="attn2 k,v"),
        # SEMU's cost options: the gradient accumulated one layer group at a time (memory bound), and the
        # base model's targets precomputed for a pool of noised examples (no base forward per step)
        dict(base, group="options", method="semu", layers="attn2 k,v", control=True,
             semu_options={"stream_gradient": True}),
        dict(base, group="options", method="semu", layers="attn2 k,v", semu_options={"target_pool": 8}),
    ]
    if not args.quick:
        runs += [
            # cost vs number of target layers
            dict(base, group="layers", method="semu", layers="attn2 v"),
            dict(base, group="layers", method="semu", layers="attn2 q,k,v,o"),
            dict(base, group="layers", method="semu", layers="attn1+attn2"),
            dict(base, group="layers", method="esd-x-strict", layers="attn2 k,v"),
            dict(base, group="layers", method="uce", layers="attn2 v"),
            # cost vs number of forget prompts
            dict(base, group="prompts", method="semu", layers="attn2 k,v", prompts=1),
            dict(base, group="prompts", method="semu", layers="attn2 k,v", prompts=4 * args.prompts),
            dict(base, group="prompts", method="uce", layers="attn2 k,v", prompts=48),
        ]
    return runs


def _mb(x) -> str:
    return "–" if x is None else (f"{x / 2**20:,.0f}" if abs(x) >= 10 * 2**20 else f"{x / 2**20:.1f}")


def _s(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report(results: list[dict], args) -> str:
    r0 = results[0]
    lines = [
        f"{'SDXL' if 'sdxl' in args.unet else 'SD 1.5'} UNet architecture, random weights "
        f"({r0.get('unet_parameters', 0) / 1e6:,.0f} M parameters), "
        f"{args.device} {args.dtype}, {args.threads} threads, latents {args.latent}×{args.latent}, batch 1, "
        f"{args.steps} training steps, {args.sample_steps} sampler steps.",
        "",
        "| group | method | layers | forget prompts | trainable (% UNet) | setup: data / gradient / SVD s | s per step "
        "| s per sampler step | projected s | peak RSS MB | peak above start MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['group']} | {r['method']} | {r['layers']} | {r['prompts']} "
                         f"| failed: {r['error'][:80]} |" + " |" * 6)
            continue
        ph = r["phase_s"]
        if r["method"] == "semu":
            setup = f"{ph.get('data', 0):.1f} / {ph.get('gradient', 0):.1f} / {ph.get('svd', 0):.1f}"
        else:
            setup = f"solve {ph.get('solve', 0):.2f}" if r["method"] == "uce" else "–"
        peak = max((v for k, v in r["phase_peak_bytes"].items() if not k.startswith("control")), default=None)
        lines.append(
            f"| {r['group']} | {r['method']} | {r['layers']} ({r['layers_n']}) | {r['prompts']} | "
            f"{r['trainable_parameters']:,} ({100 * r['trainable_fraction']:.2f}%) | {setup} | {_s(r['s_per_step'])} | "
            f"{_s(r.get('s_per_sample_step'), 3)} | {_s(r.get('projected_s'), 0)} | {_mb(r['peak_rss_bytes'])} "
            f"| {_mb(peak)} |"
        )
    for r in results:
        if r["method"] == "semu" and r.get("semu_options") and "error" not in r:
            opts = ", ".join(f"{k}={v}" for k, v in r["semu_options"].items())
            pool = r["phase_s"].get("pool")
            lines.append(f"\nSEMU with {opts}: {_s(r['s_per_step'])} s per step"
                         + (f" (pool built once in {pool:.1f} s)" if pool is not None else ""))
            if r.get("control"):
                pk = r["phase_peak_bytes"]
                extra = pk["gradient"] - pk.get("control: forward+backward", 0)
                lines.append("gradient accumulation and SVD hold {:.1f}× one layer's gradient beyond autograd "
                             "({:.2f}× all target gradients); gradient phase {:.1f} s.".format(
                                 extra / r["grad_bytes_max_layer"], extra / r["grad_bytes_all"],
                                 r["phase_s"]["gradient"]))
    semu = next((r for r in results if r["method"] == "semu" and r.get("control") and not r.get("semu_options")
                 and "error" not in r), None)
    if semu:
        pk = semu["phase_peak_bytes"]
        ctl = pk.get("control: forward+backward", 0)
        extra = pk["gradient"] - ctl
        lines += [
            "",
            f"SEMU memory ({semu['layers']}, {semu['layers_n']} layers, {semu['gradient_batches']} gradient batches "
            "of 1): peak above the level before each phase, MB.",
            "",
            "| phase | peak MB | vs control MB | one layer's gradient MB | all target gradients MB |",
            "|---|---|---|---|---|",
            f"| control: one forward+backward (autograd) | {_mb(ctl)} | 0 | {_mb(semu['grad_bytes_max_layer'])} | "
            f"{_mb(semu['grad_bytes_all'])} |",
            f"| gradient accumulation | {_mb(pk['gradient'])} | {_mb(extra)} | | |",
            f"| SVD, all layers (largest single-layer transient) | {_mb(pk['svd'])} "
            f"({_mb(semu['svd_transient_max'])}) | | | |",
            f"| R training | {_mb(pk['train'])} | | | |",
            "",
            "Gradient accumulation holds {:.1f}× one layer's gradient beyond autograd ({:.2f}× all target "
            "gradients).".format(extra / semu["grad_bytes_max_layer"], extra / semu["grad_bytes_all"]),
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--latent", type=int, default=16, help="latent side (SD 1.5 at 512 px: 64)")
    ap.add_argument("--steps", type=int, default=2, help="training steps / ESD iterations per run")
    ap.add_argument("--sample-steps", type=int, default=4, help="sampler steps for data and ESD's x_t")
    ap.add_argument("--prompts", type=int, default=2, help="forget prompts (one image each) per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unet", default="sd15", choices=sorted(UNET_CONFIGS),
                    help="sd15 or sdxl; tiny / tiny-sdxl: a smoke run of this script")
    ap.add_argument("--quick", action="store_true", help="only the three methods at their default layers")
    ap.add_argument("--isolate", action="store_true",
                    help="one process per run (its ru_maxrss is then that run's peak), rebuilding the UNet each time")
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # inside a subprocess: the runs in order, one JSON line each
        for spec in json.loads(args.worker):
            try:
                result = run_one(spec)
            except Exception as e:  # report it and go on with the next run
                result = {**spec, "error": f"{type(e).__name__}: {e}"}
            print("RESULT " + json.dumps(result), flush=True)
        return
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    specs = plan(args)
    batches = [[s] for s in specs] if args.isolate else [specs]
    results = []
    for batch in batches:
        print(f"... {len(batch)} run(s) in a fresh process", file=sys.stderr, flush=True)
        errfile = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty stderr cannot block the worker
        proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(batch)], env=env,
                                stdout=subprocess.PIPE, stderr=errfile, text=True)
        for line in proc.stdout:
            if line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results.append(r)
                print(f"    {r['group']}: {r['method']} / {r['layers']} / {r['prompts']} prompts: "
                      + (r["error"] if "error" in r else f"{r['seconds']:.1f} s"), file=sys.stderr, flush=True)
        if proc.wait() != 0:
            errfile.seek(0)
            err = errfile.read()
            missing = [s for s in batch if not any(r["group"] == s["group"] and r["method"] == s["method"]
                                                   and r["layers"] == s["layers"] and r["prompts"] == s["prompts"]
                                                   for r in results)]
            tail = (err.strip().splitlines() or ["no output"])[-1]
            results += [{**s, "error": f"worker died: {tail}"} for s in missing]
    table = report(results, args)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "table": table}, indent=1))


if __name__ == "__main__":
    main()
