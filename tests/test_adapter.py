"""The adapter file and loading: round trips, parity with diffusers, fuse/unload exactness,
composition, kohya export, name resolution, and every bad-input path."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import concept_erase
from concept_erase import SemuConfig, UnlearningAdapter, erase
from concept_erase.errors import AdapterFormatError, ArchitectureMismatchError, UnknownConceptError

from .conftest import build_tiny_pipeline, tiny_images


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two adapters trained on the tiny pipeline: red -> gray and circle -> square."""
    from concept_erase import Concept

    pipe = build_tiny_pipeline()
    cfg = SemuConfig(steps=4, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2,
                     gradient_batches=2, learning_rate=0.05)
    d = tmp_path_factory.mktemp("adapters")
    red = erase(pipe, Concept(name="red", forget=["a red circle"], anchor="a gray circle", retain=["a blue star"]),
                cfg, progress=False)
    circle = erase(pipe, Concept(name="circle", forget=["a red circle", "a blue circle"],
                                 anchor=["a red square", "a blue square"]), cfg, progress=False)
    return red.save(d / "red.safetensors"), circle.save(d / "circle.safetensors")


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_load_round_trip(adapters):
    path, _ = adapters
    a = UnlearningAdapter.load(path)
    b = UnlearningAdapter.load(a.save(path.with_name("copy.safetensors")))
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.metadata == {**b.metadata}
    assert a.metadata["format_version"] == 1 and a.metadata["library_version"] == concept_erase.__version__
    for key in ("method", "concept", "config", "ranks", "trainable_parameters", "base_fingerprint", "versions"):
        assert key in a.metadata, key
    assert all(k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
               for k in a.tensors)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["concept_erase"])
    assert header["concept"]["name"] == "red"


def test_parity_with_diffusers_load_lora_weights(adapters):
    path, _ = adapters
    ours = build_tiny_pipeline()
    ours.load_unlearning_adapter(str(path))
    theirs = build_tiny_pipeline()
    theirs.load_lora_weights(str(path))  # unmodified diffusers, no concept-erase code involved
    assert np.array_equal(tiny_images(ours), tiny_images(theirs))


def test_loading_changes_output_and_unload_restores_bit_for_bit(adapters):
    path, _ = adapters
    pipe = build_tiny_pipeline()
    state, base = _state(pipe), tiny_images(pipe)
    assert pipe.load_unlearning_adapter(path) == "red"
    assert pipe.unlearning_adapters == {"red": 1.0}
    assert not np.allclose(tiny_images(pipe), base, atol=1e-5)
    pipe.unload_unlearning_adapter()
    assert _same_state(state, _state(pipe))
    assert np.array_equal(tiny_images(pipe), base)


def test_fuse_matches_unfused_and_unfuse_is_exact(adapters):
    path, _ = adapters
    pipe = build_tiny_pipeline()
    state = _state(pipe)
    pipe.load_unlearning_adapter(path, scale=0.8)
    unfused = tiny_images(pipe)
    pipe.fuse_unlearning_adapter()
    fused = tiny_images(pipe)
    assert np.abs(fused - unfused).max() < 1e-4
    # fused weight is exactly W + scale * B A
    adapter = UnlearningAdapter.load(path)
    module = adapter.modules[0]
    layer = pipe.unet.get_submodule(module).get_base_layer()
    expected = state[f"{module}.weight"] + 0.8 * adapter.delta_weight(module)
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    pipe.unload_unlearning_adapter()
    assert _same_state(state, _state(pipe))


def test_scale_zero_is_base_and_scale_changes_output(adapters):
    path, _ = adapters
    pipe = build_tiny_pipeline()
    base = tiny_images(pipe)
    pipe.load_unlearning_adapter(path)
    full = tiny_images(pipe)
    pipe.set_unlearning_scale(0.0)
    assert np.abs(tiny_images(pipe) - base).max() < 1e-6
    pipe.set_unlearning_scale(0.5)
    half = tiny_images(pipe)
    assert 0 < np.abs(half - base).max() < np.abs(full - base).max() + 1e-6


def test_two_adapters_compose(adapters):
    red, circle = adapters
    pipe = build_tiny_pipeline()
    state = _state(pipe)
    pipe.load_unlearning_adapter(red)
    only_red = tiny_images(pipe)
    pipe.load_unlearning_adapter(circle, adapter_name="c")
    assert pipe.unlearning_adapters == {"red": 1.0, "c": 1.0}
    both = tiny_images(pipe)
    assert not np.allclose(both, only_red, atol=1e-5)
    pipe.fuse_unlearning_adapter()
    a, b = UnlearningAdapter.load(red), UnlearningAdapter.load(circle)
    shared = sorted(set(a.modules) & set(b.modules))[0]
    got = pipe.unet.get_submodule(shared).get_base_layer().weight
    assert torch.allclose(got, state[f"{shared}.weight"] + a.delta_weight(shared) + b.delta_weight(shared), atol=1e-6)
    assert np.abs(tiny_images(pipe) - both).max() < 1e-4
    pipe.unload_unlearning_adapter("c")
    pipe.fuse_unlearning_adapter()
    pipe.unfuse_unlearning_adapter()
    assert np.abs(tiny_images(pipe) - only_red).max() < 1e-5
    pipe.unload_unlearning_adapter()
    assert _same_state(state, _state(pipe))


def test_duplicate_name_is_refused(adapters):
    pipe = build_tiny_pipeline()
    pipe.load_unlearning_adapter(adapters[0])
    with pytest.raises(AdapterFormatError, match="already loaded"):
        pipe.load_unlearning_adapter(adapters[0])


def test_kohya_export_loads_in_diffusers_and_ours(adapters, tmp_path):
    path, _ = adapters
    kohya = UnlearningAdapter.load(path).save_kohya(tmp_path / "red.kohya.safetensors")
    from safetensors import safe_open

    with safe_open(str(kohya), "pt") as f:
        keys = list(f.keys())
    assert all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)
    reference = build_tiny_pipeline()
    reference.load_lora_weights(str(path))
    theirs = build_tiny_pipeline()
    theirs.load_lora_weights(str(kohya))
    assert np.abs(tiny_images(theirs) - tiny_images(reference)).max() < 1e-5
    ours = build_tiny_pipeline()
    ours.load_unlearning_adapter(str(kohya), adapter_name="k")
    assert np.abs(tiny_images(ours) - tiny_images(reference)).max() < 1e-5


def test_wrong_architecture_is_refused_before_touching_weights(adapters):
    from concept_erase.world.models import WorldArchitecture, build_unet

    pipe = build_tiny_pipeline()
    pipe.unet = build_unet(WorldArchitecture(image_size=32, unet_channels=(32, 64, 64), text_width=32), 16)
    state = _state(pipe)
    with pytest.raises(ArchitectureMismatchError, match=r"layer '.*attn2.*' has weight shape \(64, 32\).*\(32, 32\)"):
        pipe.load_unlearning_adapter(adapters[0])
    assert _same_state(state, _state(pipe)) and not pipe.unlearning_adapters
    assert not any("lora" in k for k in pipe.unet.state_dict())


def _write_header_only(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_bad_files(adapters, tmp_path):
    path, _ = adapters
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AdapterFormatError, match="not a valid safetensors file"):
        UnlearningAdapter.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 this is not a tensor file" * 10)
    with pytest.raises(AdapterFormatError, match="not a valid safetensors file"):
        UnlearningAdapter.load(garbage)
    pickled = tmp_path / "model.bin"
    torch.save({"unet.x.lora_A.weight": torch.zeros(1)}, pickled)
    with pytest.raises(AdapterFormatError, match="only loads safetensors"):
        UnlearningAdapter.load(pickled)
    with pytest.raises(AdapterFormatError, match="does not exist"):
        UnlearningAdapter.load(tmp_path / "missing.safetensors")


def test_nan_and_incomplete_tensors_are_refused(adapters, tmp_path):
    from safetensors.torch import save_file

    tensors = dict(UnlearningAdapter.load(adapters[0]).tensors)
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    bad = dict(tensors)
    bad[key] = bad[key].clone()
    bad[key][0, 0] = float("nan")
    save_file(bad, str(tmp_path / "nan.safetensors"))
    with pytest.raises(AdapterFormatError, match="NaN"):
        UnlearningAdapter.load(tmp_path / "nan.safetensors")
    partial = {k: v for k, v in tensors.items() if k != key}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(AdapterFormatError, match="no lora_B"):
        UnlearningAdapter.load(tmp_path / "partial.safetensors")
    save_file({"vae.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AdapterFormatError, match="Unexpected tensor key 'vae.weight'"):
        UnlearningAdapter.load(tmp_path / "other.safetensors")


def test_name_resolution_order(adapters, tmp_path, monkeypatch):
    from concept_erase.loading import SHIPPED_ADAPTERS_DIR, resolve_adapter

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CONCEPT_ERASE_HOME", str(home))
    # a user adapter with a shipped name wins over the shipped one
    (home / "no-red.safetensors").write_bytes(adapters[0].read_bytes())
    assert resolve_adapter("no-red") == home / "no-red.safetensors"
    (home / "no-red.safetensors").unlink()
    if (SHIPPED_ADAPTERS_DIR / "no-red.safetensors").exists():
        assert resolve_adapter("no-red") == SHIPPED_ADAPTERS_DIR / "no-red.safetensors"
    # a path wins over everything; a directory with one file resolves to it
    assert resolve_adapter(str(adapters[0])) == adapters[0]
    assert resolve_adapter(str(adapters[0].parent), weight_name="circle.safetensors") == adapters[1]
    with pytest.raises(AdapterFormatError, match="pass `weight_name=`"):
        resolve_adapter(str(adapters[0].parent))


def test_unknown_name_lists_known_names_and_the_command(monkeypatch, tmp_path):
    from concept_erase.loading import resolve_adapter

    monkeypatch.setenv("CONCEPT_ERASE_HOME", str(tmp_path))
    with pytest.raises(UnknownConceptError, match="concept-erase erase") as e:
        resolve_adapter("no-unicorns")
    assert "Known names" in str(e.value)


def test_hub_id_offline_without_weight_name_is_explained(monkeypatch):
    from concept_erase.loading import resolve_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownConceptError, match="HF_HUB_OFFLINE"):
        resolve_adapter("someone/some-adapter")
