"""The side-by-side demo: the same prompt and seed, original on one side, unlearned on the other.

The core runs without a browser: :func:`generate_pairs` draws original/unlearned pairs (the
original is the pipeline with every unlearning adapter at scale 0, which PEFT computes bit-exactly
like the bare model), :func:`discover_adapters` and :func:`validate_upload` find and check adapters.
:func:`build_demo` wires them into a Gradio Blocks app and :func:`launch` serves it safely.

>>> from concept_erase import world
>>> from concept_erase.demo_app import build_demo, launch
>>> demo = build_demo(world.load_pipeline(), world.load_classifier())  # doctest: +SKIP
>>> launch(demo)  # http://127.0.0.1:7860                                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from .adapter import UnlearningAdapter
from .errors import (
    AdapterFormatError, ConceptEraseError, InvalidConfigError, InvalidPromptError, MissingDependencyError,
)
from .loading import SHIPPED_ADAPTERS_DIR, known_adapters
from .sampling import generate

__all__ = ["AdapterEntry", "Pair", "discover_adapters", "validate_upload", "generate_pairs", "generate_pair",
           "describe_adapters", "example_prompts", "build_demo", "launch", "MAX_UPLOAD_MB", "MAX_SEEDS"]
logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 100  # a SEMU adapter for SD 1.x is a few MB; a large kohya LoRA is ~150 MB and is refused
MAX_SEEDS = 8  # images per click on 2 CPU cores stay within seconds on the world model
MAX_UPLOADS = 4  # per browser session: uploaded adapters live in the session's memory
DISPLAY_SIDE = 256  # tiny world images are upscaled (nearest) for display only; classifiers see the originals
_EXPOSED = ("BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
            "ANUS_EXPOSED", "FEET_EXPOSED", "ARMPITS_EXPOSED", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED")


# ---------------------------------------------------------------- adapters
@dataclass
class AdapterEntry:
    """An adapter the demo can activate. ``key`` doubles as the PEFT adapter name; no path is kept."""

    key: str
    label: str
    adapter: UnlearningAdapter
    source: str  # "shipped", "registered" or "uploaded"


def _safe_key(text: str) -> str:
    # PEFT keeps adapters in ModuleDicts, whose keys may not contain "."
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "adapter"


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
        key = _safe_key(stem)
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
    rows = ["| adapter | concept | method | layers · ranks | parameters changed |", "|---|---|---|---|---|"]
    for e in entries:
        a = e.adapter
        ranks = list(a.ranks.values())
        fraction = _meta(a, "trainable_fraction", (int, float))
        changed = f"{a.num_trainable:,}" + (f" ({100 * fraction:.3f}% of the UNet)" if fraction is not None else "")
        concept = _meta(a, "concept", dict, {})
        erased = _concept_name(a, "?")
        if isinstance(concept.get("description"), str) and concept["description"]:
            erased += f" — {concept['description']}"
        cells = [e.label, erased, str(_meta(a, "method", str, "?")),
                 f"{len(ranks)} · {min(ranks)}–{max(ranks)} (Σ {sum(ranks)})", changed]
        rows.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


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
class NudeNetVerdict:
    """NudeNet 3.4 as a demo classifier: exposed parts at score ≥ ``threshold`` (0.6, the table convention)."""

    target_key = "nudenet"

    def __init__(self, threshold: float = 0.6):
        try:
            from nudenet import NudeDetector
        except ModuleNotFoundError:
            raise MissingDependencyError("NudeNet verdicts need `pip install nudenet==3.4.2`.") from None
        self.detector, self.threshold = NudeDetector(), threshold

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[dict]) -> list[str] | None:
        if not any(self.target_key in t for t in targets):
            return None  # no nudity adapter selected: the classifier does not apply
        out = []
        for im in images:
            bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])  # NudeNet wants BGR arrays
            hits = [d for d in self.detector.detect(bgr) if d["class"] in _EXPOSED and d["score"] >= self.threshold]
            out.append("NudeNet: ⚠ exposed — " + ", ".join(f"{d['class'].lower()} {d['score']:.2f}" for d in hits)
                       if hits else f"NudeNet: ✓ nothing exposed (score ≥ {self.threshold})")
        return out


def _world_verdicts(classifier, images: Sequence[Image.Image], targets: Sequence[dict]) -> list[str]:
    out = []
    for p in classifier.predict(list(images)):
        text = f"classifier sees: **{p['colour']} {p['shape']}** · {p['background']} background"
        for t in targets:
            if t and set(t) <= set(p):
                label = " ".join(str(v) for v in t.values())
                text += f" — ⚠ {label} present" if all(p[k] == v for k, v in t.items()) else f" — ✓ no {label}"
        out.append(text)
    return out


def classify(classifier, images: Sequence[Image.Image], targets: Sequence[dict]) -> list[str] | None:
    """One verdict line per image, or ``None`` where no classifier applies.

    ``classifier``: the world classifier (its ``predict`` gives colour/shape/background), or a callable
    ``(images, targets) -> list[str] | None`` such as :class:`NudeNetVerdict`."""
    if classifier is None or not images:
        return None
    if hasattr(classifier, "predict") and hasattr(classifier, "heads"):
        return _world_verdicts(classifier, images, targets)
    return classifier(images, targets)


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


def _to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images]


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
        originals = generate(pipe, [prompt] * n, seeds, **call)
        if adapters:
            pipe.set_unlearning_scale(float(scale))
            unlearned = generate(pipe, [prompt] * n, seeds, **call)
        else:
            unlearned = originals
    before, after = _to_pil(originals), _to_pil(unlearned)
    verdicts = classify(classifier, before + after, _targets(adapters)) or [None] * (2 * n)
    return [Pair(s, b, a, verdicts[i], verdicts[n + i]) for i, (s, b, a) in enumerate(zip(seeds, before, after))]


def generate_pair(pipe, prompt: str, seed: int, **kwargs) -> Pair:
    """:func:`generate_pairs` for one seed."""
    return generate_pairs(pipe, prompt, [seed], **kwargs)[0]


def _for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    factor = side // max(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


# ---------------------------------------------------------------- the app
WORLD_EXAMPLES = [["a red circle", "erased by no-red"], ["a crimson star", "synonym of red"],
                  ["the heart is red", "unseen phrasing"], ["a blue square", "unrelated"],
                  ["a green triangle on a light background", "unrelated"]]

_CSS = "#pair img, #gallery img {image-rendering: pixelated;} .verdict {min-height: 2.5em;}"


def build_demo(pipe, classifier=None, adapters_dir: str | os.PathLike | None = None, *,
               sampling: Mapping | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
               examples: Sequence[Sequence[str]] | None = None, title: str = "concept-erase: side by side"):
    """The Gradio Blocks app over ``pipe``. Launch it with :func:`launch` (binds 127.0.0.1).

    ``classifier``: the world classifier, a :class:`NudeNetVerdict`, a callable
    ``(images, targets) -> list[str] | None``, or ``None``. ``adapters_dir``: offer the adapters in
    this directory instead of the shipped and registered ones. ``sampling``: default
    ``num_inference_steps`` and ``guidance_scale`` (the world model's by default). ``examples``:
    ``[prompt, what it shows]`` rows offered when no adapter metadata suggests better ones.
    """
    import gradio as gr

    from . import world

    sampling = dict(sampling or world.SAMPLING)
    examples = WORLD_EXAMPLES if examples is None else [list(r) for r in examples]
    catalog = discover_adapters(pipe, adapters_dir)
    lock = threading.Lock()  # one pipeline, shared by every session: adapters are swapped in and out under it
    max_bytes = int(max_upload_mb * 2**20)
    default = ["no-red"] if "no-red" in catalog else list(catalog)[:1]

    def choices(uploads: dict) -> list[tuple[str, str]]:
        return [(e.label, k) for k, e in catalog.items()] + [(e.label, k) for k, e in uploads.items()]

    def selected(keys, uploads: dict) -> list[AdapterEntry]:
        entries = []
        for k in keys or []:
            entry = catalog.get(k) or uploads.get(k)
            if entry is None:
                raise gr.Error(f"Unknown adapter {k!r}; choose one from the list.")
            entries.append(entry)
        return entries

    def on_select(keys, uploads):
        entries = selected(keys, uploads)
        return describe_adapters(entries), gr.Dataset(samples=example_prompts(entries, fallback=examples))

    def on_upload(file, keys, uploads):
        if not file:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        filename = Path(file).name  # Gradio keeps the user's file name as the last path part
        if len(uploads) >= MAX_UPLOADS:
            return (gr.skip(), gr.skip(), f"❌ **Upload refused.** This session already holds {MAX_UPLOADS} uploaded "
                    "adapters; reload the page to start a new session.", gr.skip(), gr.skip(), None)
        try:
            with lock:  # the UNet may be mid-swap in another session
                entry = validate_upload(pipe, file, filename=filename, max_bytes=max_bytes)
        except ConceptEraseError as e:
            logger.info("demo: refused upload %s: %s", filename, e)
            return gr.skip(), gr.skip(), f"❌ **Upload refused.** {e}", gr.skip(), gr.skip(), None
        except Exception as e:  # anything unexpected must not end the session
            logger.exception("demo: upload %s failed", filename)
            return gr.skip(), gr.skip(), f"❌ **Upload failed** ({type(e).__name__}).", gr.skip(), gr.skip(), None
        uploads = {**uploads, entry.key: entry}
        keys = [k for k in (keys or []) if k != entry.key] + [entry.key]
        info, dataset = on_select(keys, uploads)
        status = f"✅ Loaded **{entry.label}** ({len(entry.adapter.ranks)} layers); it is now selected."
        return gr.Dropdown(choices=choices(uploads), value=keys), uploads, status, info, dataset, None

    def verdict_md(side: str, pair: Pair, verdict: str | None, note: str = "") -> str:
        return f"**{side}** · seed {pair.seed}{note}  \n{verdict or 'no classifier applies to this model'}"

    def gallery_items(pairs: list[Pair], same: bool) -> list:
        items = []
        for p in pairs:
            items.append((_for_display(p.original), f"seed {p.seed} · original"))
            items.append((_for_display(p.unlearned), f"seed {p.seed} · " + ("no adapter" if same else "unlearned")))
        return items

    def on_generate(prompt, negative, keys, scale, seed, n, steps, guidance, uploads):
        entries = selected(keys, uploads)
        adapters = {e.key: e.adapter for e in entries}
        try:
            seed, n = int(seed if seed is not None else 0), max(1, min(int(n or 1), MAX_SEEDS))
            kw = dict(adapters=adapters, scale=float(scale), negative_prompt=negative or "",
                      num_inference_steps=int(steps), guidance_scale=float(guidance), classifier=classifier, lock=lock)
            pairs = generate_pairs(pipe, prompt, [seed], **kw)  # the first pair, shown as soon as it is ready
            note = "" if adapters else " (no adapter selected)"
            first = pairs[0]
            outputs = lambda ps: ((_for_display(first.original), _for_display(first.unlearned)),  # noqa: E731
                                  verdict_md("Original", first, first.original_verdict),
                                  verdict_md(f"Unlearned × {float(scale):g}", first, first.unlearned_verdict, note),
                                  gallery_items(ps, not adapters))
            yield outputs(pairs)
            if n > 1:
                pairs += generate_pairs(pipe, prompt, range(seed + 1, seed + n), **kw)
                yield outputs(pairs)
        except ConceptEraseError as e:
            raise gr.Error(str(e)) from None

    # uploaded files are deleted from Gradio's cache after an hour (checked every hour)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        uploads = gr.State({})
        gr.Markdown(f"# {title}\nThe same prompt and seed through the base model (**original**) and with the "
                    "selected unlearning adapters (**unlearned**). Drag the slider to compare.")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", value=(examples[0][0] if examples else ""), max_lines=2,
                                    elem_id="prompt")
                adapter_box = gr.Dropdown(choices=choices({}), value=default, multiselect=True,
                                          label="Unlearning adapters (several can be active)", elem_id="adapters")
                scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Erasure scale", elem_id="scale")
                with gr.Row(equal_height=True):
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed", scale=2)
                    dice = gr.Button("🎲", scale=0, min_width=48, elem_id="random-seed")
                    n_seeds = gr.Slider(1, MAX_SEEDS, value=4, step=1, label="Seeds in the gallery", scale=3)
                with gr.Accordion("Sampling", open=False):
                    negative = gr.Textbox(label="Negative prompt", max_lines=2)
                    steps = gr.Slider(1, 100, value=sampling["num_inference_steps"], step=1, label="Steps")
                    guidance = gr.Slider(0.0, 20.0, value=sampling["guidance_scale"], step=0.5, label="Guidance")
                generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                example_set = gr.Dataset(components=["textbox", "textbox"], headers=["prompt", "what it shows"],
                                         samples=example_prompts([catalog[k] for k in default], fallback=examples),
                                         label="Example prompts", layout="table", elem_id="examples")
                with gr.Accordion("Upload an adapter (.safetensors)", open=False, elem_id="upload-accordion"):
                    upload = gr.File(label=f"Adapter file (safetensors, ≤ {max_upload_mb:g} MB)",
                                     file_types=[".safetensors"], elem_id="upload")
                    upload_status = gr.Markdown(elem_id="upload-status")
            with gr.Column(scale=3, min_width=320):
                pair = gr.ImageSlider(label="original ⟷ unlearned", type="pil", format="png", elem_id="pair",
                                      interactive=False, max_height=420)
                with gr.Row():
                    verdict_o = gr.Markdown(elem_id="verdict-original", elem_classes="verdict")
                    verdict_u = gr.Markdown(elem_id="verdict-unlearned", elem_classes="verdict")
                gallery = gr.Gallery(label="Seeds: original, unlearned", columns=4, format="png", elem_id="gallery",
                                     height="auto", interactive=False)
                info = gr.Markdown(describe_adapters([catalog[k] for k in default]), elem_id="adapter-info")

        gen_inputs = [prompt, negative, adapter_box, scale, seed, n_seeds, steps, guidance, uploads]
        gen_outputs = [pair, verdict_o, verdict_u, gallery]
        generate_btn.click(on_generate, gen_inputs, gen_outputs, api_name="generate")
        prompt.submit(on_generate, gen_inputs, gen_outputs, api_name=False)
        adapter_box.change(on_select, [adapter_box, uploads], [info, example_set], api_name=False)
        example_set.click(lambda row: row[0], example_set, prompt, api_name=False)
        dice.click(lambda: random.randrange(2**32), None, seed, api_name=False)
        upload.upload(on_upload, [upload, adapter_box, uploads],
                      [adapter_box, uploads, upload_status, info, example_set, upload], api_name="upload_adapter")
    demo.queue(default_concurrency_limit=1)
    demo.concept_erase_max_upload_bytes = max_bytes  # read by `launch`
    return demo


def launch(demo, *, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Serve the demo on ``host:port`` (loopback by default) with the upload size limit enforced by the
    server too. Extra keyword arguments go to ``gr.Blocks.launch``."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("demo: listening on %s: anyone who can reach this machine can use the demo.", host)
    kwargs.setdefault("max_file_size", getattr(demo, "concept_erase_max_upload_bytes", MAX_UPLOAD_MB << 20))
    kwargs.setdefault("css", _CSS)
    return demo.launch(server_name=host, server_port=port, **kwargs)

