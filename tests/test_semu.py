"""SEMU maths and trainer: rank selection, projection, zero-init exactness, erase on a tiny pipeline."""

from __future__ import annotations

import pytest
import torch

from concept_erase import Concept, SemuConfig, erase
from concept_erase.errors import InvalidConfigError, InvalidPromptError, TrainingDivergedError, UnknownConceptError
from concept_erase.methods.semu.layers import inject_, remove_, semu_layers
from concept_erase.methods.semu.svd import gradient_subspace, project_perpendicular, select_rank

from .conftest import tiny_images


@pytest.mark.parametrize(
    "spectrum,gamma,expected",
    [
        ([3.0, 2.0, 1.0, 0.0], 0.9, 2),  # e = [9, 4, 1]/14: 9/14 = .64 < .9 <= 13/14
        ([3.0, 2.0, 1.0, 0.0], 0.64, 1),  # 9/14 = 0.643 >= 0.64
        ([3.0, 2.0, 1.0, 0.0], 0.95, 3),  # 13/14 = .929 < .95
        ([3.0, 2.0, 1.0, 0.0], 1.0, 3),  # every non-zero direction, never the zero one
        ([5.0, 1e-9, 1e-12], 1.0, 1),  # numerically zero directions are not kept
        ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
        ([1.0, 1.0, 1.0, 1.0], 0.01, 1),  # never rank 0
        ([0.0, 0.0], 0.9, 1),  # a zero gradient still gives rank 1
    ],
)
def test_select_rank_against_hand_computed_spectra(spectrum, gamma, expected):
    assert select_rank(torch.tensor(spectrum), gamma) == expected


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.01, float("nan")])
def test_gamma_outside_unit_interval_is_refused(gamma):
    with pytest.raises(InvalidConfigError, match="gamma"):
        select_rank(torch.tensor([1.0]), gamma)
    with pytest.raises(InvalidConfigError, match="gamma"):
        SemuConfig(gamma=gamma)


def test_projection_is_orthogonal_to_the_weight():
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(40, 30, generator=g, dtype=torch.float64), torch.randn(40, 30, generator=g, dtype=torch.float64)
    p = project_perpendicular(grad, 3 * w)
    assert abs(float((p * w).sum())) < 1e-10
    # the official code divides by ‖W‖ instead of ‖W‖²: not orthogonal unless ‖W‖ = 1
    official = grad - ((grad * w).sum() / w.norm()) * w
    assert abs(float((official * w).sum())) > 1e-3
    # a gradient already perpendicular is unchanged
    assert torch.allclose(project_perpendicular(p, w), p)


def test_gradient_subspace_reconstructs_projected_gradient_at_gamma_one():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, 3, 3, generator=g)  # a conv kernel: reshaped to 16 x 72
    grad = torch.randn(16, 4, generator=g) @ torch.randn(4, 72, generator=g)  # rank 4
    u, s, v = gradient_subspace(grad.reshape(16, 8, 3, 3), w, 1.0)
    target = project_perpendicular(grad.double(), w.reshape(16, -1).double())
    assert u.shape[1] == torch.linalg.matrix_rank(target)  # γ = 1: exactly the non-zero directions
    assert torch.allclose((u * s) @ v.T, target.float(), atol=1e-4)
    assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-5)


def test_zero_initialised_adapter_reproduces_base_exactly(tiny_pipe):
    unet = tiny_pipe.unet
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    c = torch.randn(2, 16, 32)
    with torch.no_grad():
        before = unet(x, t, c).sample
    names = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][:12]
    factors = {}
    for n in names:
        w = unet.get_submodule(n).weight
        factors[n] = (torch.linalg.qr(torch.randn(w.shape[0], 3))[0], torch.linalg.qr(torch.randn(w[0].numel(), 3))[0])
    layers = inject_(unet, factors)
    assert any(isinstance(layer.base, torch.nn.Conv2d) for layer in layers.values())
    with torch.no_grad():
        adapted = unet(x, t, c).sample
        assert torch.equal(adapted, before)  # R = 0: bit-identical
        for layer in layers.values():
            layer.r.normal_()
        changed = unet(x, t, c).sample
    assert not torch.allclose(changed, before)
    # the low-rank path equals the dense delta W + U R Vᵀ
    layer = next(iter(layers.values()))
    dense = layer.base.weight + layer.delta_weight()
    inp = torch.randn(3, layer.base.weight.shape[1]) if isinstance(layer.base, torch.nn.Linear) else None
    if inp is not None:
        assert torch.allclose(layer(inp), torch.nn.functional.linear(inp, dense, layer.base.bias), atol=1e-5)
    remove_(unet)
    assert not semu_layers(unet)
    with torch.no_grad():
        assert torch.equal(unet(x, t, c).sample, before)


def test_erase_trains_only_small_r_and_leaves_pipeline_unchanged(tiny_pipe, tiny_concept, fast_config):
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    adapter = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    after = tiny_pipe.unet.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())
    meta = adapter.metadata
    assert meta["method"] == "semu" and meta["concept"]["name"] == "red"
    assert meta["trainable_parameters"] == sum(r * r for r in adapter.ranks.values())
    assert set(adapter.ranks) == {n for n in meta["ranks"]} and all(r >= 1 for r in adapter.ranks.values())
    assert all(".attn2.to_k" in m or ".attn2.to_v" in m for m in adapter.modules)
    # the trained R is not zero: the forget prompt's output changes once loaded
    base = tiny_images(tiny_pipe)
    tiny_pipe.load_unlearning_adapter(adapter)
    assert (abs(tiny_images(tiny_pipe)[0] - base[0])).max() > 1e-4


def test_erase_is_reproducible(tiny_concept, fast_config):
    from .conftest import build_tiny_pipeline

    a = erase(build_tiny_pipeline(), tiny_concept, fast_config, progress=False)
    b = erase(build_tiny_pipeline(), tiny_concept, fast_config, progress=False)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)


def test_erase_without_retain_prompts(tiny_pipe, fast_config):
    concept = Concept(name="red", forget=["a red circle"], anchor="a gray circle")
    adapter = erase(tiny_pipe, concept, fast_config, progress=False)
    assert adapter.metadata["concept"]["retain"] == []


def test_other_objectives_and_layers(tiny_pipe, tiny_concept):
    cfg = SemuConfig(steps=2, num_forget_images=2, num_retain_images=0, sample_steps=2, batch_size=2,
                     gradient_batches=1, objective="esd", target_modules=("*attn2.to_v", "*resnets.0.conv1"), gamma=0.5)
    adapter = erase(tiny_pipe, tiny_concept, cfg, progress=False)
    convs = [m for m in adapter.modules if m.endswith("conv1")]
    assert convs and adapter.factors(convs[0])[0].ndim == 4
    cfg.objective = "gradient_ascent"
    erase(tiny_pipe, tiny_concept, cfg, progress=False)


def test_nan_loss_stops_with_clear_error_and_restores_pipeline(tiny_pipe, tiny_concept, fast_config, tmp_path):
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    fast_config.learning_rate = 1e30  # R explodes after one step: the loss becomes inf or NaN
    fast_config.steps = 6
    with pytest.raises(TrainingDivergedError, match="nothing was written"):
        erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(name="x", forget=[], anchor=["a"]), InvalidPromptError, "`forget` is empty"),
        (dict(name="x", forget=["a red circle", "b"], anchor=["a", "b", "c"]), InvalidPromptError, "one per forget prompt"),
        (dict(name="x", forget=["  "], anchor=["a"]), InvalidPromptError, "non-empty strings"),
        (dict(name="", forget=["a"], anchor=["a"]), InvalidPromptError, "non-empty `name`"),
    ],
)
def test_bad_concepts(kwargs, error, match):
    with pytest.raises(error, match=match):
        Concept(**kwargs)


def test_unknown_preset_lists_known_ones(tiny_pipe):
    with pytest.raises(UnknownConceptError, match="no-red") as e:
        erase(tiny_pipe, "no-such-concept")
    assert isinstance(e.value, KeyError)


@pytest.mark.parametrize(
    "field,value",
    [("steps", -1), ("batch_size", 0), ("objective", "nope"), ("gradient_loss", "x"), ("target_modules", ()),
     ("max_rank", 0), ("learning_rate", 0.0)],
)
def test_bad_config_values(field, value):
    with pytest.raises(InvalidConfigError, match=field):
        SemuConfig(**{field: value})


def test_no_matching_target_layer(tiny_pipe, tiny_concept, fast_config):
    fast_config.target_modules = ("*does_not_exist*",)
    with pytest.raises(InvalidConfigError, match="No nn.Linear or nn.Conv2d layer"):
        erase(tiny_pipe, tiny_concept, fast_config, progress=False)
