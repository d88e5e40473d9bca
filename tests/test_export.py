"""Exports that load exactly in every LoRA loader, and every UNet LoRA key style read back.

A mixed-rank adapter on the shipped world pipeline (ranks 3 to 7 over attention, feed-forward,
1x1 and 3x3 convolution and time-embedding layers) is exported and loaded by the loader each format is
for: diffusers' own ``load_lora_weights`` (kohya and PEFT exports), the kohya scale rule that kohya
sd-scripts, A1111 and ComfyUI apply (alpha / rank per layer, on ComfyUI's key mapping), and
``UnlearningAdapter.load`` (diffusers training-script keys). Images are compared with the native file
loaded by ``load_unlearning_adapter``: the target is 1/255 (max abs, [0, 1] scale).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import concept_erase  # noqa: F401  (attaches the pipeline methods)
from concept_erase import world
from concept_erase.adapter import UnlearningAdapter
from concept_erase.cli import main
from concept_erase.errors import AdapterFormatError

TOL = 1 / 255
PROMPTS = ["a red circle", "a blue star on a dark background", "a green square"]
RANKS = {  # most common rank 4; attention layers at other ranks are where diffusers misreads per-layer alphas
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": 4,
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v": 6,
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0": 3,
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2": 4,
    "down_blocks.1.attentions.0.proj_in": 5,  # 1x1 convolution
    "mid_block.resnets.0.conv1": 7,  # 3x3 convolution
    "down_blocks.1.resnets.0.time_emb_proj": 4,
}
ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")


def _images(pipe) -> np.ndarray:
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(len(PROMPTS))],
                output_type="np").images


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def _mixed_rank_tensors(unet) -> dict[str, torch.Tensor]:
    """Random low-rank deltas with ‖ΔW‖ = 0.3‖W‖ per layer: large enough to change the images plainly."""
    g = torch.Generator().manual_seed(0)
    modules = dict(unet.named_modules())
    tensors = {}
    for module, r in RANKS.items():
        w = modules[module].weight.detach()
        a = torch.randn(r, *w.shape[1:], generator=g)
        b = torch.randn(w.shape[0], r, *([1, 1] if w.ndim == 4 else []), generator=g)
        delta = b.flatten(1) @ a.flatten(1)
        b *= 0.3 * w.norm() / delta.norm()
        tensors[f"unet.{module}.lora_A.weight"], tensors[f"unet.{module}.lora_B.weight"] = a, b
    return tensors


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """(native file, its images through load_unlearning_adapter, the base model's images)."""
    pipe = world.load_pipeline()
    base = _images(pipe)
    adapter = UnlearningAdapter(_mixed_rank_tensors(pipe.unet),
                                {"concept": {"name": "mixed ranks"}, "method": "test", "base_model": "world"})
    path = adapter.save(tmp_path_factory.mktemp("export") / "mixed.safetensors")
    pipe.load_unlearning_adapter(path)
    return path, _images(pipe), base


def _diffusers_images(path) -> np.ndarray:
    pipe = world.load_pipeline()
    pipe.load_lora_weights(str(path))  # unmodified diffusers
    return _images(pipe)


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_the_adapter_changes_the_images_and_has_mixed_ranks(native):
    path, ours, base = native
    assert _gap(ours, base) > 0.1  # every comparison below could fail
    assert sorted(set(UnlearningAdapter.load(path).ranks.values())) == [3, 4, 5, 6, 7]


def test_kohya_export_gives_the_native_images_in_diffusers(native, tmp_path):
    path, ours, _ = native
    kohya = tmp_path / "mixed.kohya.safetensors"
    assert main(["export", str(path), "--format", "kohya", "--out", str(kohya)]) == 0
    assert _gap(_diffusers_images(kohya), ours) < TOL
    # the same file through our loader
    pipe = world.load_pipeline()
    pipe.load_unlearning_adapter(kohya)
    assert _gap(_images(pipe), ours) < TOL


def test_per_layer_alphas_are_what_diffusers_gets_wrong(native, tmp_path):
    """Control: alpha = rank per layer (scale 1 in kohya, A1111, ComfyUI) is misread by diffusers for
    attention layers whose rank is not the most common one, which is why the export uses one alpha."""
    path, ours, _ = native
    adapter = UnlearningAdapter.load(path)
    tensors = {}
    for module, (a, b) in ((m, adapter.factors(m)) for m in adapter.modules):
        name = "lora_unet_" + module.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b,
                    f"{name}.alpha": torch.tensor(float(a.shape[0]))}
    save_file(tensors, str(tmp_path / "per-layer.safetensors"))
    assert _gap(_diffusers_images(tmp_path / "per-layer.safetensors"), ours) > 10 * TOL


def test_kohya_rule_on_the_exported_tensors_gives_each_delta_weight(native, tmp_path):
    path, _, _ = native
    adapter = UnlearningAdapter.load(path)
    tensors, header = _read(adapter.save_kohya(tmp_path / "mixed.safetensors"))
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {4.0}  # one alpha, the most common rank
    for module in adapter.modules:
        name = "lora_unet_" + module.replace(".", "_")
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        scale = float(tensors[f"{name}.alpha"]) / down.shape[0]  # kohya sd-scripts, A1111, ComfyUI
        got = (scale * (up.flatten(1) @ down.flatten(1))).reshape(adapter.delta_weight(module).shape)
        want = adapter.delta_weight(module)
        assert (got - want).abs().max() <= 1e-6 * want.abs().max(), module
        if down.shape[0] == 4:  # layers at alpha keep their factors bit for bit
            assert torch.equal(up, adapter.factors(module)[1])
    # what A1111 and Civitai read
    assert header["ss_network_module"] == "networks.lora" and header["ss_network_dim"] == "Dynamic"
    assert header["ss_network_alpha"] == "4" and header["ss_output_name"] == "mixed"
    assert header["ss_base_model_version"] == "concept_erase_world"
    assert header["modelspec.sai_model_spec"] == "1.0.0" and header["modelspec.title"] == "mixed ranks"
    assert header["modelspec.architecture"] == "concept-erase-world/lora"
    assert header["modelspec.implementation"] == "diffusers" and "test" in header["modelspec.description"]
    assert json.loads(header["concept_erase"])["concept"]["name"] == "mixed ranks"
    assert str(tmp_path) not in json.dumps(header)  # no path of this machine in the file


def _comfyui_key_map(unet) -> dict[str, str]:
    """ComfyUI's map from LoRA layer names to UNet weights for diffusers-named keys, as
    ``comfy.lora.model_lora_keys_unet`` builds it from ``comfy.utils.unet_to_diffusers``."""
    key_map = {}
    for k in unet.state_dict():
        if k.endswith(".weight"):
            key_map["lora_unet_" + k[: -len(".weight")].replace(".", "_")] = k
            diffusers_key = k[: -len(".weight")].replace(".to_", ".processor.to_")
            key_map["unet." + (diffusers_key[:-2] if diffusers_key.endswith(".to_out.0") else diffusers_key)] = k
    return key_map


def test_comfyui_maps_every_kohya_layer_onto_its_module_and_the_rule_gives_the_native_images(native, tmp_path):
    path, ours, _ = native
    pipe = world.load_pipeline()
    key_map = _comfyui_key_map(pipe.unet)
    adapter = UnlearningAdapter.load(path)
    tensors, _ = _read(adapter.save_kohya(tmp_path / "mixed.safetensors"))
    layers = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert {key_map[layer] for layer in layers} == {f"{m}.weight" for m in adapter.modules}
    # ComfyUI's patch, weight += alpha / lora_down.shape[0] * lora_up @ lora_down, on every mapped weight
    weights = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for layer in layers:
            w = weights[key_map[layer]]
            down, up = tensors[f"{layer}.lora_down.weight"], tensors[f"{layer}.lora_up.weight"]
            alpha = tensors[f"{layer}.alpha"].item() / down.shape[0]
            w += alpha * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    assert _gap(_images(pipe), ours) < TOL
    # the native PEFT file is not a ComfyUI route: its attention layers match no key of that map
    native_layers = {k.rsplit(".", 2)[0] for k in adapter.tensors}
    missed = {layer for layer in native_layers if layer not in key_map}
    assert missed == {f"unet.{m}" for m in adapter.modules if m.endswith(ATTENTION)}


def test_comfyui_own_loader_when_installed(native, tmp_path):
    comfy_lora = pytest.importorskip("comfy.lora")  # ComfyUI is not on PyPI; runs where it is importable
    path, _, _ = native
    pipe = world.load_pipeline()
    adapter = UnlearningAdapter.load(path)
    tensors, _ = _read(adapter.save_kohya(tmp_path / "mixed.safetensors"))
    key_map = _comfyui_key_map(pipe.unet)
    patches = comfy_lora.load_lora(tensors, {k: v for k, v in key_map.items() if k.startswith("lora_unet_")})
    weights = dict(pipe.unet.named_parameters())
    for module in adapter.modules:
        key = f"{module}.weight"
        got = comfy_lora.calculate_weight([(1.0, patches[key], 1.0, None, None)], weights[key].detach().clone(), key)
        assert torch.allclose(got, weights[key] + adapter.delta_weight(module), atol=1e-6), module


def test_peft_export_from_every_input_style_loads_in_diffusers(native, tmp_path):
    path, ours, _ = native
    kohya, script = tmp_path / "in.kohya.safetensors", tmp_path / "in.script.safetensors"
    UnlearningAdapter.load(path).save_kohya(kohya)
    save_file(_diffusers_script_tensors(UnlearningAdapter.load(path), processor_form=True), str(script))
    modules = {n for n, _ in world.load_pipeline().unet.named_modules()}
    for source in (path, kohya, script):
        out = tmp_path / f"{source.stem}.peft.safetensors"
        assert main(["export", str(source), "--format", "peft", "--out", str(out)]) == 0
        tensors, header = _read(out)
        assert {k.split(".lora_")[0][len("unet."):] for k in tensors} == set(RANKS) <= modules, source.name
        assert "source_format" not in json.loads(header["concept_erase"]), source.name
        assert _gap(_diffusers_images(out), ours) < TOL, source.name


def _diffusers_script_tensors(adapter: UnlearningAdapter, *, processor_form: bool) -> dict[str, torch.Tensor]:
    """Keys as diffusers' LoRA training scripts saved them: ``unet.<module>.lora.down.weight``, or for
    attention projections the older ``unet.<block>.attn2.processor.to_k_lora.down.weight``."""
    out = {}
    for module in adapter.modules:
        a, b = adapter.factors(module)
        if processor_form and module.endswith(ATTENTION):
            block, proj = module.removesuffix(".0").rsplit(".", 1)
            prefix = f"unet.{block}.processor.{proj}_lora"
        else:
            prefix = f"unet.{module}.lora"
        out[f"{prefix}.down.weight"], out[f"{prefix}.up.weight"] = a.clone(), b.clone()
    return out


@pytest.mark.parametrize("processor_form", [False, True], ids=["lora.down", "processor.to_k_lora"])
def test_diffusers_script_keys_load_into_the_adapter_and_give_the_same_images(native, tmp_path, processor_form):
    path, ours, _ = native
    reference = UnlearningAdapter.load(path)
    file = tmp_path / "script.safetensors"
    tensors = _diffusers_script_tensors(reference, processor_form=processor_form)
    assert any(".processor." in k for k in tensors) == processor_form
    save_file(tensors, str(file))
    adapter = UnlearningAdapter.load(file)
    assert adapter.metadata["source_format"] == "diffusers"
    assert adapter.tensors.keys() == reference.tensors.keys()
    assert all(torch.equal(adapter.tensors[k], reference.tensors[k]) for k in adapter.tensors)
    pipe = world.load_pipeline()
    pipe.load_unlearning_adapter(file)
    assert _gap(_images(pipe), ours) < TOL
    assert _gap(_diffusers_images(file), ours) < TOL  # and diffusers reads the file the same way


def test_shipped_adapters_export_exactly(tmp_path):
    """Each shipped adapter has 2 of its 8 layers at a rank other than the most common one."""
    from concept_erase.loading import SHIPPED_ADAPTERS_DIR

    path = SHIPPED_ADAPTERS_DIR / "no-red.safetensors"
    assert len(set(UnlearningAdapter.load(path).ranks.values())) > 1
    pipe = world.load_pipeline()
    pipe.load_unlearning_adapter(path)
    ours = _images(pipe)
    kohya = UnlearningAdapter.load(path).save_kohya(tmp_path / "no-red.kohya.safetensors")
    assert _gap(_diffusers_images(kohya), ours) < TOL


@pytest.mark.parametrize("extra,match", [
    ({"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(2, 32)}, "text encoder"),
    ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 32)}, "text encoder"),
])
def test_text_encoder_keys_are_refused_with_the_way_out(native, tmp_path, extra, match):
    path, _, _ = native
    tensors, _ = _read(path)
    save_file({**tensors, **extra}, str(tmp_path / "te.safetensors"))
    with pytest.raises(AdapterFormatError, match=match) as e:
        UnlearningAdapter.load(tmp_path / "te.safetensors")
    assert "load_lora_weights" in str(e.value)


def test_kohya_alpha_zero_is_refused_as_ambiguous(native, tmp_path):
    path, _, _ = native
    tensors, _ = _read(UnlearningAdapter.load(path).save_kohya(tmp_path / "k.safetensors"))
    key = next(k for k in tensors if k.endswith(".alpha"))
    save_file({**tensors, key: torch.tensor(0.0)}, str(tmp_path / "zero.safetensors"))
    with pytest.raises(AdapterFormatError, match=r"alpha is 0.*A1111"):
        UnlearningAdapter.load(tmp_path / "zero.safetensors")


def test_kohya_layers_diffusers_reads_as_one_module_resolve_exactly_against_the_unet(tmp_path):
    """diffusers reads SDXL's ``lora_unet_add_embedding_linear_1`` and ``_2`` both as ``add.embedding.linear``;
    such layers keep their kohya names and are matched exactly against the UNet's modules."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32)
    modules = ["add_embedding.linear_1", "add_embedding.linear_2",
               "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"]
    tensors = {}
    for module in modules:
        w = unet.get_submodule(module).weight
        name = "lora_unet_" + module.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": torch.randn(2, w.shape[1]),
                    f"{name}.lora_up.weight": torch.randn(w.shape[0], 2), f"{name}.alpha": torch.tensor(1.0)}
    save_file(tensors, str(tmp_path / "sdxl.safetensors"))
    adapter = UnlearningAdapter.load(tmp_path / "sdxl.safetensors").resolve_kohya_names(unet)
    assert adapter.modules == sorted(modules)
    adapter.check_compatible(unet)
    for module in modules:
        name = "lora_unet_" + module.replace(".", "_")
        want = 0.5 * tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]  # alpha 1 / rank 2
        assert torch.allclose(adapter.delta_weight(module), want, atol=1e-6), module
