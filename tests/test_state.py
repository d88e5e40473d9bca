"""One truth about what is loaded: diffusers' own LoRA calls on a pipeline that holds unlearning
adapters (fuse_lora, unfuse_lora, set_adapters, disable_lora/enable_lora, delete_adapters,
unload_lora_weights) are either undone exactly by the unlearning methods or refused with an
AdapterStateError that says what happened and what to call. Scales are read from PEFT's layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import concept_erase  # noqa: F401  (attaches the pipeline methods)
from concept_erase import UnlearningAdapter
from concept_erase.errors import AdapterFormatError, AdapterStateError

from .conftest import build_tiny_pipeline, tiny_images


def _lora(pipe, pattern: str, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Random LoRA factors (PEFT keys) on the UNet's linear layers whose name ends with ``pattern``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(pattern) and isinstance(module, torch.nn.Linear):
            out[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.5
            out[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.5
    return out


@pytest.fixture
def pipe():
    return build_tiny_pipeline()


@pytest.fixture
def adapter(pipe):
    tensors = {**_lora(pipe, "attn2.to_v", 2, seed=1), **_lora(pipe, "attn2.to_k", 3, seed=2)}
    return UnlearningAdapter(tensors, {"concept": {"name": "red"}, "method": "semu"})


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}


def _base_weights(pipe):
    """Every base weight of the UNet, whether or not PEFT wraps its layer."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fuse_lora_then_unload_restores_bit_for_bit(pipe, adapter):
    before, base = _base_weights(pipe), tiny_images(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.fuse_lora(components=["unet"])  # diffusers' own fuse, not ours
    assert _max_diff(_base_weights(pipe), before) > 0.1  # the erasure is in the weights now
    pipe.unload_unlearning_adapter()
    assert _max_diff(_base_weights(pipe), before) == 0.0
    assert pipe.unet.state_dict().keys() == before.keys()  # PEFT's wrappers are gone too
    assert np.array_equal(tiny_images(pipe), base)
    assert not pipe.fused_loras and pipe.unlearning_adapters == {}


def test_fuse_lora_then_unfuse_unlearning_is_exact(pipe, adapter):
    pipe.load_unlearning_adapter(adapter)
    unfused_weights, unfused = _base_weights(pipe), tiny_images(pipe)
    pipe.fuse_lora(components=["unet"], adapter_names=["red"], lora_scale=0.5)
    assert pipe.unlearning_adapters == {"red": 0.5}  # fused at half strength: what is in effect
    with pytest.raises(AdapterStateError, match=r"unfuse_unlearning_adapter\(\)"):
        pipe.set_unlearning_scale(1.0)
    with pytest.raises(AdapterStateError, match="fused"):
        pipe.load_unlearning_adapter(adapter, adapter_name="again")
    pipe.unfuse_unlearning_adapter()
    assert _max_diff(_base_weights(pipe), unfused_weights) == 0.0
    assert pipe.unlearning_adapters == {"red": 0.5}  # diffusers leaves the scale at 0.5 after fusing
    pipe.set_unlearning_scale(1.0)
    assert np.abs(tiny_images(pipe) - unfused).max() < 1e-6


def test_unfuse_lora_drift_is_undone_by_unload(pipe, adapter):
    before = _base_weights(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.fuse_unlearning_adapter()
    pipe.unfuse_lora(components=["unet"])  # W + BA - BA: not bit-exact in floating point
    assert pipe.unlearning_adapters == {"red": 1.0}
    pipe.fuse_unlearning_adapter()  # fusing again works: diffusers' unfuse is seen
    pipe.unload_unlearning_adapter()
    assert _max_diff(_base_weights(pipe), before) == 0.0


def test_set_adapters_scale_is_reported_and_kept(pipe, adapter):
    base = tiny_images(pipe)
    pipe.load_unlearning_adapter(adapter)
    erased = tiny_images(pipe)
    pipe.set_adapters(["red"], [0.0])
    assert pipe.unlearning_adapters == {"red": 0.0}
    assert np.abs(tiny_images(pipe) - base).max() < 1e-6
    pipe.set_adapters(["red"], [0.25])
    assert pipe.unlearning_adapters == {"red": 0.25}
    pipe.set_unlearning_scale(1.0)
    assert np.abs(tiny_images(pipe) - erased).max() < 1e-6


def test_user_lora_left_out_reads_zero_and_ours_keep_their_scales(pipe, adapter):
    pipe.load_lora_weights(_lora(pipe, "attn1.to_q", 2, seed=3), adapter_name="style")
    pipe.load_unlearning_adapter(adapter, scale=0.7)
    assert pipe.unlearning_adapters == {"red": 0.7}
    assert set(pipe.get_active_adapters()) == {"style", "red"}  # loading ours kept the user's LoRA on
    pipe.set_adapters(["style"], [1.0])  # the user leaves ours out
    assert pipe.unlearning_adapters == {"red": 0.0}
    pipe.set_unlearning_scale(0.5)
    assert pipe.unlearning_adapters == {"red": 0.5} and set(pipe.get_active_adapters()) == {"style", "red"}


def test_disable_and_enable_lora(pipe, adapter):
    base = tiny_images(pipe)
    pipe.load_unlearning_adapter(adapter, scale=0.8)
    pipe.disable_lora()
    assert pipe.unlearning_adapters == {"red": 0.0}
    assert np.abs(tiny_images(pipe) - base).max() < 1e-6
    for call in (lambda: pipe.set_unlearning_scale(1.0), pipe.fuse_unlearning_adapter):
        with pytest.raises(AdapterStateError, match=r"enable_lora\(\)"):
            call()
    pipe.enable_lora()
    assert pipe.unlearning_adapters == {"red": 0.8}


def test_delete_adapters_is_seen_and_reload_works(pipe, adapter):
    before = _base_weights(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.delete_adapters("red")
    assert pipe.unlearning_adapters == {}
    assert pipe.load_unlearning_adapter(adapter) == "red"
    pipe.unload_unlearning_adapter()
    assert _max_diff(_base_weights(pipe), before) == 0.0


def test_reload_after_unload_lora_weights(pipe, adapter):
    before = _state(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.unload_lora_weights()
    assert pipe.unlearning_adapters == {}
    assert pipe.load_unlearning_adapter(adapter) == "red"
    assert pipe.unlearning_adapters == {"red": 1.0}
    pipe.unload_unlearning_adapter()
    assert _max_diff(_state(pipe), before) == 0.0


def test_fused_then_unloaded_by_diffusers_is_refused_until_restored(pipe, adapter):
    before = _state(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.fuse_unlearning_adapter()
    pipe.unload_lora_weights()  # diffusers' way to bake a LoRA in: the change stays in the weights
    assert _max_diff(_state(pipe), before) > 0.1
    with pytest.raises(AdapterStateError, match=r"while fused.*unload_unlearning_adapter\('red'\)"):
        pipe.load_unlearning_adapter(adapter)
    with pytest.raises(AdapterStateError, match="while fused"):
        pipe.set_unlearning_scale(0.5)
    pipe.unload_unlearning_adapter("red")
    assert _max_diff(_state(pipe), before) == 0.0
    assert pipe.load_unlearning_adapter(adapter) == "red"


def test_a_user_lora_fused_into_the_same_layers_is_not_undone(pipe, adapter):
    pipe.load_lora_weights(_lora(pipe, "attn2.to_v", 2, seed=4), adapter_name="style")
    before = _base_weights(pipe)
    pipe.load_unlearning_adapter(adapter)
    pipe.set_unlearning_scale(0.0)
    style_only = tiny_images(pipe)
    pipe.fuse_lora(components=["unet"])  # fuses the user's LoRA and ours into the same to_v layers
    with pytest.raises(AdapterStateError, match=r"'style'.*unfuse_lora"):
        pipe.unload_unlearning_adapter()
    assert pipe.unlearning_adapters == {"red": 0.0}  # the refused call changed nothing
    pipe.unfuse_lora(components=["unet"])
    pipe.unload_unlearning_adapter()
    assert _max_diff(_base_weights(pipe), before) == 0.0
    assert pipe.get_list_adapters()["unet"] == ["style"]
    assert np.abs(tiny_images(pipe) - style_only).max() < 1e-6


def test_duplicate_name_still_refused(pipe, adapter):
    pipe.load_unlearning_adapter(adapter)
    with pytest.raises(AdapterFormatError, match="already loaded"):
        pipe.load_unlearning_adapter(adapter)


def test_a_text_encoder_lora_stays_on_and_loaded(pipe, adapter):
    from peft.tuners.tuners_utils import BaseTunerLayer

    g = torch.Generator().manual_seed(5)
    lora = {}
    for name, module in pipe.text_encoder.named_modules():
        if name.endswith("self_attn.q_proj"):
            lora[f"text_encoder.{name}.lora_A.weight"] = torch.randn(2, module.in_features, generator=g)
            lora[f"text_encoder.{name}.lora_B.weight"] = torch.randn(module.out_features, 2, generator=g)
    pipe.load_lora_weights(lora, adapter_name="style")
    with_style = tiny_images(pipe)

    def text_encoder_active():
        return {tuple(m.active_adapters) for m in pipe.text_encoder.modules() if isinstance(m, BaseTunerLayer)}

    pipe.load_unlearning_adapter(adapter)
    pipe.set_unlearning_scale(0.5)
    assert text_encoder_active() == {("style",)}  # the pipeline's set_adapters would have switched it off
    pipe.unload_unlearning_adapter()
    assert pipe.get_list_adapters() == {"text_encoder": ["style"]} and text_encoder_active() == {("style",)}
    assert np.array_equal(tiny_images(pipe), with_style)
