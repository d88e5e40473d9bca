"""Resumable, batched, seeded generation of evaluation images to PNG files.

Layout: ``OUT/images/<model>/<split>/<row:05d>_s<seed>.png``, one file per (prompt row, seed); the
base model and every adapter get the same rows and seeds. Each PNG is written atomically, so a file
that exists is complete: an interrupted run restarts where it stopped and never generates a finished
image again. ``OUT/images/<model>/generation.json`` records what made the images (base, adapter
hash, sampler settings, prompts); a rerun with other settings refuses to mix old and new images.

Under ``accelerate launch`` the missing images are split between processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .._io import atomic_write_json, save_image_atomic
from ..diffusion import generate_images
from ..errors import InvalidConfigError
from ..images import to_pil
from .distributed import Dist
from .prompts import PromptRow

__all__ = ["ImageJob", "plan_jobs", "generate_missing", "model_dir", "check_manifest", "row_digests", "file_sha256", "safe_name"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """One image to make: prompt row ``row``, its ``k``-th seed."""

    row: int
    k: int
    prompt: str
    seed: int
    split: str
    path: Path | None  # None: an image held in memory, never written


def safe_name(name: str) -> str:
    """A model name usable as a directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def model_dir(out: str | Path, model: str) -> Path:
    return Path(out) / "images" / safe_name(model)


def plan_jobs(rows: Sequence[PromptRow], directory: str | Path, *, images_per_prompt: int, seed: int = 0) -> list[ImageJob]:
    """Every image of ``rows``: image ``k`` of a row uses seed ``(row.seed or seed) + k``."""
    if images_per_prompt < 1:
        raise InvalidConfigError(f"`images_per_prompt` must be at least 1 but is {images_per_prompt!r}.")
    directory = Path(directory)
    jobs = []
    for i, row in enumerate(rows):
        first = row.seed if row.seed is not None else seed
        for k in range(images_per_prompt):
            s = first + k
            jobs.append(ImageJob(i, k, row.prompt, s, row.split, directory / row.split / f"{i:05d}_s{s}.png"))
    return jobs


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def row_digests(rows: Sequence[PromptRow]) -> list[str]:
    """A short digest of each row's prompt and split: image ``i`` belongs to row ``i`` only while it is unchanged."""
    return [hashlib.sha256(f"{r.prompt}\0{r.split}".encode()).hexdigest()[:12] for r in rows]


def check_manifest(directory: str | Path, manifest: dict, *, overwrite: bool = False, write: bool = True) -> None:
    """Write ``generation.json``, or check it matches when images are already there (resume).

    ``manifest["prompts"]`` (row digests) may grow or shrink at the end (rows appended to a prompt
    file keep the images of the others); any other change is refused unless ``overwrite``. Every
    process checks; only the one with ``write=True`` (the main process) deletes or writes."""
    directory = Path(directory)
    path = directory / "generation.json"
    manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_rows, new_rows = old.get("prompts", []), manifest.get("prompts", [])
        n = min(len(old_rows), len(new_rows))
        changed = sorted(k for k in set(old) | set(manifest) if k != "prompts" and old.get(k) != manifest.get(k))
        first_diff = next((i for i in range(n) if old_rows[i] != new_rows[i]), None)
        if first_diff is not None:
            changed.append(f"prompts (row {first_diff} onwards)")
        if not changed:
            if len(new_rows) > len(old_rows) and write:
                atomic_write_json(path, manifest)
            return
        if not overwrite:
            raise InvalidConfigError(
                f"{str(directory)!r} holds images made with other settings (changed: {', '.join(changed)}). "
                "Use a new --out, or pass --overwrite to delete those images and generate them again."
            )
        if write:
            logger.warning("settings changed: deleting the images in %s", directory)
            shutil.rmtree(directory)
    if write:
        atomic_write_json(path, manifest)


def generate_missing(pipe, jobs: Sequence[ImageJob], *, batch_size: int = 16, call_kwargs: dict | None = None,
                     progress: bool = True, desc: str = "generate", dist: Dist | None = None) -> int:
    """Generate the images of ``jobs`` whose files do not exist yet; returns how many this process made.

    Several processes must pass the same ``jobs`` (each takes its share): ``evaluate`` gives every
    process the main process's list of missing images.

    >>> jobs = plan_jobs(rows, "out/images/base", images_per_prompt=4)  # doctest: +SKIP
    >>> generate_missing(pipe, jobs, batch_size=16, call_kwargs={"num_inference_steps": 20})  # doctest: +SKIP
    """
    dist = dist or Dist()
    share = dist.shard(jobs)
    mine = [j for j in share if not j.path.is_file()]
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not progress or not dist.is_main)
    if len(share) > len(mine):
        bar.set_postfix_str(f"{len(share) - len(mine)} already done")
    made = 0
    try:
        for i in range(0, len(mine), batch_size):
            batch = mine[i : i + batch_size]
            images = generate_images(pipe, [j.prompt for j in batch], [j.seed for j in batch], batch_size=len(batch),
                              **(call_kwargs or {}))
            for job, image in zip(batch, images):
                save_image_atomic(to_pil(image), job.path)
            made += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    return made
