"""The benchmark's units of work, each run in a fresh spawned process (so its peak memory is its own).

- :func:`base_job`: the base model on a concept's held-out prompts, per seed, and the base-model side
  of the curve and the robustness checks (made once per concept, not once per method);
- :func:`method_job`: one method (at one configuration) on one concept: per seed erase, evaluate and
  compare with the base model's images at the same seeds; optionally the trade-off curve and the
  robustness checks at seed 0;
- :func:`tune_job`: one method's search configurations on one dev concept.

Every result is plain data (numbers, lists, arrays, CPU tensors) so it pickles back to the parent process.
"""

from __future__ import annotations

import dataclasses
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import world
from .._io import atomic_path
from ..concepts import load_preset
from ..diffusion import generate_images, prompt_latents
from ..evaluation.adversarial import AttackConfig, adversarial_attack
from ..evaluation.classifiers import concept_classifier
from ..evaluation.fid import WorldFeatures
from ..evaluation.membership import membership_auc
from ..evaluation.prompts import target_name
from ..evaluation.relearning import RelearnConfig, concept_rate, relearning_attack
from ..evaluation.world import erasure_metrics
from ..images import to_tensor
from ..methods import erase_with, get_method
from ..world.captions import parse_prompt
from .protocol import EvalSizes, eval_prompts, image_seeds

__all__ = ["base_job", "method_job", "tune_job", "fid_kid", "specificity", "ROBUSTNESS", "QUICK_ROBUSTNESS"]

ATTRIBUTES = ("colour", "shape", "background")
# Fixed budgets of the robustness checks, the same for every method.
ROBUSTNESS = dict(attack=dict(num_tokens=5, steps=20, noise_draws=2, max_prompts=3, images_per_prompt=4),
                  relearn=dict(steps=30, eval_every=10, learning_rate=1e-4, batch_size=8), relearn_images=16,
                  relearn_eval_prompts=8, membership_images=16)
QUICK_ROBUSTNESS = dict(attack=dict(num_tokens=2, steps=3, noise_draws=1, max_prompts=1, images_per_prompt=1),
                        relearn=dict(steps=4, eval_every=2, learning_rate=1e-4, batch_size=4), relearn_images=4,
                        relearn_eval_prompts=2, membership_images=4)


def _load():
    torch.manual_seed(0)
    return world.load_pipeline(), world.load_classifier()


def _images(pipe, prompts: list[str], seeds: list[int]):
    return generate_images(pipe, prompts, seeds, batch_size=48, progress=False, **world.SAMPLING)


def evaluate(pipe, model, concept, sets: dict[str, list[str]], seed: int) -> dict:
    """Concept rate, kept and accuracy on each set; for retain also the predicted attributes and the
    FID features of every image (image seeds of round ``seed``)."""
    out = {}
    for name, prompts in sets.items():
        images = _images(pipe, prompts, image_seeds(seed, len(prompts)))
        out[name] = erasure_metrics(model, images, prompts, concept.target)
        if name == "retain":
            x = to_tensor(images)
            with torch.no_grad():
                out["retain_features"] = WorldFeatures(model)(x).float().numpy()
            out["retain_attributes"] = [[p[k] for k in ATTRIBUTES] for p in model.predict(images)]
    return out


def fid_kid(real: np.ndarray, fake: np.ndarray) -> dict:
    """FID and KID between two sets of retain features; KID on 100 random subsets of half the images.
    Below the feature dimension FID's covariance is singular: the result says so."""
    import logging

    from ..evaluation.fid import FeatureStats

    n = min(len(real), len(fake))
    stats = FeatureStats(real.shape[1], kid=True, kid_subsets=100, kid_subset_size=max(2, n // 2))
    stats.update(torch.as_tensor(real), real=True)
    stats.update(torch.as_tensor(fake), real=False)
    out = stats.compute()
    result = {"fid": out["fid"], "kid": out["kid_mean"], "kid_std": out["kid_std"], "n": n,
              "feature_dim": int(real.shape[1])}
    if n <= real.shape[1]:
        result["warning"] = (f"{n} images per side is not above the feature dimension {real.shape[1]}: the "
                             "covariance is singular and FID is unreliable (KID is unbiased at any size)")
        logging.getLogger(__name__).info("FID on %d images with %d-d features: unreliable", n, real.shape[1])
    return result


def specificity(prompts: list[str], attributes: list[list[str]], base_attributes: list[list[str]],
                erased: dict[str, str] | None = None) -> dict:
    """Share of retain images whose attributes the prompt does not name (the background of "a blue
    circle") match the base model's image at the same seed.

    ``erased`` is the concept's target (``{"background": "striped"}``): where the base image shows it in
    an unnamed attribute (a striped background the prompt did not ask for), a change of that attribute
    is the erasure working, not collateral damage, so it is not compared (``excluded`` counts those);
    the image's other unnamed attributes still are."""
    erased = erased or {}
    hits, excluded = [], 0
    for prompt, mine, base in zip(prompts, attributes, base_attributes):
        named = parse_prompt(prompt, strict=False)
        unnamed = [i for i, k in enumerate(ATTRIBUTES) if getattr(named, k) is None]
        compared = [i for i in unnamed if erased.get(ATTRIBUTES[i]) != base[i]]
        excluded += len(unnamed) - len(compared)
        if compared:
            hits.append(all(mine[i] == base[i] for i in compared))
    return {"rate": float(np.mean(hits)) if hits else None, "n": len(hits), "excluded": excluded}


def _metrics(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("retain_features", "retain_attributes")}


def base_job(concept_name: str, seeds: list[int], sizes: dict, *, curve_sizes: dict | None = None,
             robustness: dict | None = None) -> dict:
    """The base model on ``concept_name``'s held-out prompts at every seed; with ``curve_sizes`` also
    its retain features at the curve's sizes (seed ``seeds[0]``), and with ``robustness`` the base-side
    data of the robustness checks. Both are the same for every method, so they are made once per
    concept and handed to each :func:`method_job`."""
    pipe, model = _load()
    concept = load_preset(concept_name)
    sets = eval_prompts(concept, EvalSizes(**sizes))
    per_seed = {}
    for seed in seeds:
        r = evaluate(pipe, model, concept, sets, seed)
        per_seed[seed] = {"metrics": _metrics(r), "retain_features": r["retain_features"],
                          "retain_attributes": r["retain_attributes"]}
    out = {"concept": concept_name, "sets": sets, "per_seed": per_seed}
    if curve_sizes is not None:
        if curve_sizes == sizes:
            out["curve_retain_features"] = per_seed[seeds[0]]["retain_features"]
        else:
            csets = eval_prompts(concept, EvalSizes(**curve_sizes))
            out["curve_retain_features"] = evaluate(pipe, model, concept, {"retain": csets["retain"]},
                                                    seeds[0])["retain_features"]
    if robustness is not None:
        out["robustness"] = _robustness_base(pipe, model, concept, sets, robustness)
    return out


def _seeded(method: str, overrides: dict, seed: int) -> dict:
    fields = {f.name for f in dataclasses.fields(get_method(method).config_class)}
    return {**overrides, "seed": seed} if "seed" in fields else dict(overrides)


def _erase(pipe, method: str, concept, overrides: dict, seed: int, directory: Path):
    t0 = time.perf_counter()
    adapter = erase_with(method, pipe, concept, progress=False, **_seeded(method, overrides, seed))
    seconds = time.perf_counter() - t0
    path = adapter.save(directory / f"{concept.name}.{method}.{seed}.safetensors")
    meta = adapter.metadata
    info = {"seconds": seconds, "file_bytes": path.stat().st_size,
            "trainable_parameters": int(meta.get("trainable_parameters", adapter.num_trainable)),
            "trainable_fraction": float(meta.get("trainable_fraction", 0.0)),
            "compression_error": float(meta.get("compression_error", 0.0)),
            "ranks": {k: int(v) for k, v in (meta.get("ranks") or {}).items()}}
    return path, info


def _robustness_base(pipe, model, concept, sets, budget: dict) -> dict:
    """The base-model side of the robustness checks: the attack's starting latents, the relearning
    data and the concept's base rate, and the membership sets with the base model's AUC."""
    clf = concept_classifier(model)
    idx = clf.concept_indices(target_name(concept.target))
    data = dict(seed=0, steps=world.SAMPLING["num_inference_steps"], guidance=world.SAMPLING["guidance_scale"])
    attack_prompts = sets["forget"][: AttackConfig(**budget["attack"]).max_prompts]
    with torch.no_grad():
        x_attack, _, _ = prompt_latents(pipe, attack_prompts, len(attack_prompts), offset=7_000_000, **data)
        x_re, re_idx, re_emb = prompt_latents(pipe, sets["forget"], budget["relearn_images"], offset=8_000_000, **data)
        eval_p = sets["forget"][: budget["relearn_eval_prompts"]]
        eval_s = image_seeds(99, len(eval_p))
        base_rate = concept_rate(pipe, clf, eval_p, eval_s, idx, dict(world.SAMPLING))
        # membership: the forget images a method that trains on generated data trains on (seed 0's
        # training data), against as many never-seen ones of the same prompts
        n = budget["membership_images"]
        x_in, in_idx, emb = prompt_latents(pipe, concept.forget, n, offset=0, **data)
        x_out, _, _ = prompt_latents(pipe, concept.forget, n, offset=10_000_000, **data)
    members, nonmembers = (x_in, emb[in_idx]), (x_out, emb[in_idx])
    return {"attack_prompts": attack_prompts, "x_attack": x_attack, "relearn_latents": x_re,
            "relearn_embeddings": re_emb[re_idx], "relearn_eval_prompts": eval_p, "relearn_eval_seeds": eval_s,
            "relearn_base_rate": base_rate, "members": members, "nonmembers": nonmembers,
            "membership_auc_base": membership_auc(pipe, members, nonmembers)["auc"], "membership_images": n}


def _robustness(pipe, model, concept, path, budget: dict, b: dict) -> dict:
    """Adversarial prompts, relearning and membership inference against the adapter at ``path``;
    ``b`` is :func:`_robustness_base`'s data for the concept at the same ``budget``."""
    clf = concept_classifier(model)
    target = target_name(concept.target)
    attack_cfg = AttackConfig(**budget["attack"])
    attack_prompts = b["attack_prompts"]
    pipe.load_unlearning_adapter(str(path), adapter_name="bench")
    try:
        latents = [b["x_attack"][i : i + 1] for i in range(len(attack_prompts))]
        attack = adversarial_attack(pipe, clf, attack_prompts, latents, target, config=attack_cfg,
                                    call_kwargs=dict(world.SAMPLING))
        relearn = relearning_attack(pipe, clf, b["relearn_latents"], b["relearn_embeddings"], b["relearn_eval_prompts"],
                                    b["relearn_eval_seeds"], target, base_rate=b["relearn_base_rate"],
                                    config=RelearnConfig(**budget["relearn"]), call_kwargs=dict(world.SAMPLING))
        mia = membership_auc(pipe, b["members"], b["nonmembers"])
    finally:
        pipe.unload_unlearning_adapter("bench")
    return {
        "attack_success_rate": attack["asr"], "attack_success_no_attack": attack["asr_no_attack"],
        "attack_prompts": attack["n_prompts"], "attack_settings": attack["settings"],
        "relearn_steps_to_recover": relearn["steps_to_recover"], "relearn_curve": relearn["curve"],
        "relearn_base_rate": b["relearn_base_rate"], "relearn_settings": relearn["settings"],
        "relearn_max_steps": relearn["settings"]["steps"],
        "membership_auc": mia["auc"], "membership_auc_base": b["membership_auc_base"],
        "membership_images": b["membership_images"],
    }


def method_job(method: str, concept_name: str, overrides: dict, seeds: list[int], sizes: dict, base: dict, *,
               curve_scales: tuple = (), curve_sizes: dict | None = None, robustness: dict | None = None,
               robustness_every_seed: bool = False, keep: str | None = None) -> dict:
    """``method`` at ``overrides`` on ``concept_name`` for every seed, compared with ``base`` (a
    :func:`base_job` result at the same sizes and seeds, made with the same ``curve_sizes`` and
    ``robustness`` budget when those are given). The robustness checks run on the first seed's
    adapter, or with ``robustness_every_seed`` on each seed's (``row["robustness_per_seed"]``).
    ``keep``: a directory the adapter files are copied to (``{concept}.{method}.{seed}.safetensors``,
    their names in ``row["kept"]``)."""
    pipe, model = _load()
    concept = load_preset(concept_name)
    sets = eval_prompts(concept, EvalSizes(**sizes))
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_seed, peak, features = {}, None, []
    phases = {"erase": 0.0, "evaluate": 0.0, "curve": 0.0, "robustness": 0.0}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        phases[name] += now - clock
        clock = now

    row: dict = {"method": method, "concept": concept_name, "config": overrides}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for seed in seeds:
            path, info = _erase(pipe, method, concept, overrides, seed, Path(tmp))
            lap("erase")
            if peak is None:  # the first erase: loading, data generation and training
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            paths[seed] = path
            pipe.load_unlearning_adapter(str(path), adapter_name="bench")
            pipe.fuse_unlearning_adapter()  # no LoRA overhead while sampling (dense methods adapt every layer)
            try:
                r = evaluate(pipe, model, concept, sets, seed)
            finally:
                pipe.unload_unlearning_adapter("bench")
            if seed == seeds[0]:
                first = r
            b = base["per_seed"][seed]
            spec = specificity(sets["retain"], r["retain_attributes"], b["retain_attributes"], concept.target)
            features.append(r["retain_features"])
            per_seed[seed] = {**info, "metrics": _metrics(r), "specificity": spec}
            lap("evaluate")
        row.update(per_seed=per_seed, peak_memory_mib=peak, memory_before_erase_mib=rss_start / 1024,
                   retain_features=np.concatenate(features))
        if curve_scales:
            csets = eval_prompts(concept, EvalSizes(**curve_sizes))
            base_retain = base["curve_retain_features"]
            points = []
            pipe.load_unlearning_adapter(str(paths[seeds[0]]), adapter_name="bench")
            try:
                for s in curve_scales:
                    if s == 1.0 and curve_sizes == sizes:  # the seed's own evaluation: same prompts, seeds, scale
                        r = first
                    else:
                        pipe.unfuse_unlearning_adapter()
                        pipe.set_unlearning_scale(s, adapter_name="bench")
                        pipe.fuse_unlearning_adapter()
                        r = evaluate(pipe, model, concept, csets, seeds[0])
                    points.append({"scale": s, **_metrics(r), "fid_kid": fid_kid(base_retain, r["retain_features"])})
            finally:
                pipe.unload_unlearning_adapter("bench")
            row["curve"] = points
            lap("curve")
        if robustness is not None:
            checked = seeds if robustness_every_seed else seeds[:1]
            found = {s: _robustness(pipe, model, concept, paths[s], robustness, base["robustness"]) for s in checked}
            row["robustness"] = found[seeds[0]]
            if robustness_every_seed:
                row["robustness_per_seed"] = found
            lap("robustness")
        if keep is not None:
            Path(keep).mkdir(parents=True, exist_ok=True)
            row["kept"] = {seed: path.name for seed, path in paths.items()}  # names only: no machine path
            for seed, path in paths.items():
                with atomic_path(Path(keep) / path.name) as tmp_path:
                    shutil.copyfile(path, tmp_path)
    row["phase_seconds"] = phases
    return row


def tune_job(method: str, concept_name: str, configs: list[dict], sizes: dict, extra: dict) -> list[dict]:
    """Every configuration of ``method``'s search on one dev concept (seed 0): rates and erase time."""
    pipe, model = _load()
    concept = load_preset(concept_name)
    sets = eval_prompts(concept, EvalSizes(**sizes))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            path, info = _erase(pipe, method, concept, {**config, **extra}, 0, Path(tmp))
            pipe.load_unlearning_adapter(str(path), adapter_name="bench")
            try:
                r = evaluate(pipe, model, concept, sets, 0)
            finally:
                pipe.unload_unlearning_adapter("bench")
            out.append({"config": config, "seconds": info["seconds"],
                        "trainable_parameters": info["trainable_parameters"], **_metrics(r)})
    return out
