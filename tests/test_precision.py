"""Mixed precision as in diffusers' training scripts: whatever the base model's dtype, every method
trains float32 parameters with float32 optimiser state, and the frozen base weights are untouched.

bf16 stands in for fp16 here: PyTorch lacks fp16 kernels for much of a UNet on the CPU.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from concept_erase import Concept
from concept_erase.errors import InvalidConfigError, WeightsNotFoundError
from concept_erase.loading import base_dtype, load_base
from concept_erase.methods import erase_with

_DATA = dict(num_forget_images=2, num_retain_images=2, sample_steps=2, batch_size=2)
_SEMU = dict(_DATA, steps=3, gradient_batches=1, learning_rate=0.05)
_FINETUNE = dict(_DATA, steps=3, learning_rate=1e-2)
TRAINING = {  # every method that trains, and SEMU's variants that train something else than R
    "semu": ("semu", _SEMU),
    "semu-sophia": ("semu", dict(_SEMU, optimizer="sophia")),
    "semu-x-simu": ("semu", dict(_SEMU, mask="simu", mask_kind="forget")),
    "semu-lora": ("semu", dict(_SEMU, parametrization="lora")),
    "semu-full": ("semu", dict(_SEMU, parametrization="full", learning_rate=1e-2)),
    "esd-x": ("esd-x", dict(iterations=3, sample_steps=2, learning_rate=1e-2)),
    "gradient-ascent": ("gradient-ascent", _FINETUNE),
    "task-vector": ("task-vector", {k: v for k, v in _FINETUNE.items() if k != "num_retain_images"}),
    "simu": ("simu", dict(_DATA, steps=3, learning_rate=1e-2)),
}


@pytest.fixture(scope="module")
def bf16_pipe(tiny_pipe_dir):
    import concept_erase  # noqa: F401  (the pipeline methods)

    pipe = load_base(str(tiny_pipe_dir), "cpu", mixed_precision="bf16")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def optimizer_steps():
    """What every optimiser step saw: the dtypes of its parameters and of its floating-point state."""
    seen: list[tuple[set, set]] = []

    def record(optimizer, args, kwargs):
        params = {p.dtype for group in optimizer.param_groups for p in group["params"]}
        state = {v.dtype for s in optimizer.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.is_floating_point() and v.ndim > 0}
        seen.append((params, state))

    handle = register_optimizer_step_post_hook(record)
    yield seen
    handle.remove()


def _unet_output(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    unet = pipe.unet
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=g).to(unet.dtype)
    c = pipe.encode_prompt(["a red circle", "a blue star"], "cpu", 1, False)[0]
    with torch.no_grad():
        return unet(x, torch.tensor([500, 500]), encoder_hidden_states=c).sample.float()


@pytest.mark.parametrize("variant", list(TRAINING))
def test_training_keeps_float32_parameters_and_state_on_a_bf16_base(variant, bf16_pipe, optimizer_steps):
    method, settings = TRAINING[variant]
    pipe = bf16_pipe
    concept = Concept(name="red", forget=["a red circle", "a red square"], anchor=["a gray circle", "a gray square"],
                      retain=["a blue circle", "a green star"], phrase="red")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base_out = _unet_output(pipe)

    adapter = erase_with(method, pipe, concept, progress=False, **settings)

    # the optimiser ran every step on float32 parameters and kept float32 state (Adam's moments, Sophia's EMA)
    assert len(optimizer_steps) == 3
    for params, state in optimizer_steps:
        assert params == {torch.float32}
        assert state == {torch.float32}
    # the frozen base weights are still bf16 and bit-identical
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(after[k], before[k]) for k in before)
    # the training changed something that shows in the bf16 model's output
    assert {t.dtype for t in adapter.tensors.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in adapter.tensors.values())
    name = pipe.load_unlearning_adapter(adapter, adapter_name=f"precision-{variant}")
    try:
        changed = (_unet_output(pipe) - base_out).abs().max().item()
    finally:
        pipe.unload_unlearning_adapter(name)
    assert changed > 0
    assert torch.equal(_unet_output(pipe), base_out)


# ---------------------------------------------------------------- load_base
def test_base_dtype_defaults_and_refusals():
    assert base_dtype(None, "cpu") == torch.float32
    assert base_dtype(None, "cuda") == torch.float16  # nothing is allocated: only the default is read
    assert base_dtype("no", "cuda") == torch.float32
    assert base_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(InvalidConfigError, match="'fp16' needs a GPU.*'bf16'"):
        base_dtype("fp16", "cpu")
    with pytest.raises(InvalidConfigError, match=r"`mixed_precision` must be one of 'no', 'fp16', 'bf16' but is "
                                                 r"'float16'"):
        base_dtype("float16", "cpu")


def test_load_base_dtype_variant_and_revision(tiny_pipe_dir, tmp_path):
    assert load_base(str(tiny_pipe_dir), "cpu").unet.dtype == torch.float32
    pipe = load_base(str(tiny_pipe_dir), "cpu", mixed_precision="bf16")
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    # a variant is the files' name suffix, as diffusers writes them
    variant_dir = tmp_path / "variant"
    pipe.save_pretrained(variant_dir, variant="bf16")
    assert list(variant_dir.glob("unet/*.bf16.safetensors"))
    assert load_base(str(variant_dir), "cpu", mixed_precision="bf16", variant="bf16").unet.dtype == torch.bfloat16
    with pytest.raises(WeightsNotFoundError, match="with --variant 'fp16'"):
        load_base(str(tiny_pipe_dir), "cpu", variant="fp16")
    with pytest.raises(InvalidConfigError, match="--revision 'v1' applies to a hub id"):
        load_base(str(tiny_pipe_dir), "cpu", revision="v1")
    with pytest.raises(InvalidConfigError, match="not to the shipped world model"):
        load_base("world", "cpu", variant="fp16")


def test_load_base_restores_the_callers_logging_settings(tiny_pipe_dir):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    try:
        for lib in (diffusers_logging, transformers_logging):
            lib.set_verbosity_info()
            lib.enable_progress_bar()
        load_base(str(tiny_pipe_dir), "cpu")
        for lib in (diffusers_logging, transformers_logging):
            assert lib.get_verbosity() == lib.INFO and lib.is_progress_bar_enabled()
    finally:
        for lib, (level, bars) in zip((diffusers_logging, transformers_logging), saved):
            lib.set_verbosity(level)
            lib.enable_progress_bar() if bars else lib.disable_progress_bar()


def test_adapter_load_touches_the_unet_only(tiny_pipe, tiny_concept, caplog):
    adapter = erase_with("uce", tiny_pipe, tiny_concept, progress=False)
    caplog.clear()
    # diffusers' load_lora_weights also tries the text encoder, finds no key and warns...
    tiny_pipe.load_lora_weights({k: v.clone() for k, v in adapter.tensors.items()}, adapter_name="plain")
    assert any("No LoRA keys associated to CLIPTextModel" in r.getMessage() for r in caplog.records)
    tiny_pipe.delete_adapters("plain")
    caplog.clear()
    # ...an unlearning adapter goes into the UNet only
    tiny_pipe.load_unlearning_adapter(adapter)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert tiny_pipe.get_list_adapters() == {"unet": [adapter.name]}
    assert tiny_pipe.get_active_adapters() == [adapter.name]


# ---------------------------------------------------------------- the command line, end to end
_NOISE = ("Loading pipeline components", "Loading weights", "torch_dtype", "FutureWarning", "No LoRA keys",
          "%|")  # the last: any tqdm bar of diffusers / transformers


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "concept_erase.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_cli_erase_and_eval_are_quiet_and_save_the_precision_asked_for(tmp_path):
    from safetensors import safe_open

    out = tmp_path / "no-red.safetensors"
    small = ["--steps", "2", "--num-forget-images", "2", "--num-retain-images", "2", "--sample-steps", "2",
             "--gradient-batches", "1", "--quiet"]
    erase = _cli("erase", "--preset", "no-red", "--out", str(out), "--mixed-precision", "bf16",
                 "--save-precision", "bf16", *small, cwd=tmp_path)
    assert erase.returncode == 0, erase.stderr
    assert not [line for line in erase.stderr.splitlines() if any(n in line for n in _NOISE)], erase.stderr
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}

    evaluation = _cli("eval", "--adapter", str(out), "--prompts", "no-red", "--images-per-prompt", "1",
                      "--steps", "2", "--no-fid", "--no-kid", "--no-paraphrases", "--quiet",
                      "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert not [line for line in evaluation.stderr.splitlines() if any(n in line for n in _NOISE)], evaluation.stderr

    # with --verbose diffusers' own output is shown: the check above can fail
    verbose = _cli("--verbose", "erase", "--preset", "no-red", "--out", str(tmp_path / "v.safetensors"), *small,
                   cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading pipeline components" in verbose.stderr
