"""``concept-erase quickstart``: the whole product on the shipped world model, in about a minute.

Erase a concept with SEMU (fresh, timed), save the adapter, load it back the way users do
(``pipe.load_unlearning_adapter``), then measure before/after with the world classifier and write
a side-by-side picture (original vs erased, same seeds).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import world
from ._io import atomic_write_json, atomic_write_text, check_output_dir, safe_filename, save_image_atomic
from .bench.protocol import HEADLINE, eval_prompts
from .concepts import load_preset
from .evaluation.world import evaluate_sets
from .loading import default_device
from .methods.semu import SemuConfig, erase
from .viz import image_grid

__all__ = ["run_quickstart", "before_after_table"]
logger = logging.getLogger(__name__)


def before_after_table(before: dict, after: dict, concept_name: str) -> str:
    rows = [
        ("concept rate, held-out forget prompts", "forget", "concept_rate", "lower is better"),
        ("concept rate, paraphrases (synonyms, held-out templates)", "paraphrase", "concept_rate", "lower is better"),
        ("other attributes kept, forget prompts", "forget", "kept", "higher is better"),
        ("accuracy, held-out retain prompts", "retain", "accuracy", "higher is better"),
    ]
    lines = [f"| metric | base | {concept_name} | |", "|---|---:|---:|---|"]
    for label, split, key, note in rows:
        if split in before:
            lines.append(f"| {label} | {before[split][key]:.1%} | {after[split][key]:.1%} | {note} |")
    return "\n".join(lines)


def run_quickstart(out_dir: str | Path = "concept-erase-quickstart", preset: str = "no-red", *,
                   progress: bool = True, config=None, overwrite: bool = False) -> dict:
    """Erase ``preset`` from the shipped world model, reload the adapter, measure before/after and write
    ``quickstart.json``, ``quickstart.md`` and ``before_after.png`` into ``out_dir``; returns the figures.

    ``out_dir`` must be new, empty or an earlier quickstart's (else ``overwrite``); checked first."""
    concept = load_preset(preset)
    adapter_file = f"{safe_filename(concept.name, 'adapter')}.safetensors"  # a preset file may name it anything
    out_dir = check_output_dir(out_dir, overwrite=overwrite, owned=("quickstart.json", adapter_file),
                               what="a quickstart run")
    t_all = time.perf_counter()
    device = default_device()
    pipe = world.load_pipeline(device)
    classifier = world.load_classifier(device=device)

    t0 = time.perf_counter()
    adapter = erase(pipe, concept, config or SemuConfig(), progress=progress)
    erase_seconds = time.perf_counter() - t0
    path = adapter.save(out_dir / adapter_file)

    # measured on prompts the erasure never saw (the benchmark's held-out prompts of the concept)
    sets = eval_prompts(concept, HEADLINE) if concept.target else None
    before, imgs_before = evaluate_sets(pipe, classifier, concept, progress=progress, return_images=True, sets=sets)
    pipe.load_unlearning_adapter(str(path))
    after, imgs_after = evaluate_sets(pipe, classifier, concept, progress=progress, return_images=True, sets=sets)

    # picture: a few prompts of each kind, original | erased, same seeds
    picks = [(split, i) for split, k in (("forget", 6), ("paraphrase", 4), ("retain", 4)) if split in imgs_before
             for i in range(0, len(imgs_before[split][0]), max(1, len(imgs_before[split][0]) // k))[:k]]
    grid = image_grid(
        [[imgs_before[s][2][i], imgs_after[s][2][i]] for s, i in picks],
        row_labels=[f"[{s}] {imgs_before[s][0][i]}" for s, i in picks],
        col_labels=["original", f"erased ({concept.name})"],
    )
    grid_path = save_image_atomic(grid, out_dir / "before_after.png")

    table = before_after_table(before, after, concept.name)
    result = {
        "concept": concept.name, "adapter": str(path), "erase_seconds": erase_seconds,
        "total_seconds": time.perf_counter() - t_all, "trainable_parameters": adapter.num_trainable,
        "trainable_fraction": adapter.metadata["trainable_fraction"], "file_bytes": path.stat().st_size,
        "before": before, "after": after,
    }
    atomic_write_json(out_dir / "quickstart.json", result)
    atomic_write_text(out_dir / "quickstart.md", table + "\n")
    print(f"\nErased {concept.name!r} with SEMU in {erase_seconds:.1f} s: {adapter.num_trainable:,} trainable parameters "
          f"({adapter.metadata['trainable_fraction']:.3%} of the UNet), adapter {path} "
          f"({path.stat().st_size / 1024:.0f} KiB)\n")
    print(table)
    print(f"\nside-by-side grid: {grid_path}\nreport: {out_dir / 'quickstart.json'}  "
          f"(total {result['total_seconds']:.0f} s)")
    return result
