"""Resumable, batched, seeded generation of evaluation images to PNG files.

Layout: ``OUT/images/<model>/<split>/<row:05d>_s<seed>.png``, one file per (prompt row, seed); the
base model and every adapter get the same rows and seeds. Each PNG is written atomically and
carries a text chunk (``concept-erase``) naming the settings, prompt and seed that made it, so an
interrupted run restarts where it stopped and never generates a finished image again, while a file
that does not decode (0 bytes, truncated, not a PNG) or was made with other settings is generated
again (:func:`find_missing` counts them) — never fatal. ``OUT/images/<model>/generation.json``
records what made the images (base, adapter hash, sampler settings, prompts); a rerun with other
settings refuses to mix old and new images.

Under ``accelerate launch`` the missing images are split between processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from .._io import atomic_write_json, safe_filename, save_image_atomic
from ..diffusion import generate_images
from ..errors import InvalidConfigError
from ..images import to_pil
from .distributed import Dist
from .prompts import PromptRow

__all__ = ["ImageJob", "plan_jobs", "batches", "generate_missing", "find_missing", "image_ok", "model_dir",
           "check_manifest", "row_digests", "file_sha256", "settings_digest", "TAG_KEY"]
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
    tag: str = ""  # settings + prompt + seed, written into the PNG and checked on resume
    call: tuple = ()  # the row's own pipeline call arguments (PromptRow.sampling), over the run's


def model_dir(out: str | Path, model: str) -> Path:
    return Path(out) / "images" / safe_filename(model, "model")


def plan_jobs(rows: Sequence[PromptRow], directory: str | Path, *, images_per_prompt: int, seed: int = 0,
              settings: str = "") -> list[ImageJob]:
    """Every image of ``rows``: image ``k`` of a row uses seed ``(row.seed or seed) + k``, and the
    row's own call arguments (``row.sampling``: guidance scale, size) when it has them.

    ``settings`` (:func:`settings_digest` of what makes the images) goes into each job's tag."""
    if images_per_prompt < 1:
        raise InvalidConfigError(f"`images_per_prompt` must be at least 1 but is {images_per_prompt!r}.")
    directory = Path(directory)
    jobs = []
    for i, (row, digest) in enumerate(zip(rows, row_digests(rows))):
        first = row.seed if row.seed is not None else seed
        for k in range(images_per_prompt):
            s = first + k
            jobs.append(ImageJob(i, k, row.prompt, s, row.split, directory / row.split / f"{i:05d}_s{s}.png",
                                 f"{settings}:{digest}:{s}", row.sampling))
    return jobs


TAG_KEY = "concept-erase"
_IMAGE_FILE = re.compile(r"^\d{5}_s\d+\.png$")


def settings_digest(manifest: dict) -> str:
    """A short digest of everything but the prompt list in a generation manifest."""
    rest = {k: v for k, v in manifest.items() if k != "prompts"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def image_ok(job: ImageJob) -> bool:
    """Whether ``job``'s file is a complete image made for this job (it decodes, and its tag matches)."""
    try:
        with Image.open(job.path) as im:
            if job.tag and im.info.get(TAG_KEY) != job.tag:
                return False
            im.load()  # decodes every pixel: a truncated file fails here
        return True
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - PIL signals damage with OSError, ValueError, SyntaxError, EOFError, ...
        return False


def find_missing(jobs: Sequence[ImageJob]) -> tuple[list[ImageJob], int]:
    """The jobs whose image must be generated, and how many of them have a file that is unusable
    (does not decode, or was made with other settings): those are generated again."""
    missing, broken = [], 0
    for job in jobs:
        if not image_ok(job):
            missing.append(job)
            broken += job.path.exists()
    return missing, broken


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def row_digests(rows: Sequence[PromptRow]) -> list[str]:
    """A short digest of each row's prompt, split and own sampling settings: image ``i`` belongs to row
    ``i`` only while they are unchanged."""
    return [hashlib.sha256((f"{r.prompt}\0{r.split}" + (f"\0{json.dumps(r.sampling)}" if r.sampling else ""))
                           .encode()).hexdigest()[:12] for r in rows]


def batches(jobs: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """``jobs`` in batches of at most ``batch_size`` that share their call arguments (so one pipeline
    call, or one stack of images of one size, serves each); in order within each kind."""
    groups: dict[tuple, list[ImageJob]] = {}
    for job in jobs:
        groups.setdefault(job.call, []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


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
            _delete_images(directory)
    if write:
        atomic_write_json(path, manifest)


def _delete_images(directory: Path) -> None:
    """Delete the images and manifest this module wrote under ``directory``; anything else stays."""
    for split in [p for p in directory.iterdir() if p.is_dir()]:
        for f in split.iterdir():
            if _IMAGE_FILE.match(f.name) and f.is_file():
                f.unlink()
        if not any(split.iterdir()):
            split.rmdir()
    (directory / "generation.json").unlink(missing_ok=True)


def generate_missing(pipe, jobs: Sequence[ImageJob], *, batch_size: int = 16, call_kwargs: dict | None = None,
                     progress: bool = True, desc: str = "generate", dist: Dist | None = None,
                     check: bool = True) -> int:
    """Generate the images of ``jobs`` that are not done yet; returns how many this process made.

    With ``check`` every existing file is verified (:func:`image_ok`); ``check=False`` generates
    every job (the caller already ran :func:`find_missing`).

    Several processes must pass the same ``jobs`` (each takes its share): ``evaluate`` gives every
    process the main process's list of missing images.

    >>> jobs = plan_jobs(rows, "out/images/base", images_per_prompt=4)  # doctest: +SKIP
    >>> generate_missing(pipe, jobs, batch_size=16, call_kwargs={"num_inference_steps": 20})  # doctest: +SKIP
    """
    dist = dist or Dist()
    share = dist.shard(jobs)
    mine = find_missing(share)[0] if check else list(share)
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not progress or not dist.is_main)
    if len(share) > len(mine):
        bar.set_postfix_str(f"{len(share) - len(mine)} already done")
    made = 0
    try:
        for batch in batches(mine, batch_size):
            images = generate_images(pipe, [j.prompt for j in batch], [j.seed for j in batch], batch_size=len(batch),
                                     **{**(call_kwargs or {}), **dict(batch[0].call)})
            for job, image in zip(batch, images):
                info = PngImagePlugin.PngInfo()
                info.add_text(TAG_KEY, job.tag)
                save_image_atomic(to_pil(image), job.path, pnginfo=info)
            made += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    return made
