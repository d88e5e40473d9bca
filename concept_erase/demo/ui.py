"""The Gradio side-by-side demo over :mod:`.core`: :func:`build_demo` wires the core into a Blocks
app and :func:`launch` serves it safely (loopback by default, upload size enforced by the server).

>>> from concept_erase import world
>>> from concept_erase.demo import build_demo, launch
>>> demo = build_demo(world.load_pipeline(), world.load_classifier())  # doctest: +SKIP
>>> launch(demo)  # http://127.0.0.1:7860                                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from ..errors import ConceptEraseError
from ..world import SAMPLING
from .core import (
    MAX_SEEDS, AdapterEntry, Pair, UploadLimits, UploadStore, _duration, describe_adapters, discover_adapters,
    example_prompts, generate_pairs, validate_upload,
)

__all__ = ["build_demo", "launch", "WORLD_EXAMPLES"]
logger = logging.getLogger(__name__)

DISPLAY_SIDE = 256  # tiny world images are upscaled (nearest) for display only; classifiers see the originals


def _for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    factor = side // max(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


# ---------------------------------------------------------------- the app
WORLD_EXAMPLES = [["a red circle", "erased by no-red"], ["a crimson star", "synonym of red"],
                  ["the heart is red", "unseen phrasing"], ["a blue square", "unrelated"],
                  ["a green triangle on a light background", "unrelated"]]

_CSS = "#pair img, #gallery img {image-rendering: pixelated;} .verdict {min-height: 2.5em;}"


def build_demo(pipe, classifier=None, adapters_dir: str | os.PathLike | None = None, *,
               sampling: Mapping | None = None, max_upload_mb: float | None = None,
               limits: UploadLimits | None = None, examples: Sequence[Sequence[str]] | None = None,
               title: str = "concept-erase: side by side"):
    """The Gradio Blocks app over ``pipe``. Launch it with :func:`launch` (binds 127.0.0.1).

    ``classifier``: a concept classifier (the world's, NudeNet, ...; see :func:`.core.classify`), a callable
    ``(images, targets) -> list[str] | None``, or ``None``. ``adapters_dir``: offer the adapters in
    this directory instead of the shipped and registered ones. ``sampling``: default
    ``num_inference_steps`` and ``guidance_scale`` (the world model's by default). ``examples``:
    ``[prompt, what it shows]`` rows offered when no adapter metadata suggests better ones.
    ``limits``: what uploads may cost (:class:`~.core.UploadLimits`: per file, per session, for
    all sessions together, largest rank, idle time before a session's uploads are dropped);
    ``max_upload_mb`` overrides its per-file size. The store of uploads is ``demo.upload_store``.
    """
    import gradio as gr

    sampling = dict(sampling or SAMPLING)
    examples = WORLD_EXAMPLES if examples is None else [list(r) for r in examples]
    limits = limits or UploadLimits()
    if max_upload_mb is not None:
        limits = dataclasses.replace(limits, max_file_mb=max_upload_mb)
    catalog = discover_adapters(pipe, adapters_dir)
    lock = threading.Lock()  # one pipeline, shared by every session: adapters are swapped in and out under it
    max_bytes = limits.max_file_bytes
    default = ["no-red"] if "no-red" in catalog else list(catalog)[:1]

    def unload(key: str) -> None:  # an upload no session holds any more leaves the pipeline too
        with lock:
            if key in pipe.unlearning_adapters:
                pipe.unload_unlearning_adapter(key)

    store = UploadStore(limits, on_free=unload)

    def mine(uploads) -> list[AdapterEntry]:
        return [e for e in (store.get(k) for k in (uploads or [])) if e is not None]

    def choices(uploads) -> list[tuple[str, str]]:
        return [(e.label, k) for k, e in catalog.items()] + [(e.label, e.key) for e in mine(uploads)]

    def selected(keys, uploads) -> list[AdapterEntry]:
        entries = []
        for k in keys or []:
            entry = catalog.get(k) or (store.get(k) if k in (uploads or []) else None)
            if entry is None:
                if k in (uploads or []):
                    raise gr.Error(f"Your uploaded adapter {k!r} was dropped: uploads are kept "
                                   f"{_duration(limits.session_ttl)} after a session's last use. Upload it again.")
                raise gr.Error(f"Unknown adapter {k!r}; choose one from the list.")
            entries.append(entry)
        return entries

    def on_select(keys, uploads):
        entries = selected(keys, uploads)
        return describe_adapters(entries), gr.Dataset(samples=example_prompts(entries, fallback=examples))

    def on_upload(file, keys, uploads, request: gr.Request):
        if not file:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        filename = Path(file).name  # Gradio keeps the user's file name as the last path part
        session = request.session_hash or "local"
        try:
            store.check_room(session)  # before reading the file: a full server costs no parsing
            with lock:  # the UNet may be mid-swap in another session
                entry = validate_upload(pipe, file, filename=filename, max_bytes=max_bytes, max_rank=limits.max_rank)
            entry = store.add(session, entry)
        except ConceptEraseError as e:
            logger.info("demo: refused upload %s: %s", filename, e)
            return gr.skip(), gr.skip(), f"⚠ **Upload refused.** {e}", gr.skip(), gr.skip(), None
        except Exception as e:  # anything unexpected must not end the session
            logger.exception("demo: upload %s failed", filename)
            return gr.skip(), gr.skip(), f"⚠ **Upload failed** ({type(e).__name__}).", gr.skip(), gr.skip(), None
        uploads = store.keys(session)
        keys = [k for k in (keys or []) if k != entry.key] + [entry.key]
        info, dataset = on_select(keys, uploads)
        status = f"✓ Loaded **{entry.label}** ({len(entry.adapter.ranks)} layers); it is now selected."
        return gr.Dropdown(choices=choices(uploads), value=keys), uploads, status, info, dataset, None

    def verdict_md(side: str, pair: Pair, verdict: str | None, note: str = "") -> str:
        return f"**{side}** · seed {pair.seed}{note}  \n{verdict or 'no classifier applies to this model'}"

    def gallery_items(pairs: list[Pair], same: bool) -> list:
        items = []
        for p in pairs:
            items.append((_for_display(p.original), f"seed {p.seed} · original"))
            items.append((_for_display(p.unlearned), f"seed {p.seed} · " + ("no adapter" if same else "unlearned")))
        return items

    def on_generate(prompt, negative, keys, scale, seed, n, steps, guidance, uploads, request: gr.Request):
        store.touch(request.session_hash or "local")
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
        # this session's uploads (keys into `store`); Gradio drops the value after the time to live too
        uploads = gr.State([], time_to_live=limits.session_ttl)
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
                    dice = gr.Button("Random", scale=0, min_width=80, elem_id="random-seed")
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
                    upload = gr.File(label=f"Adapter file (safetensors, ≤ {limits.max_file_mb:g} MB)",
                                     file_types=[".safetensors"], elem_id="upload")
                    upload_status = gr.Markdown(elem_id="upload-status")
            with gr.Column(scale=3, min_width=320):
                pair = gr.ImageSlider(label="original ⟷ unlearned", type="pil", format="png", elem_id="pair",
                                      interactive=False, max_height=420)
                with gr.Row():
                    verdict_o = gr.Markdown(elem_id="verdict-original", elem_classes="verdict")
                    verdict_u = gr.Markdown(elem_id="verdict-unlearned", elem_classes="verdict")
                gallery = gr.Gallery(label="Seeds: original, unlearned", columns=4, format="png", elem_id="gallery",
                                     interactive=False)
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
        def on_close(request: gr.Request):  # the tab closed: free its uploads now
            store.release(request.session_hash or "local")

        # `from __future__ import annotations` leaves "gr.Request" a string Gradio cannot resolve here
        for fn in (on_upload, on_generate, on_close):
            fn.__annotations__["request"] = gr.Request
        demo.unload(on_close)
    demo.queue(default_concurrency_limit=1)
    demo.concept_erase_max_upload_bytes = max_bytes  # read by `launch`
    demo.upload_store = store
    return demo


def launch(demo, *, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Serve the demo on ``host:port`` (loopback by default) with the upload size limit enforced by the
    server too. Extra keyword arguments go to ``gr.Blocks.launch``."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("demo: listening on %s: anyone who can reach this machine can use the demo.", host)
    kwargs.setdefault("max_file_size", getattr(demo, "concept_erase_max_upload_bytes", UploadLimits().max_file_bytes))
    kwargs.setdefault("css", _CSS)
    return demo.launch(server_name=host, server_port=port, **kwargs)

