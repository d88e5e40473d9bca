"""The demo's core, without a browser: the same prompt and seed, original and unlearned.

:func:`generate_pairs` draws original/unlearned pairs (the original is the pipeline with every
unlearning adapter at scale 0, which PEFT computes bit-exactly like the bare model);
:func:`discover_adapters` and :func:`validate_upload` find and check adapters; :func:`classify`
gives each image the verdict of a concept classifier (the evaluation's
:class:`~concept_erase.evaluation.classifiers.ConceptClassifier`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from ..adapter import UnlearningAdapter
from ..diffusion import generate_images
from ..errors import AdapterFormatError, ConceptEraseError, InvalidConfigError, InvalidPromptError
from ..evaluation.classifiers import concept_classifier
from ..evaluation.prompts import target_name
from ..images import to_pil
from ..loading import SHIPPED_ADAPTERS_DIR, known_adapters

__all__ = ["AdapterEntry", "Pair", "discover_adapters", "validate_upload", "generate_pairs", "generate_pair",
           "describe_adapters", "example_prompts", "classify", "activate_adapters_", "MAX_UPLOAD_MB", "MAX_SEEDS",
           "MAX_UPLOADS"]
logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 100  # a SEMU adapter for SD 1.x is a few MB; a large kohya LoRA is ~150 MB and is refused
MAX_SEEDS = 8  # images per click on 2 CPU cores stay within seconds on the world model
MAX_UPLOADS = 4  # per browser session: uploaded adapters live in the session's memory


# ---------------------------------------------------------------- adapters
@dataclass
class AdapterEntry:
    """An adapter the demo can activate. ``key`` is its adapter name in the pipeline; no path is kept."""

    key: str
    label: str
    adapter: UnlearningAdapter
    source: str  # "shipped", "registered" or "uploaded"


def _meta(adapter: UnlearningAdapter, key: str, kind: type, default=None):
    """A metadata field of the expected type, else ``default`` (uploaded files may hold anything)."""
    value = adapter.metadata.get(key) if isinstance(adapter.metadata, dict) else None
    return value if isinstance(value, kind) else default


def _concept_name(adapter: UnlearningAdapter, fallback: str) -> str:
    name = _meta(adapter, "concept", dict, {}).get("name")
    return name if isinstance(name, str) and name.strip() else fallback


def discover_adapters(pipe, adapters_dir: str | os.PathLike | None = None) -> dict[str, AdapterEntry]:
    """Adapters in ``adapters_dir`` (or the shipped and registered ones) that fit ``pipe.unet``.

    Files that do not load or were made for another UNet are skipped with a log line."""
    if adapters_dir is not None:
        files = {p.stem: p for p in sorted(Path(adapters_dir).glob("*.safetensors"))}
    else:
        files = known_adapters()
    found: dict[str, AdapterEntry] = {}
    for stem, path in files.items():
        try:
            adapter = UnlearningAdapter.load(path).resolve_kohya_names(pipe.unet)
            adapter.check_compatible(pipe.unet)
        except ConceptEraseError as e:
            logger.info("demo: skipping adapter %s: %s", stem, e)
            continue
        source = "shipped" if path.parent.resolve() == SHIPPED_ADAPTERS_DIR.resolve() else "registered"
        key = stem
        found[key] = AdapterEntry(key, stem if source == "shipped" else f"{stem} (registered)", adapter, source)
    return found


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} bytes"


def validate_upload(pipe, path: str | os.PathLike, *, filename: str | None = None,
                    max_bytes: int = MAX_UPLOAD_MB << 20) -> AdapterEntry:
    """Check an uploaded file: ``.safetensors`` name, size, safetensors content, fits ``pipe.unet``.

    Error messages name the file by ``filename`` (what the user uploaded), never by its server path."""
    path = Path(path)
    name = Path(filename or path.name).name
    if not name.lower().endswith(".safetensors"):
        raise AdapterFormatError(f"{name!r} is not a .safetensors file. The demo loads only safetensors adapters "
                                 "(pickled checkpoints can run code).")
    size = path.stat().st_size
    if size > max_bytes:
        raise AdapterFormatError(f"{name!r} is {_size(size)}, over the upload limit of {_size(max_bytes)}.")
    try:
        adapter = UnlearningAdapter.load(path).resolve_kohya_names(pipe.unet)
        adapter.check_compatible(pipe.unet)
    except ConceptEraseError as e:
        raise type(e)(str(e).replace(str(path), name)) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    stem = name[: -len(".safetensors")]
    return AdapterEntry(f"upload-{digest}", f"{_concept_name(adapter, stem)} (uploaded: {name})", adapter, "uploaded")


def describe_adapters(entries: Sequence[AdapterEntry]) -> str:
    """Markdown: concept, method, ranks and share of the UNet's parameters changed, per adapter."""
    if not entries:
        return "No adapter selected: both images come from the base model."
    lines = []
    for e in entries:
        a = e.adapter
        ranks = list(a.ranks.values())
        fraction = _meta(a, "trainable_fraction", (int, float))
        changed = f"{a.num_trainable:,} parameters changed" + (
            f" ({100 * fraction:.3f}% of the UNet)" if fraction is not None else "")
        description = _meta(a, "concept", dict, {}).get("description")
        description = f" — {description}" if isinstance(description, str) and description else ""
        lines.append(f"**{e.label}** erases *{_concept_name(a, '?')}*{description}  \n"
                     f"method {_meta(a, 'method', str, '?')} · {len(ranks)} layers, ranks {min(ranks)}–{max(ranks)} "
                     f"(Σ {sum(ranks)}) · {changed}")
    return "\n\n".join(line.replace("\r", " ") for line in lines)


def example_prompts(entries: Sequence[AdapterEntry], *, fallback: Sequence[Sequence[str]] = ()) -> list[list[str]]:
    """``[prompt, what it shows]`` rows: the erased concept, its synonyms or new phrasings, unrelated prompts."""
    rows: list[list[str]] = []
    for e in entries:
        c = _meta(e.adapter, "concept", dict, {})
        name = _concept_name(e.adapter, e.label)

        def pick(field: str, k: int) -> list[str]:
            items = [p for p in c.get(field, []) if isinstance(p, str)] if isinstance(c.get(field), list) else []
            return [items[i * len(items) // k] for i in range(min(k, len(items)))]

        rows += [[p, f"{name}: erased concept"] for p in pick("forget", 1)]
        rows += [[p, f"{name}: synonym / unseen phrasing"] for p in pick("paraphrases", 2)]
        rows += [[p, f"{name}: unrelated, should not change"] for p in pick("retain", 2)]
    rows = rows or [list(r) for r in fallback]
    seen: set[str] = set()
    return [r for r in rows if not (r[0] in seen or seen.add(r[0]))]


# ---------------------------------------------------------------- classifier verdicts
def classify(classifier, images: Sequence[Image.Image], targets: Sequence[dict]) -> list[str] | None:
    """One verdict line per image, or ``None`` where no classifier applies.

    ``classifier``: a :class:`~concept_erase.evaluation.classifiers.ConceptClassifier` (the world's,
    NudeNet, CLIP, ...), the world classifier model itself, or a callable ``(images, targets) ->
    list[str] | None``. ``targets`` are the selected adapters' concept targets (``{"colour": "red"}``)."""
    if classifier is None or not images:
        return None
    clf = concept_classifier(classifier)
    if clf is None:
        return classifier(images, targets)
    return clf.verdicts(list(images), [target_name(t) for t in targets])


# ---------------------------------------------------------------- generation
@dataclass
class Pair:
    """One seed's original and unlearned image (native size) and the classifier's verdicts."""

    seed: int
    original: Image.Image
    unlearned: Image.Image
    original_verdict: str | None = None
    unlearned_verdict: str | None = None


def _targets(adapters: Mapping[str, UnlearningAdapter]) -> list[dict]:
    targets = []
    for a in adapters.values():
        t = _meta(a, "concept", dict, {}).get("target")
        if isinstance(t, dict) and all(isinstance(v, str) for v in t.values()) and t not in targets:
            targets.append(t)
    return targets


def activate_adapters_(pipe, adapters: Mapping[str, UnlearningAdapter]) -> None:
    """Make ``adapters`` exactly the pipeline's loaded unlearning adapters (unload others, load new ones)."""
    for name in list(pipe.unlearning_adapters):
        if name not in adapters:
            pipe.unload_unlearning_adapter(name)
    for name, adapter in adapters.items():
        if name not in pipe.unlearning_adapters:
            pipe.load_unlearning_adapter(adapter, adapter_name=name, scale=0.0)


def generate_pairs(pipe, prompt: str, seeds: Sequence[int], *, adapters: Mapping[str, UnlearningAdapter] | None = None,
                   scale: float = 1.0, negative_prompt: str = "", num_inference_steps: int = 20,
                   guidance_scale: float = 5.0, classifier=None, lock=None) -> list[Pair]:
    """Original and unlearned images for each seed, from the same starting noise.

    ``adapters`` (name -> adapter) become exactly the pipeline's loaded unlearning adapters: others
    are unloaded. The original is drawn with every adapter at scale 0 (bit-identical to the bare
    pipeline), the unlearned one with every adapter at ``scale``. ``lock`` serialises a shared ``pipe``.

    >>> pair = generate_pairs(pipe, "a red circle", [0], adapters={"no-red": adapter})[0]  # doctest: +SKIP
    >>> pair.original.size, pair.unlearned_verdict                                          # doctest: +SKIP
    ((64, 64), 'classifier sees: **gray circle** · dark background — ✓ no red')
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPromptError(f"`prompt` must be a non-empty string, but is {prompt!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds or any(not 0 <= s < 2**63 for s in seeds):
        raise InvalidConfigError(f"`seeds` must hold at least one integer in [0, 2**63), but is {seeds!r}.")
    if int(num_inference_steps) != num_inference_steps or not 1 <= num_inference_steps <= 1000:
        raise InvalidConfigError(
            f"`num_inference_steps` must be an integer in [1, 1000], but is {num_inference_steps!r}.")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise InvalidConfigError(f"`guidance_scale` must be a finite number ≥ 0, but is {guidance_scale!r}.")
    if not math.isfinite(scale):
        raise InvalidConfigError(f"`scale` must be a finite number, but is {scale!r}.")
    adapters = dict(adapters or {})
    n = len(seeds)
    call = dict(num_inference_steps=int(num_inference_steps), guidance_scale=float(guidance_scale), batch_size=n,
                negative_prompt=[negative_prompt] * n if negative_prompt and negative_prompt.strip() else None)
    with lock if lock is not None else nullcontext():
        activate_adapters_(pipe, adapters)
        if adapters:
            pipe.set_unlearning_scale(0.0)
        originals = generate_images(pipe, [prompt] * n, seeds, **call)
        if adapters:
            pipe.set_unlearning_scale(float(scale))
            unlearned = generate_images(pipe, [prompt] * n, seeds, **call)
        else:
            unlearned = originals
    before, after = [to_pil(im) for im in originals], [to_pil(im) for im in unlearned]
    verdicts = classify(classifier, before + after, _targets(adapters)) or [None] * (2 * n)
    return [Pair(s, b, a, verdicts[i], verdicts[n + i]) for i, (s, b, a) in enumerate(zip(seeds, before, after))]


def generate_pair(pipe, prompt: str, seed: int, **kwargs) -> Pair:
    """:func:`generate_pairs` for one seed."""
    return generate_pairs(pipe, prompt, [seed], **kwargs)[0]
