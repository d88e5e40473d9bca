"""``concept-erase bench``: every erasure method on the shapes world, same prompts, seeds and metrics.

For each concept (a colour, a shape, a style) and each method: erase wall time, peak memory (max
RSS of a fresh process per run), trainable parameters (% of the UNet), file size, concept rate on
forget prompts and on paraphrases (synonyms, held-out templates), other attributes kept, joint
accuracy on retain prompts, and FID (world-classifier features) base-vs-erased on retain prompts.
Each run happens in its own spawned process so peak memory is per method.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from . import world
from ._io import atomic_path, atomic_write_json, atomic_write_text, check_output_dir
from .concepts import load_preset
from .evaluation.fid import WorldFeatures, fid_of_images
from .evaluation.world import evaluate_sets
from .errors import InvalidConfigError
from .methods import METHODS, erase_with, get_method

__all__ = ["run_bench", "QUICK_OVERRIDES", "CONCEPTS", "METHOD_ORDER"]
logger = logging.getLogger(__name__)

CONCEPTS = ("no-red", "no-circle", "no-striped")
METHOD_ORDER = tuple(METHODS)  # every registered method, in registry order
# --quick: a CI smoke run (one concept, short training) — its numbers are not the README's.
# Methods without an entry run at their defaults.
QUICK_OVERRIDES = {
    "semu": dict(steps=60, num_forget_images=12, num_retain_images=12, sample_steps=10),
    "esd-x": dict(iterations=30),
    "esd-u": dict(iterations=30),
    "uce": {},
    "gradient-ascent": dict(steps=20, num_forget_images=12, num_retain_images=12, sample_steps=10),
    "task-vector": dict(steps=20, num_forget_images=12, sample_steps=10),
    "simu": dict(steps=40, num_forget_images=12, num_retain_images=12, sample_steps=10, attribution_images=8),
    "codebook": {},  # no training per concept
}


def _evaluate(pipe, classifier, concept, images_per_prompt: int):
    return evaluate_sets(pipe, classifier, concept, images_per_prompt=images_per_prompt, return_images=True)


def _run_one(method: str, preset: str, overrides: dict, images_per_prompt: int, out_dir: str) -> dict:
    """One method on one concept, in a fresh process (so ru_maxrss is this run's peak)."""
    torch.manual_seed(0)
    pipe = world.load_pipeline()
    classifier = world.load_classifier()
    concept = load_preset(preset)
    base, base_imgs = _evaluate(pipe, classifier, concept, images_per_prompt)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    adapter = erase_with(method, pipe, concept, progress=False, **overrides)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = adapter.save(Path(out_dir) / f"{preset}.{method}.safetensors")
    pipe.load_unlearning_adapter(str(path))
    after, after_imgs = _evaluate(pipe, classifier, concept, images_per_prompt)
    pipe.unload_unlearning_adapter()
    meta = adapter.metadata
    return {
        "method": method, "concept": preset, "seconds": seconds,
        "peak_memory_mib": peak_kib / 1024, "memory_before_erase_mib": rss_before / 1024,
        "trainable_parameters": int(meta.get("trainable_parameters", adapter.num_trainable)),
        "trainable_fraction": float(meta.get("trainable_fraction", 0.0)),
        "compression_error": float(meta.get("compression_error", 0.0)),
        "file_bytes": path.stat().st_size,
        "base": base, "erased": after,
        "fid_retain": fid_of_images(WorldFeatures(classifier), base_imgs["retain"][2], after_imgs["retain"][2]),
        "overrides": overrides,
    }


def _table(rows: list[dict]) -> str:
    head = ("| concept | method | time (s) | peak mem (MiB) | trainable | file | forget ↓ | paraphrase ↓ | kept ↑ "
            "| retain acc ↑ (base) | FID retain ↓ |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        e, b = r["erased"], r["base"]
        lines.append(
            f"| {r['concept']} | {r['method']} | {r['seconds']:.1f} | {r['peak_memory_mib']:.0f} | "
            f"{r['trainable_parameters']:,} ({r['trainable_fraction']:.2%}) | {r['file_bytes'] / 1024:.0f} KiB | "
            f"{e['forget']['concept_rate']:.1%} | {e['paraphrase']['concept_rate']:.1%} | {e['forget']['kept']:.1%} | "
            f"{e['retain']['accuracy']:.1%} ({b['retain']['accuracy']:.1%}) | {r['fid_retain']:.2f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    markers = dict(zip(METHOD_ORDER, "o^vsDPXh*p<>"))
    for r in rows:
        ax.scatter(r["seconds"], r["erased"]["paraphrase"]["concept_rate"] * 100, marker=markers.get(r["method"], "o"),
                   s=30 + 400 * max(0.0, 1 - r["erased"]["retain"]["accuracy"] + 0.05), alpha=0.7,
                   label=f"{r['method']}" if r["concept"] == rows[0]["concept"] else None)
        ax.annotate(f"{r['method']}\n{r['concept']}", (r["seconds"], r["erased"]["paraphrase"]["concept_rate"] * 100),
                    xytext=(6, 4), textcoords="offset points", fontsize=6, alpha=0.7)  # beside the marker
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.12)  # room for the labels beside the outermost markers
    ax.set_xlabel("erase wall time (s, log) — cost")
    ax.set_ylabel("concept rate on paraphrases (%) — lower is better")
    ax.set_title("Quality vs cost on the shapes world (marker size grows with retain-accuracy loss)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the data
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_bench(out_dir: str | Path = "bench", *, quick: bool = False, methods=METHOD_ORDER, concepts=None,
              images_per_prompt: int | None = None, progress: bool = True, overwrite: bool = False) -> list[dict]:
    from tqdm.auto import tqdm

    out_dir = check_output_dir(out_dir, overwrite=overwrite, owned=("bench.json",), what="a benchmark")
    concepts = concepts or (("no-red",) if quick else CONCEPTS)
    for concept in concepts:  # every input checked before the first (long) run
        load_preset(concept)
    for method in methods:
        get_method(method)
    if images_per_prompt is not None and (isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int)
                                          or images_per_prompt < 1):
        raise InvalidConfigError(f"--images-per-prompt must be a positive integer, but is {images_per_prompt!r}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    ipp = images_per_prompt or (1 if quick else 2)
    rows = []
    jobs = [(m, c) for c in concepts for m in methods]
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        for method, concept in tqdm(jobs, desc="bench", disable=not progress):
            overrides = QUICK_OVERRIDES.get(method, {}) if quick else {}
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                row = pool.submit(_run_one, method, concept, overrides, ipp, tmp).result()
            rows.append(row)
            logger.info("%s on %s: %.1fs, forget %.1f%%, paraphrase %.1f%%, retain %.1f%%", method, concept,
                        row["seconds"], 100 * row["erased"]["forget"]["concept_rate"],
                        100 * row["erased"]["paraphrase"]["concept_rate"], 100 * row["erased"]["retain"]["accuracy"])
            atomic_write_json(out_dir / "bench.json", {"quick": quick, "images_per_prompt": ipp, "rows": rows})
    table = _table(rows)
    atomic_write_text(out_dir / "bench.md", table + "\n")
    _plot(rows, out_dir / "bench.png")
    print(table)
    return rows
