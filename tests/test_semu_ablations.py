"""SEMU ablations: a random subspace of SEMU's ranks, a LoRA of as many parameters, full fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch

from concept_erase import SemuConfig, erase
from concept_erase.errors import InvalidConfigError
from concept_erase.methods.semu import trainer as semu_trainer
from concept_erase.methods.semu.layers import lora_disabled, lora_parameters, lora_rank, peft_lora

from .conftest import tiny_images

# a cross-attention value layer and a 3x3 conv: both kinds of LoRA factors
TARGETS = ("*up_blocks.*attn2.to_v", "*down_blocks.0.resnets.0.conv1")


def _state(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _assert_unchanged(unet, state, requires_grad):
    after = unet.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == requires_grad
    assert all(p.grad is None for p in unet.parameters())
    assert "peft_config" not in unet.__dict__
    assert not any("lora" in n or "base_layer" in n for n, _ in unet.named_modules())


def _in_out(unet, name):
    w = unet.get_submodule(name).weight
    return w[0].numel(), w.shape[0]


@pytest.fixture
def spy_factors(monkeypatch):
    """The (U_r, V_r) each SEMU run injects."""
    seen = []
    inject = semu_trainer.inject_

    def spy(unet, factors):
        seen.append({n: (u.clone(), v.clone()) for n, (u, v) in factors.items()})
        return inject(unet, factors)

    monkeypatch.setattr(semu_trainer, "inject_", spy)
    return seen


@pytest.mark.parametrize("field,value", [("subspace", "spectral"), ("parametrization", "dora")])
def test_invalid_choices_name_the_value(field, value):
    with pytest.raises(InvalidConfigError, match=f"`{field}`.*'{value}'"):
        SemuConfig(**{field: value})


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask="simu", parametrization="lora"), "mask"),
    (dict(mask="simu", subspace="random"), "mask"),
    (dict(subspace="random", parametrization="full"), "subspace"),
])
def test_combinations_without_meaning_are_refused(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        SemuConfig(**kwargs)


def test_defaults_are_plain_semu_and_recorded():
    cfg = SemuConfig()
    assert (cfg.subspace, cfg.parametrization) == ("gradient", "semu")
    assert SemuConfig.from_dict(SemuConfig(parametrization="lora").to_dict()).parametrization == "lora"


def test_random_subspace_keeps_ranks_with_other_orthonormal_directions(tiny_pipe, tiny_concept, fast_config,
                                                                       spy_factors):
    unet = tiny_pipe.unet
    fast_config.gamma_cross_attention = 0.5  # subspaces smaller than the whole space (γ = 1 keeps all 32 here)
    state, grads = _state(unet), {n: p.requires_grad for n, p in unet.named_parameters()}
    gradient = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    fast_config.subspace = "random"
    random = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    _assert_unchanged(unet, state, grads)
    assert random.ranks == gradient.ranks == {n: u.shape[1] for n, (u, _) in spy_factors[0].items()}
    assert random.metadata["trainable_parameters"] == sum(r * r for r in gradient.ranks.values())
    assert random.metadata["config"]["subspace"] == "random"
    for name, (u_g, v_g) in spy_factors[0].items():
        u_r, v_r = spy_factors[1][name]
        r = u_r.shape[1]
        assert u_r.shape == u_g.shape and v_r.shape == v_g.shape
        eye = torch.eye(r)
        assert torch.allclose(u_r.T @ u_r, eye, atol=1e-5) and torch.allclose(v_r.T @ v_r, eye, atol=1e-5)
        # not the gradient's directions: the random span is far from the gradient's span
        assert r < u_g.shape[0] and not torch.allclose(u_r, u_g, atol=1e-2)
        overlap = torch.linalg.matrix_norm(u_g.T @ u_r) ** 2 / r  # 1 when the spans coincide, ~r/out by chance
        assert overlap < 0.9
        # the file's lora_A is V_rᵀ
        assert torch.allclose(random.factors(name)[0], v_r.T, atol=1e-6)
    # seeded: the same random directions again
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert all(torch.equal(spy_factors[2][n][0], spy_factors[1][n][0]) for n in spy_factors[1])


def test_lora_matches_semu_parameter_count_and_loads(tiny_pipe, tiny_concept, fast_config):
    unet = tiny_pipe.unet
    fast_config.target_modules = TARGETS
    state, grads = _state(unet), {n: p.requires_grad for n, p in unet.named_parameters()}
    semu = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    fast_config.parametrization = "lora"
    lora = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    _assert_unchanged(unet, state, grads)
    meta = lora.metadata
    assert meta["method"] == "semu" and meta["config"]["parametrization"] == "lora"
    assert meta["semu_ranks"] == semu.ranks and set(lora.ranks) == set(semu.ranks)
    assert any(lora.factors(n)[0].ndim == 4 for n in lora.modules)  # a conv layer is among them
    semu_count = sum(r * r for r in semu.ranks.values())
    assert meta["semu_trainable_parameters"] == semu_count == semu.metadata["trainable_parameters"]
    assert meta["trainable_parameters"] == lora.num_parameters  # every LoRA factor was trained
    bound = 0
    for name, r in semu.ranks.items():
        n_in, n_out = _in_out(unet, name)
        assert lora.ranks[name] == max(1, round(r * r / (n_in + n_out))) == lora_rank(r, (n_out, n_in))
        diff = abs(lora.ranks[name] * (n_in + n_out) - r * r)
        # rounding: at most half a rank of parameters, unless the rank was raised to 1
        layer_bound = (n_in + n_out) if lora.ranks[name] == 1 else (n_in + n_out) / 2
        assert diff <= layer_bound
        bound += layer_bound
    assert abs(meta["trainable_parameters"] - semu_count) <= bound
    base = tiny_images(tiny_pipe)
    tiny_pipe.load_unlearning_adapter(lora)
    assert abs(tiny_images(tiny_pipe)[0] - base[0]).max() > 1e-4
    tiny_pipe.unload_unlearning_adapter()
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())


def test_full_trains_every_weight_and_exports_them(tiny_pipe, tiny_concept, fast_config):
    unet = tiny_pipe.unet
    fast_config.target_modules = TARGETS
    fast_config.parametrization = "full"
    state, grads = _state(unet), {n: p.requires_grad for n, p in unet.named_parameters()}
    adapter = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    _assert_unchanged(unet, state, grads)
    meta = adapter.metadata
    targets = semu_trainer.select_modules(unet, TARGETS)
    assert set(adapter.modules) == set(targets)
    assert meta["trainable_parameters"] == sum(m.weight.numel() for m in targets.values())
    assert meta["compression_error_max"] <= 1e-3 and meta["delta_norm"] > 0
    base = tiny_images(tiny_pipe)
    tiny_pipe.load_unlearning_adapter(adapter)
    assert abs(tiny_images(tiny_pipe)[0] - base[0]).max() > 1e-4


def test_lora_base_predictions_have_the_lora_switched_off(tiny_pipe):
    unet = tiny_pipe.unet
    state, grads = _state(unet), {n: p.requires_grad for n, p in unet.named_parameters()}
    names = list(semu_trainer.select_modules(unet, TARGETS))
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 16, 32)
    with torch.no_grad():
        before = unet(x, t, c).sample
        with peft_lora(unet, dict.fromkeys(names, 2), seed=3) as layers:
            assert torch.equal(unet(x, t, c).sample, before)  # B = 0: the base model
            for layer in layers.values():
                lora_parameters(layer)[1].normal_()
            assert not torch.allclose(unet(x, t, c).sample, before)
            with lora_disabled(layers):
                assert torch.equal(unet(x, t, c).sample, before)
            assert all(p.requires_grad for layer in layers.values() for p in lora_parameters(layer))
    _assert_unchanged(unet, state, grads)
    with torch.no_grad():
        assert torch.equal(unet(x, t, c).sample, before)


@pytest.mark.parametrize("kwargs", [dict(parametrization="lora"), dict(parametrization="full"),
                                    dict(subspace="random")])
def test_unet_unchanged_after_a_failure(tiny_pipe, tiny_concept, fast_config, monkeypatch, kwargs):
    unet = tiny_pipe.unet
    state, grads = _state(unet), {n: p.requires_grad for n, p in unet.named_parameters()}

    def failing(pred, y, sign):  # the adapted model has run (pred), then training fails
        raise RuntimeError("forced failure")

    monkeypatch.setattr(semu_trainer, "_forget_term", failing)
    with pytest.raises(RuntimeError, match="forced failure"):
        erase(tiny_pipe, tiny_concept, fast_config.with_overrides(target_modules=TARGETS, **kwargs), progress=False)
    _assert_unchanged(unet, state, grads)


def test_lora_rank_rule():
    assert lora_rank(1, (320, 768)) == 1  # never 0
    assert lora_rank(64, (64, 64)) == 32  # 4096 / 128
    assert lora_rank(30, (40, 8, 3, 3)) == round(900 / (72 + 40))  # in counts in·kh·kw
    assert math.isclose(lora_rank(64, (64, 64)) * 128, 64 * 64)
