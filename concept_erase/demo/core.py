"""The demo's core, without a browser: the same prompt and seed, original and unlearned.

:func:`generate_pairs` draws original/unlearned pairs (the original is the pipeline with every
unlearning adapter at scale 0, which PEFT computes bit-exactly like the bare model);
:func:`discover_adapters` and :func:`validate_upload` find and check adapters; :func:`classify`
gives each image the verdict of a concept classifier (the evaluation's
:class:`~concept_erase.evaluation.classifiers.ConceptClassifier`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from ..adapter import UnlearningAdapter
from ..diffusion import generate_images
from ..errors import AdapterFormatError, ConceptEraseError, InvalidConfigError, InvalidPromptError
from ..evaluation.classifiers import concept_classifier
from ..evaluation.generate import file_sha256
from ..evaluation.prompts import target_name
from ..images import to_pil
from ..loading import SHIPPED_ADAPTERS_DIR, known_adapters

__all__ = ["AdapterEntry", "Pair", "discover_adapters", "validate_upload", "generate_pairs", "generate_pair",
           "describe_adapters", "example_prompts", "classify", "activate_adapters_", "UploadLimits", "UploadStore",
           "UploadRefused", "MAX_UPLOAD_MB", "MAX_SEEDS", "MAX_UPLOADS"]
logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 100  # a SEMU adapter for SD 1.x is a few MB; a large kohya LoRA is ~150 MB and is refused
MAX_SEEDS = 8  # images per click on 2 CPU cores stay within seconds on the world model
MAX_UPLOADS = 4  # per browser session


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
        files = {p.stem: p for p in sorted(Path(adapters_dir).glob("*.safetensors")) if not p.name.startswith(".")}
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


def _duration(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} bytes"


def validate_upload(pipe, path: str | os.PathLike, *, filename: str | None = None,
                    max_bytes: int = MAX_UPLOAD_MB << 20, max_rank: int | None = None) -> AdapterEntry:
    """Check an uploaded file: ``.safetensors`` name, size, safetensors content, fits ``pipe.unet``,
    ranks at most ``min(out, in)`` of each layer and at most ``max_rank`` (a generation costs in
    proportion to the rank).

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
    top = max(adapter.ranks.values())
    if max_rank is not None and top > max_rank:
        raise AdapterFormatError(f"{name!r} has layers of rank up to {top}; this demo accepts ranks up to {max_rank}.")
    digest = file_sha256(path)[:10]
    stem = name[: -len(".safetensors")]
    return AdapterEntry(f"upload-{digest}", f"{_concept_name(adapter, stem)} (uploaded: {name})", adapter, "uploaded")


# ---------------------------------------------------------------- the server's uploads, bounded
class UploadRefused(ConceptEraseError, MemoryError):
    """An upload would exceed the demo's per-session or server-wide budget."""


@dataclass(frozen=True)
class UploadLimits:
    """What uploads may cost a demo server: per file, per session, and for every session together.

    Uploaded adapters live in the server's memory until their session ends: the browser tab closes,
    or the session is idle for ``session_ttl`` seconds. The defaults bound a public server's memory
    for uploads to ``max_total_mb`` plus one upload being checked."""

    max_file_mb: float = MAX_UPLOAD_MB
    max_per_session: int = MAX_UPLOADS
    max_total_mb: float = 400.0
    max_total: int = 16
    max_rank: int | None = 1024  # SEMU at γ = 1 on SD 1.x cross-attention: up to 768
    session_ttl: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("max_file_mb", "max_total_mb", "session_ttl"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InvalidConfigError(f"`{name}` must be a finite positive number, but is {value!r}.")
        for name in ("max_per_session", "max_total") + (("max_rank",) if self.max_rank is not None else ()):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidConfigError(f"`{name}` must be a positive integer, but is {value!r}.")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_mb * 2**20)


def _nbytes(adapter: UnlearningAdapter) -> int:
    return sum(t.numel() * t.element_size() for t in adapter.tensors.values())


def _trim_memory() -> None:
    """Give freed heap pages back to the operating system (glibc keeps them otherwise); best effort."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


class UploadStore:
    """Uploaded adapters of every session of one server, within :class:`UploadLimits`.

    Sessions are named by an id (Gradio's ``session_hash``); the same file uploaded by two sessions
    is held once. :meth:`release` (a session ended) and :meth:`expire` (idle sessions, run by a
    background thread every few seconds) drop a session's uploads; an upload no session holds is
    freed, and ``on_free(key)`` is called for it (the demo unloads it from the pipeline)."""

    def __init__(self, limits: UploadLimits | None = None, *, on_free=None, sweep_every: float | None = None,
                 clock=time.monotonic):
        self.limits = limits or UploadLimits()
        self._on_free = on_free
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, tuple[AdapterEntry, int]] = {}  # key -> (entry, bytes)
        self._sessions: dict[str, tuple[list[str], float]] = {}  # session -> (keys, last activity)
        self._stop = threading.Event()
        if sweep_every is None:
            sweep_every = max(1.0, min(30.0, self.limits.session_ttl / 4))
        if sweep_every > 0:
            threading.Thread(target=self._sweep, args=(sweep_every,), name="concept-erase-uploads",
                             daemon=True).start()

    # ----- usage
    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self, session: str) -> list[str]:
        with self._lock:
            return list(self._sessions.get(session, ([], 0.0))[0])

    def get(self, key: str) -> AdapterEntry | None:
        with self._lock:
            item = self._entries.get(key)
            return item[0] if item else None

    # ----- changes
    def check_room(self, session: str) -> None:
        """Raise :class:`UploadRefused` if ``session`` may not upload another adapter (cheap, before validation)."""
        self.expire()  # outside the lock: freeing calls `on_free`, which may wait for the pipeline
        with self._lock:
            self._check_room(session)

    def _check_room(self, session: str, key: str | None = None) -> None:
        with self._lock:
            held = self._sessions.get(session, ([], 0.0))[0]
            if key in held:
                return  # already held by this session: costs nothing
            if len(held) >= self.limits.max_per_session:
                raise UploadRefused(f"This session already holds {self.limits.max_per_session} uploaded adapters; "
                                    "reload the page to start a new session.")
            if key not in self._entries and len(self._entries) >= self.limits.max_total:
                raise UploadRefused(f"The server already holds {len(self._entries)} uploaded adapters from all "
                                    f"sessions, its limit; try again in a while (uploads are dropped "
                                    f"{_duration(self.limits.session_ttl)} after their session goes idle).")

    def add(self, session: str, entry: AdapterEntry) -> AdapterEntry:
        """Hold ``entry`` for ``session``, or raise :class:`UploadRefused` (nothing is kept then)."""
        size = _nbytes(entry.adapter)
        self.expire()
        with self._lock:
            self._check_room(session, entry.key)
            held, _ = self._sessions.get(session, ([], 0.0))
            if entry.key in self._entries:  # the same file again: held once, shared
                entry = self._entries[entry.key][0]
            else:
                used = self.total_bytes
                if used + size > self.limits.max_total_bytes:
                    raise UploadRefused(
                        f"The server's memory for uploaded adapters is in use ({_size(used)} of "
                        f"{_size(self.limits.max_total_bytes)}, {len(self._entries)} adapters from all sessions); "
                        f"this one needs {_size(size)}. Try again in a while, or use a smaller adapter.")
                self._entries[entry.key] = (entry, size)
            if entry.key not in held:
                held = held + [entry.key]
            self._sessions[session] = (held, self._clock())
        return entry

    def touch(self, session: str) -> None:
        """Mark ``session`` active (its uploads' time to live starts again)."""
        with self._lock:
            if session in self._sessions:
                self._sessions[session] = (self._sessions[session][0], self._clock())

    def release(self, session: str) -> list[str]:
        """Drop ``session``'s uploads; returns the keys freed (held by no other session)."""
        with self._lock:
            held, _ = self._sessions.pop(session, ([], 0.0))
            still = {k for keys, _ in self._sessions.values() for k in keys}
            freed = [k for k in held if k not in still and k in self._entries]
            for k in freed:
                del self._entries[k]
        for k in freed:
            if self._on_free is not None:
                try:
                    self._on_free(k)
                except Exception:  # noqa: BLE001 - a failed unload must not keep the memory
                    logger.exception("demo: could not unload freed upload %s", k)
        if freed:
            _trim_memory()
            logger.info("demo: session ended, %d uploaded adapter(s) freed", len(freed))
        return freed

    def expire(self) -> list[str]:
        """Release every session idle for longer than the time to live; returns the keys freed."""
        now = self._clock()
        with self._lock:
            idle = [s for s, (_, t) in self._sessions.items() if now - t > self.limits.session_ttl]
        return [k for s in idle for k in self.release(s)]

    def close(self) -> None:
        """Stop the background sweep and free everything."""
        self._stop.set()
        for s in list(self._sessions):
            self.release(s)

    def _sweep(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.expire()
            except Exception:  # noqa: BLE001 - the sweeper must outlive one bad release
                logger.exception("demo: expiring uploads failed")


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
