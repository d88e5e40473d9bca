"""``--base FILE.safetensors``: single-file checkpoints in the original LDM layout (A1111/Civitai), offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from concept_erase import UnlearningAdapter
from concept_erase.cli import main
from concept_erase.errors import InvalidConfigError, WeightsNotFoundError
from concept_erase.ldm_format import LDM_CLIP_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX, pipeline_to_ldm, save_single_file
from concept_erase.loading import load_base
from concept_erase.world import pipeline_dir

WORLD_PIPELINE = pipeline_dir()  # the configs (and weights) of the shipped world


@pytest.fixture(scope="module")
def world():
    from concept_erase import world

    return world.load_pipeline("cpu")


@pytest.fixture(scope="module")
def checkpoint(world, tmp_path_factory):
    return save_single_file(world, tmp_path_factory.mktemp("single") / "world.safetensors")


def test_the_file_has_the_original_ldm_keys(world):
    keys = set(pipeline_to_ldm(world))
    # the names diffusers' own single-file code looks for (SD 1.x)
    assert f"{LDM_CLIP_PREFIX}text_model.embeddings.position_embedding.weight" in keys
    assert f"{LDM_UNET_PREFIX}input_blocks.0.0.weight" in keys  # conv_in
    assert f"{LDM_UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert f"{LDM_UNET_PREFIX}input_blocks.1.0.in_layers.0.weight" in keys  # down_blocks.0.resnets.0.norm1
    assert f"{LDM_UNET_PREFIX}middle_block.2.emb_layers.1.weight" in keys
    assert f"{LDM_VAE_PREFIX}decoder.mid.attn_1.q.weight" in keys
    assert f"{LDM_VAE_PREFIX}encoder.down.0.downsample.conv.weight" in keys
    assert not any(k.startswith(LDM_UNET_PREFIX + "down_blocks") for k in keys)
    assert pipeline_to_ldm(world)[f"{LDM_VAE_PREFIX}decoder.mid.attn_1.q.weight"].ndim == 4  # a 1x1 conv, as in LDM
    n = sum(len(getattr(world, c).state_dict()) for c in ("unet", "vae", "text_encoder"))
    assert len(keys) == n


def test_load_base_reads_the_file_back_exactly(world, checkpoint):
    pipe = load_base(str(checkpoint), "cpu", base_config=str(WORLD_PIPELINE))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for component in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(world, component).state_dict(), getattr(pipe, component).state_dict()
        assert ours.keys() == theirs.keys(), component
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), component
    call = dict(num_inference_steps=4, guidance_scale=5.0, height=64, width=64, output_type="np")
    a = world("a red circle", generator=torch.Generator().manual_seed(3), **call).images
    b = pipe("a red circle", generator=torch.Generator().manual_seed(3), **call).images
    assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))


def test_mixed_precision_applies_to_a_single_file(checkpoint):
    pipe = load_base(str(checkpoint), "cpu", mixed_precision="bf16", base_config=str(WORLD_PIPELINE))
    assert pipe.unet.dtype == torch.bfloat16


def test_erase_on_a_single_file_from_the_command_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "red.safetensors"
    assert main(["erase", "--base", str(checkpoint), "--base-config", str(WORLD_PIPELINE), "--preset", "no-red",
                 "--out", str(out), "--steps", "2", "--num-forget-images", "2", "--num-retain-images", "2",
                 "--sample-steps", "2", "--batch-size", "2", "--quiet"]) == 0
    assert UnlearningAdapter.load(out).modules


def test_missing_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_base(str(tmp_path / "model.safetensors"), "cpu", base_config=str(WORLD_PIPELINE))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin"])
def test_pickle_checkpoints_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not read")
    with pytest.raises(InvalidConfigError, match=r"only \.safetensors checkpoints are loaded"):
        load_base(str(path), "cpu")
    with pytest.raises(InvalidConfigError, match=r"only \.safetensors"):  # refused even before it exists
        load_base(str(tmp_path / "absent.ckpt"), "cpu")


def test_a_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsNotFoundError, match="could not be read as a safetensors file"):
        load_base(str(path), "cpu", base_config=str(WORLD_PIPELINE))


def test_a_file_without_a_unet(world, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightsNotFoundError, match="not a whole Stable Diffusion checkpoint"):
        load_base(str(path), "cpu", base_config=str(WORLD_PIPELINE))


def test_base_config_without_configs(checkpoint, tmp_path):
    partial = tmp_path / "configs"
    shutil.copytree(WORLD_PIPELINE, partial)
    shutil.rmtree(partial / "vae")
    (partial / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(InvalidConfigError, match=r"lacks vae/config\.json, scheduler/scheduler_config\.json"):
        load_base(str(checkpoint), "cpu", base_config=str(partial))
    with pytest.raises(WeightsNotFoundError, match="--base-config './no-such-dir' is not an existing directory"):
        load_base(str(checkpoint), "cpu", base_config="./no-such-dir")


def test_base_config_of_another_architecture(checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(WORLD_PIPELINE, other)
    config = json.loads((other / "unet" / "config.json").read_text())
    config["block_out_channels"] = [32, 64, 64]
    (other / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError, match="describes this checkpoint"):
        load_base(str(checkpoint), "cpu", base_config=str(other))


def test_offline_without_base_config_says_what_to_pass(checkpoint):
    with pytest.raises(WeightsNotFoundError, match="--base-config DIR"):
        load_base(str(checkpoint), "cpu")


def test_options_that_do_not_apply(checkpoint, tmp_path):
    with pytest.raises(InvalidConfigError, match="--revision/--variant"):
        load_base(str(checkpoint), "cpu", variant="fp16", base_config=str(WORLD_PIPELINE))
    with pytest.raises(InvalidConfigError, match="applies to a single-file --base"):
        load_base(str(WORLD_PIPELINE), "cpu", base_config=str(WORLD_PIPELINE))
    with pytest.raises(InvalidConfigError, match="applies to a single-file --base"):
        load_base("world", "cpu", base_config=str(WORLD_PIPELINE))


def test_every_command_with_base_takes_base_config():
    from concept_erase.cli import build_parser

    parser = build_parser()
    for argv in (["erase"], ["codebook", "train", "--out", "x"], ["demo"], ["eval", "--out", "x"]):
        args = parser.parse_args([*argv, "--base", "m.safetensors", "--base-config", "cfg"])
        assert args.base_config == "cfg", argv
