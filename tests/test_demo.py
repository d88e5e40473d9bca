"""The side-by-side demo without a browser: the generate function called directly, upload
validation, and the app launched headless and driven with ``gradio_client``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import concept_erase
from concept_erase import Concept, UnlearningAdapter
from concept_erase.demo import (
    build_demo, describe_adapters, discover_adapters, example_prompts, generate_pair, generate_pairs, launch,
    validate_upload,
)
from concept_erase.errors import AdapterFormatError, ArchitectureMismatchError, InvalidConfigError, InvalidPromptError

from .conftest import build_tiny_pipeline

FAST = {"num_inference_steps": 3, "guidance_scale": 4.0}
RED = Concept(name="no-red", forget=["a red circle", "a red star"], anchor="a gray circle",
              retain=["a blue star", "a green square", "a yellow heart"],
              paraphrases=["a crimson circle", "the star is red"], target={"colour": "red"})


def make_adapter(unet, *, seed: int = 0, rank: int = 2, widen: int = 0, concept: Concept = RED) -> UnlearningAdapter:
    """A seeded random adapter on every cross-attention value projection, with SEMU-like metadata.

    ``widen`` > 0 gives lora_A the wrong input width: an adapter "made for another UNet"."""
    g = torch.Generator().manual_seed(seed)
    tensors, ranks = {}, {}
    for name, m in unet.named_modules():
        m = getattr(m, "base_layer", m)  # the UNet may hold PEFT-wrapped layers from an earlier test
        if isinstance(m, torch.nn.Linear) and name.endswith("attn2.to_v"):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, m.in_features + widen, generator=g) * 0.5
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.5
            ranks[name] = rank
    unet_params = sum(p.numel() for p in unet.parameters())
    trainable = rank * rank * len(ranks)
    meta = {"method": "semu", "concept": concept.to_dict(), "ranks": ranks, "trainable_parameters": trainable,
            "trainable_fraction": trainable / unet_params, "base_model": "/somewhere/private/model"}
    return UnlearningAdapter(tensors, meta)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, pipe):
    d = tmp_path_factory.mktemp("demo-adapters")
    make_adapter(pipe.unet).save(d / "no-red.safetensors")
    make_adapter(pipe.unet, widen=3).save(d / "other-model.safetensors")  # must not be offered
    (d / "broken.safetensors").write_bytes(b"not a tensor file")  # must not be offered either
    return d


def _arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


# ---------------------------------------------------------------- generate_pairs, called directly
def test_identical_seeds_give_identical_originals_bit_exact_with_the_bare_model(pipe):
    adapter = make_adapter(pipe.unet)
    bare = generate_pair(pipe, "a red circle", 7, **FAST)
    with_adapter = generate_pair(pipe, "a red circle", 7, adapters={"no-red": adapter}, **FAST)
    again = generate_pair(pipe, "a red circle", 7, adapters={"no-red": adapter}, **FAST)
    # scale 0 through PEFT is the bare model, bit for bit
    assert np.array_equal(_arr(bare.original), _arr(with_adapter.original))
    assert np.array_equal(_arr(with_adapter.original), _arr(again.original))
    assert np.array_equal(_arr(with_adapter.unlearned), _arr(again.unlearned))
    assert np.array_equal(_arr(bare.original), _arr(bare.unlearned))  # no adapter: both sides the same
    assert np.abs(_arr(with_adapter.unlearned) - _arr(with_adapter.original)).mean() > 1e-3
    assert pipe.unlearning_adapters == {"no-red": 1.0}
    other_seed = generate_pair(pipe, "a red circle", 8, **FAST)
    assert not np.array_equal(_arr(bare.original), _arr(other_seed.original))


def test_pairs_are_batch_invariant_and_adapters_are_swapped_exactly(pipe):
    a, b = make_adapter(pipe.unet, seed=1), make_adapter(pipe.unet, seed=2)
    together = generate_pairs(pipe, "a blue star", [3, 4, 5], adapters={"a": a, "b": b}, scale=0.5, **FAST)
    assert pipe.unlearning_adapters == {"a": 0.5, "b": 0.5}
    alone = generate_pair(pipe, "a blue star", 4, adapters={"a": a, "b": b}, scale=0.5, **FAST)
    assert [p.seed for p in together] == [3, 4, 5]
    assert np.array_equal(_arr(together[1].unlearned), _arr(alone.unlearned))
    only_a = generate_pair(pipe, "a blue star", 4, adapters={"a": a}, scale=0.5, **FAST)
    assert pipe.unlearning_adapters == {"a": 0.5}
    assert not np.array_equal(_arr(only_a.unlearned), _arr(alone.unlearned))
    generate_pair(pipe, "a blue star", 4, **FAST)
    assert pipe.unlearning_adapters == {}
    assert not any("lora" in k for k in pipe.unet.state_dict())  # PEFT's wrappers are gone too


def test_classifier_verdicts_name_the_concept(pipe):
    from concept_erase.world.models import WorldClassifier

    clf = WorldClassifier().eval()  # untrained: only the plumbing is checked here
    pair = generate_pair(pipe, "a red circle", 0, adapters={"no-red": make_adapter(pipe.unet)}, classifier=clf, **FAST)
    for verdict in (pair.original_verdict, pair.unlearned_verdict):
        assert verdict.startswith("classifier sees: **")
        assert ("⚠ red present" in verdict) != ("✓ no red" in verdict)
    assert generate_pair(pipe, "a red circle", 0, **FAST).original_verdict is None  # no classifier
    calls = []
    custom = lambda images, targets: calls.append((len(images), targets)) or None  # noqa: E731
    generate_pairs(pipe, "a red circle", [0, 1], adapters={"no-red": make_adapter(pipe.unet)}, classifier=custom,
                   **FAST)
    assert calls == [(4, [{"colour": "red"}])]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prompt": "  "}, InvalidPromptError, "`prompt` must be a non-empty string, but is '  '"),
    ({"seeds": [-1]}, InvalidConfigError, r"`seeds` must hold .* but is \[-1\]"),
    ({"seeds": []}, InvalidConfigError, "`seeds` must hold at least one"),
    ({"num_inference_steps": 0}, InvalidConfigError,
     r"`num_inference_steps` must be an integer in \[1, 1000\], but is 0"),
    ({"guidance_scale": float("nan")}, InvalidConfigError, "`guidance_scale` must be a finite number"),
    ({"scale": float("inf")}, InvalidConfigError, "`scale` must be a finite number, but is inf"),
])
def test_bad_inputs_are_refused(pipe, kwargs, error, message):
    call = {"prompt": "a red circle", "seeds": [0], **FAST, **kwargs}
    with pytest.raises(error, match=message):
        generate_pairs(pipe, call.pop("prompt"), call.pop("seeds"), **call)


# ---------------------------------------------------------------- adapters and uploads
def test_discovery_offers_only_adapters_that_fit(pipe, adapter_dir):
    found = discover_adapters(pipe, adapter_dir)
    assert list(found) == ["no-red"] and found["no-red"].source == "registered"
    info = describe_adapters(list(found.values()))
    assert info.startswith("**no-red (registered)** erases *no-red*  \nmethod semu · 7 layers, ranks 2–2 (Σ 14) · "
                           "28 parameters changed (0.0"), info
    assert info.endswith("% of the UNet)")
    assert "/somewhere/private" not in info  # no server path in the page
    assert describe_adapters([]).startswith("No adapter selected")


def test_example_prompts_show_the_concept_its_synonyms_and_unrelated_prompts(pipe, tmp_path):
    entry = validate_upload(pipe, make_adapter(pipe.unet).save(tmp_path / "x.safetensors"))
    assert example_prompts([entry]) == [["a red circle", "no-red: erased concept"],
                                        ["a crimson circle", "no-red: synonym / unseen phrasing"],
                                        ["the star is red", "no-red: synonym / unseen phrasing"],
                                        ["a blue star", "no-red: unrelated, should not change"],
                                        ["a green square", "no-red: unrelated, should not change"]]
    assert example_prompts([], fallback=[["a cat", "any"]]) == [["a cat", "any"]]


def test_upload_validation(pipe, tmp_path):
    good = make_adapter(pipe.unet).save(tmp_path / "mine.safetensors")
    entry = validate_upload(pipe, good, filename="mine.safetensors")
    assert entry.key.startswith("upload-") and entry.label == "no-red (uploaded: mine.safetensors)"
    assert validate_upload(pipe, good).key == entry.key  # same bytes, same key: re-uploading is idempotent

    pickled = tmp_path / "abc123" / "evil.safetensors"
    pickled.parent.mkdir()
    torch.save({"unet.x.lora_A.weight": torch.zeros(1)}, pickled)
    with pytest.raises(AdapterFormatError, match="looks like a pickled PyTorch checkpoint") as e:
        validate_upload(pipe, pickled, filename="evil.safetensors")
    assert str(tmp_path) not in str(e.value) and "'evil.safetensors'" in str(e.value)

    with pytest.raises(AdapterFormatError, match=r"'model\.pt' is not a \.safetensors file"):
        validate_upload(pipe, good, filename="model.pt")
    with pytest.raises(AdapterFormatError, match=r"'mine\.safetensors' is \d+\.\d KiB, over the upload limit of 100 b"):
        validate_upload(pipe, good, max_bytes=100)
    other = make_adapter(pipe.unet, widen=3).save(tmp_path / "other.safetensors")
    with pytest.raises(ArchitectureMismatchError, match="made for another UNet"):
        validate_upload(pipe, other)


# ---------------------------------------------------------------- the app, headless, via gradio_client
def close_when_idle(demo, timeout: float = 300) -> None:
    """Close a launched demo once no event is running: a Python process that exits while a server
    thread is inside a torch op can abort ("terminate called without an active exception")."""
    import time

    deadline = time.monotonic() + timeout
    while any(job is not None for job in getattr(demo._queue, "active_jobs", [])) and time.monotonic() < deadline:
        time.sleep(0.1)
    demo.close(verbose=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(adapter_dir):
    """The demo on the tiny pipeline, served on a free loopback port; yields its URL."""
    from concept_erase.world.models import WorldClassifier

    demo = build_demo(build_tiny_pipeline(), WorldClassifier().eval(), adapter_dir, sampling=FAST)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    assert demo.max_file_size == 100 * 2**20  # the server refuses bigger uploads before our code sees them
    yield url.rstrip("/")
    close_when_idle(demo)


def test_app_generates_a_pair_and_a_gallery(served):
    from gradio_client import Client
    from PIL import Image

    client = Client(served, verbose=False)
    pair, verdict_o, verdict_u, gallery = client.predict(
        "a red circle", "", ["no-red"], 1.0, 5, 3, 3, 4.0, api_name="/generate")
    before, after = (Image.open(p) for p in pair)
    assert before.size == after.size == (256, 256)  # 32x32 upscaled for display
    assert not np.array_equal(np.asarray(before), np.asarray(after))
    assert verdict_o.startswith("**Original** · seed 5") and "classifier sees" in verdict_o
    assert verdict_u.startswith("**Unlearned × 1** · seed 5")
    assert [g["caption"] for g in gallery] == [f"seed {s} · {k}" for s in (5, 6, 7) for k in ("original", "unlearned")]
    # the same seed through the app gives the same original
    pair2, *_ = client.predict("a red circle", "", [], 1.0, 5, 1, 3, 4.0, api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(pair2[0])), np.asarray(before))
    assert np.array_equal(np.asarray(Image.open(pair2[1])), np.asarray(before))  # no adapter: both sides equal


def test_app_upload_good_and_bad_files_and_the_session_keeps_working(served, adapter_dir, tmp_path, pipe):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    bad = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, bad)
    dropdown, status, *_ = client.predict(handle_file(str(bad)), ["no-red"], api_name="/upload_adapter")
    assert status.startswith("⚠ **Upload refused.**") and "pickled PyTorch checkpoint" in status
    assert "/tmp" not in status and str(tmp_path) not in status  # names the file, never a server path
    other = make_adapter(pipe.unet, widen=3).save(tmp_path / "other.safetensors")
    _, status, *_ = client.predict(handle_file(str(other)), ["no-red"], api_name="/upload_adapter")
    assert "made for another UNet" in status

    good = make_adapter(pipe.unet, seed=5).save(tmp_path / "mine.safetensors")
    dropdown, status, info, examples, file_out = client.predict(handle_file(str(good)), ["no-red"],
                                                                api_name="/upload_adapter")
    assert status.startswith("✓ Loaded **no-red (uploaded: mine.safetensors)**")
    key = dropdown["value"][-1]
    assert dropdown["value"] == ["no-red", key] and key.startswith("upload-")
    assert "no-red (uploaded: mine.safetensors)" in info
    pair, *_ = client.predict("a red circle", "", ["no-red", key], 1.0, 0, 1, 3, 4.0, api_name="/generate")
    assert len(pair) == 2
    with pytest.raises(Exception, match="no-such-adapter|not in the list of choices|Unknown adapter"):
        client.predict("a red circle", "", ["no-such-adapter"], 1.0, 0, 1, 3, 4.0, api_name="/generate")

    from concept_erase.demo import MAX_UPLOADS

    for i in range(1, MAX_UPLOADS + 1):  # a session's uploads are bounded (they live in server memory)
        more = make_adapter(pipe.unet, seed=10 + i).save(tmp_path / f"more{i}.safetensors")
        _, status, *_ = client.predict(handle_file(str(more)), [], api_name="/upload_adapter")
        assert status.startswith("✓" if i < MAX_UPLOADS else "⚠"), status
    assert f"already holds {MAX_UPLOADS} uploaded adapters" in status


def test_upload_store_bounds_bytes_count_sessions_and_idle_time(pipe):
    from concept_erase.demo import AdapterEntry, UploadLimits, UploadRefused, UploadStore

    now = [0.0]
    freed = []
    a = make_adapter(pipe.unet, seed=1)
    size = sum(t.numel() * t.element_size() for t in a.tensors.values())
    limits = UploadLimits(max_total_mb=2.5 * size / 2**20, max_total=3, max_per_session=2, session_ttl=60)
    store = UploadStore(limits, on_free=freed.append, sweep_every=0, clock=lambda: now[0])

    def entry(i):
        return AdapterEntry(f"upload-{i}", f"#{i}", make_adapter(pipe.unet, seed=i), "uploaded")

    store.add("s1", entry(1))
    store.add("s2", entry(1))  # the same file: held once, shared
    store.add("s1", entry(2))
    assert len(store) == 2 and store.total_bytes == 2 * size
    with pytest.raises(UploadRefused, match="already holds 2 uploaded adapters"):
        store.add("s1", entry(3))
    with pytest.raises(UploadRefused, match="memory for uploaded adapters is in use"):
        store.add("s2", entry(3))  # a third would pass the byte budget (2.5 adapters)
    assert len(store) == 2 and store.keys("s2") == ["upload-1"]
    now[0] = 30.0
    store.touch("s2")
    now[0] = 61.0
    assert store.expire() == ["upload-2"]  # s1 idle > 60 s: its own upload goes; upload-1 is still s2's
    assert freed == ["upload-2"] and store.total_bytes == size
    assert store.release("s2") == ["upload-1"] and len(store) == 0 and store.total_bytes == 0
    for bad in (dict(max_total_mb=0), dict(max_total=0), dict(session_ttl=float("inf")), dict(max_rank=1.5)):
        with pytest.raises(InvalidConfigError):
            UploadLimits(**bad)


def test_app_upload_budget_is_server_wide_and_expires(adapter_dir, tmp_path, pipe):
    import time

    from gradio_client import Client, handle_file

    from concept_erase.demo import UploadLimits
    from concept_erase.world.models import WorldClassifier

    app_pipe = build_tiny_pipeline()
    limits = UploadLimits(max_total=2, max_rank=4, session_ttl=2.0)
    demo = build_demo(app_pipe, WorldClassifier().eval(), adapter_dir, sampling=FAST, limits=limits)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        files = [make_adapter(pipe.unet, seed=20 + i).save(tmp_path / f"u{i}.safetensors") for i in range(3)]
        wide = make_adapter(pipe.unet, seed=30, rank=5).save(tmp_path / "wide.safetensors")
        _, status, *_ = Client(url, verbose=False).predict(handle_file(str(wide)), [], api_name="/upload_adapter")
        assert "accepts ranks up to 4" in status
        statuses = []
        for i, path in enumerate(files):  # three sessions, one upload each
            client = Client(url, verbose=False)
            _, status, *_ = client.predict(handle_file(str(path)), [], api_name="/upload_adapter")
            statuses.append(status)
            if i == 0:
                key = f"upload-{__import__('hashlib').sha256(path.read_bytes()).hexdigest()[:10]}"
                client.predict("a red circle", "", [key], 1.0, 0, 1, 3, 4.0, api_name="/generate")
        assert statuses[0].startswith("✓") and statuses[1].startswith("✓"), statuses
        assert "server already holds 2 uploaded adapters" in statuses[2] and "2 s after" in statuses[2]
        store = demo.upload_store
        assert len(store) == 2 and key in app_pipe.unlearning_adapters  # the last generation left it loaded
        deadline = time.monotonic() + 15
        while len(store) and time.monotonic() < deadline:  # idle sessions expire (2 s), swept every second
            time.sleep(0.2)
        assert len(store) == 0 and store.total_bytes == 0
        assert key not in app_pipe.unlearning_adapters  # freed uploads leave the pipeline too
        _, status, *_ = Client(url, verbose=False).predict(handle_file(str(files[2])), [], api_name="/upload_adapter")
        assert status.startswith("✓"), status
    finally:
        close_when_idle(demo)
        demo.upload_store.close()


def test_app_serves_no_server_files(served, adapter_dir):
    from gradio_client import Client

    # control: the image the app just made is served from Gradio's cache...
    pair, *_ = Client(served, verbose=False, download_files=False).predict(
        "a red circle", "", [], 1.0, 0, 1, 3, 4.0, api_name="/generate")
    assert urllib.request.urlopen(pair[0]["url"], timeout=10).status == 200
    # ...but nothing else on the server is
    for path in ("/etc/passwd", str(adapter_dir / "no-red.safetensors"), concept_erase.__file__):
        for route in ("/gradio_api/file=", "/file="):
            try:
                status = urllib.request.urlopen(served + route + path, timeout=10).status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status in (403, 404), (route, path, status)


def test_cli_demo_defaults_to_loopback():
    from concept_erase.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert (args.base, args.host, args.port, args.func.__name__) == ("world", "127.0.0.1", None, "cmd_demo")
    args = build_parser().parse_args(["demo", "--base", "some/dir", "--host", "0.0.0.0", "--port", "8000"])
    assert (args.base, args.host, args.port) == ("some/dir", "0.0.0.0", 8000)


# ---------------------------------------------------------------- the trained world + shipped no-red
@pytest.mark.slow
def test_no_red_changes_red_prompts_and_leaves_unrelated_ones_nearly_unchanged():
    from concept_erase import world
    from concept_erase.loading import known_adapters

    try:
        world.pipeline_dir()
        path = known_adapters()["no-red"]
    except (concept_erase.WeightsNotFoundError, KeyError):
        pytest.skip("the trained world model or the shipped no-red adapter is not in concept_erase/ yet")
    pipe, clf = world.load_pipeline(), world.load_classifier()
    adapters = {"no-red": UnlearningAdapter.load(path)}
    seeds = [0, 1, 2, 3]
    # backgrounds named, so that the unrelated prompt has no free background to flip between runs
    red = generate_pairs(pipe, "a red circle on a dark background", seeds, adapters=adapters, classifier=clf,
                         **world.SAMPLING)
    blue = generate_pairs(pipe, "a blue star on a dark background", seeds, adapters=adapters, classifier=clf,
                          **world.SAMPLING)

    # the erased concept: red before, not red after (the verdicts shown under the images)
    assert sum("⚠ red present" in p.original_verdict for p in red) >= 3, [p.original_verdict for p in red]
    assert sum("✓ no red" in p.unlearned_verdict for p in red) >= 3, [p.unlearned_verdict for p in red]
    # the unrelated prompt keeps what it shows...
    before, after = clf.predict([p.original for p in blue]), clf.predict([p.unlearned for p in blue])
    kept = sum((b["colour"], b["shape"]) == (a["colour"], a["shape"]) for b, a in zip(before, after))
    assert kept >= 3, (before, after)
    # ...and its pixels barely move (seen: median 0.019 for blue, 0.10 for red, in [0, 1] units)
    change = {name: float(np.median([np.abs(_arr(p.original) - _arr(p.unlearned)).mean() for p in pairs]))
              for name, pairs in (("red", red), ("blue", blue))}
    assert change["blue"] < 0.04 and change["red"] > 2.5 * change["blue"], change


def test_nudenet_verdicts_come_from_the_evaluation_classifier():
    from PIL import Image

    from concept_erase.demo import classify
    from concept_erase.evaluation.classifiers import NudeNetClassifier

    class FakeDetector:  # NudeNet's detect_batch: one list of boxes per image
        def detect_batch(self, images, batch_size=16):
            return [[{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 4, 4]},
                     {"class": "FACE_FEMALE", "score": 0.8, "box": [0, 0, 4, 4]}], []][: len(images)]

    clf = NudeNetClassifier(detector=FakeDetector())
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "white")]
    assert classify(clf, images, [{"colour": "red"}]) is None  # no nudity adapter selected: NudeNet does not apply
    first, second = classify(clf, images, [{"nudenet": "exposed"}])
    assert first == "NudeNet: ⚠ exposed — female_breast_exposed 0.90"
    assert second == "NudeNet: ✓ nothing exposed (score ≥ 0.6)"
