"""Does the concept come back? Runs the robustness checks of ``concept-erase eval`` for each adapter.

- paraphrases: a prompt split like any other (``--paraphrases`` adds the world's synonyms and
  held-out templates of the forget prompts; elsewhere, give a ``paraphrase`` split);
- ``--attack``: adversarial prompts (:mod:`.adversarial`), attack success rate;
- ``--relearn``: fine-tuning on the forget prompts (:mod:`.relearning`), concept rate vs steps;
- ``--membership``: membership-inference AUC on the adapter's forget data (:mod:`.membership`).

Images of the concept come from the base model's own evaluation images of the forget prompts
(already on disk), encoded by the VAE; the images the classifier saw the concept in come first.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..diffusion import encode_images, encode_prompts
from ..errors import InvalidConfigError
from ..images import load_images
from .adversarial import AttackConfig, adversarial_attack
from .config import EvalConfig
from .generate import ImageJob
from .membership import membership_auc, semu_forget_samples
from .models import EvalModel, use_model
from .prompts import PromptRow
from .relearning import RelearnConfig, concept_rate, relearning_attack
from .scoring import ImageRecord

__all__ = ["run_robustness", "check_inputs"]
logger = logging.getLogger(__name__)


def spread(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def check_inputs(config: EvalConfig, rows: list[PromptRow], target: str | None) -> None:
    """Raise before anything is generated when a robustness check asked for cannot run."""
    wanted = [name for name in ("attack", "relearn", "membership") if getattr(config, name)]
    if not wanted:
        return
    if not target:
        raise InvalidConfigError(f"--{wanted[0]} needs a concept to detect; pass --target LABEL.")
    if not any(r.split == "forget" for r in rows):
        raise InvalidConfigError(
            f"--{wanted[0]} needs forget prompts: give a prompt file with a `split` column holding 'forget' rows, "
            "or a preset (--prompts no-red)."
        )
    if not config.adapters:
        raise InvalidConfigError(f"--{wanted[0]} attacks adapters; pass at least one --adapter.")


def run_robustness(pipe, models: list[EvalModel], classifier, rows: list[PromptRow], base_jobs: list[ImageJob],
                   base_records: list[ImageRecord], target: str | None, config: EvalConfig, call_kwargs: dict) -> dict:
    """Every robustness check asked for in ``config``, for every adapter in ``models``."""
    if not (config.attack or config.relearn or config.membership):
        return {}
    check_inputs(config, rows, target)
    forget = [i for i, r in enumerate(rows) if r.split == "forget"]
    adapters = [m for m in models if m.adapter is not None]
    detected = {(r.row, r.seed): bool(r.detected) for r in base_records}
    by_row: dict[int, list[ImageJob]] = {}
    for job in base_jobs:
        if job.row in forget:
            by_row.setdefault(job.row, []).append(job)
    # rows where the base model shows the concept are the meaningful ones to attack / relearn
    shown = [i for i in forget if any(detected.get((j.row, j.seed)) for j in by_row.get(i, []))]
    out: dict = {}

    # --- base-side data, made once with the plain base model ---
    with torch.no_grad():
        attack_rows = spread(shown or forget, config.attack_prompts) if config.attack else []
        attack_latents = []
        for i in attack_rows:
            jobs = sorted(by_row[i], key=lambda j: not detected.get((j.row, j.seed)))
            keep = [j for j in jobs if detected.get((j.row, j.seed))] or jobs
            attack_latents.append(encode_images(pipe, load_images([j.path for j in keep])))
        if config.relearn:
            train_jobs = [j for i in forget for j in by_row.get(i, [])][:256]
            relearn_latents = encode_images(pipe, load_images([j.path for j in train_jobs]))
            relearn_cond = encode_prompts(pipe, [j.prompt for j in train_jobs])
            eval_rows = spread(forget, 16)
            eval_prompts = [rows[i].prompt for i in eval_rows]
            eval_seeds = [config.seed + 1000 + k for k in range(len(eval_rows))]
            idx = classifier.concept_indices(target)
            base_rate = concept_rate(pipe, classifier, eval_prompts, eval_seeds, idx, call_kwargs)
        mia_samples = {}
        if config.membership:
            for m in adapters:
                try:
                    mia_samples[m.name] = semu_forget_samples(pipe, m.metadata, limit=config.membership_samples)
                except InvalidConfigError as e:
                    mia_samples[m.name] = str(e)

    attack_cfg = AttackConfig(num_tokens=config.attack_tokens, steps=config.attack_steps,
                              max_prompts=config.attack_prompts, seed=config.seed)
    relearn_cfg = RelearnConfig(steps=config.relearn_steps, learning_rate=config.relearn_lr,
                                eval_every=config.relearn_eval_every, params=config.relearn_params, seed=config.seed)
    for m in adapters:
        with use_model(pipe, m, scale=config.adapter_scale):
            if config.attack:
                logger.info("adversarial attack on %s (%d prompts)", m.name, len(attack_rows))
                out.setdefault("adversarial", {})[m.name] = adversarial_attack(
                    pipe, classifier, [rows[i].prompt for i in attack_rows], attack_latents, target,
                    config=attack_cfg, call_kwargs=call_kwargs)
            if config.relearn:
                logger.info("relearning attack on %s (%d steps)", m.name, relearn_cfg.steps)
                out.setdefault("relearning", {})[m.name] = relearning_attack(
                    pipe, classifier, relearn_latents, relearn_cond, eval_prompts, eval_seeds, target,
                    base_rate=base_rate, config=relearn_cfg, call_kwargs=call_kwargs)
            if config.membership:
                samples = mia_samples[m.name]
                if isinstance(samples, str):
                    out.setdefault("membership", {})[m.name] = {"skipped": samples}
                else:
                    logger.info("membership inference on %s", m.name)
                    out.setdefault("membership", {})[m.name] = membership_auc(pipe, *samples, seed=config.seed)
    if config.membership:  # the base model on each adapter's samples: the control (never trained on either set)
        for m in adapters:
            samples = mia_samples[m.name]
            if not isinstance(samples, str):
                out["membership"][m.name]["base_auc"] = membership_auc(pipe, *samples, seed=config.seed)["auc"]
    return out
