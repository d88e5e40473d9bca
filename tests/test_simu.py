"""SIMU: the critical-neuron attribution and masks against hand-computed values, Sophia against a
reference update, masked training leaving rows outside the mask bit-identical, and SEMU x SIMU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from concept_erase.errors import InvalidConfigError
from concept_erase.methods import SemuConfig, SimuConfig, erase_with
from concept_erase.methods.simu import attribution_scores, critical_masks, dual_masks, masked_weights
from concept_erase.methods.sophia import Sophia

from .conftest import tiny_images

FAST_SIMU = dict(steps=3, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2, attribution_images=4,
                 learning_rate=1e-2)
FAST_SEMU = dict(steps=3, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2, gradient_batches=2,
                 learning_rate=0.05)


def _tiny_layer():
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, -2.0]]))
    return lin


def test_attribution_and_masks_match_a_hand_computation():
    lin = _tiny_layer()
    c = torch.tensor([1.0, 4.0, 0.1])  # L_b = Σ_k c_k y_k², y = g ⊙ (W x_b)

    def loss(x):
        return (c * lin(x) ** 2).sum(-1)

    x_f = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    x_r = torch.tensor([[0.0, 3.0]])
    m = 4
    # ∂L_b/∂g_k = 2 c_k g_k a_bk²; the m-step Riemann sum at g = i/m gives c_k a_bk² (m + 1)/m
    def by_hand(x):
        a = x.numpy() @ lin.weight.detach().numpy().T  # (B, 3)
        return (np.abs(c.numpy() * a ** 2 * (m + 1) / m)).mean(0)

    f = attribution_scores({"l": lin}, loss, [x_f[:1], x_f[1:]], steps=m)["l"]  # two batches: mean over examples
    r = attribution_scores({"l": lin}, loss, [x_r], steps=m)["l"]
    np.testing.assert_allclose(f.numpy(), by_hand(x_f), rtol=1e-6)
    np.testing.assert_allclose(r.numpy(), by_hand(x_r), rtol=1e-6)
    # forget: [2.5, 2.5·4·(1+1)/2... ] by hand: a = [[1, 1, -2], [2, 1, 0]] -> c·a² = [[1, 4, .4], [4, 4, 0]]
    # mean × 5/4 = [3.125, 5.0, 0.25]; t = 0.3 keeps ≥ 1.5: units 0 and 1
    assert critical_masks({"l": f}, 0.3)["l"].tolist() == [True, True, False]
    assert critical_masks({"l": f}, 0.7)["l"].tolist() == [False, True, False]
    # retain: a = [0, 1.5, -6] -> c·a² = [0, 9, 3.6] × 5/4 = [0, 11.25, 4.5]; t = 0.3 keeps ≥ 3.375: units 1, 2
    masks_r = critical_masks({"l": r}, 0.3)
    assert masks_r["l"].tolist() == [False, True, True]
    assert dual_masks(critical_masks({"l": f}, 0.3), masks_r)["l"].tolist() == [True, False, False]


def test_mask_rejects_bad_thresholds_and_all_zero_layers():
    with pytest.raises(InvalidConfigError, match="threshold"):
        critical_masks({"l": torch.ones(3)}, 0.0)
    assert not critical_masks({"l": torch.zeros(3)}, 0.3)["l"].any()
    with pytest.raises(InvalidConfigError, match="mask_kind"):
        SimuConfig(mask_kind="both")


def test_sophia_matches_the_reference_update_on_a_quadratic():
    # L = ½ Σ a_i θ_i²: gradient a ⊙ θ, exact diagonal Hessian a
    a = torch.tensor([1.0, 10.0, 0.01, 3.0], dtype=torch.float64)
    theta0 = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    lr, b1, b2, rho, wd, eps = 0.05, 0.9, 0.95, 4.0, 0.1, 1e-12
    p = nn.Parameter(theta0.clone())
    opt = Sophia([p], lr=lr, betas=(b1, b2), rho=rho, weight_decay=wd, eps=eps)
    theta, m, h = theta0.tolist(), [0.0] * 4, [0.0] * 4
    for step in range(6):
        p.grad = a * p.detach()
        if step % 2 == 0:
            opt.update_hessian([a.clone()])
            h = [b2 * hi + (1 - b2) * ai for hi, ai in zip(h, a.tolist())]
        opt.step()
        # the paper's Algorithm 3, written out per coordinate
        for i in range(4):
            g = a[i].item() * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            theta[i] -= lr * wd * theta[i]
            theta[i] -= lr * max(-1.0, min(1.0, m[i] / max(rho * h[i], eps)))
        assert p.detach().tolist() == pytest.approx(theta, rel=1e-12, abs=1e-14)
    ratios = [abs(mi) / max(rho * hi, eps) for mi, hi in zip(m, h)]
    assert any(r > 1 for r in ratios) and any(0 < r < 1 for r in ratios)  # both regimes of the clip were used


def test_masked_rows_stay_bit_identical_under_sophia():
    torch.manual_seed(0)
    lin = nn.Linear(4, 5)
    w = lin.weight.detach().clone()
    mask = torch.tensor([True, False, True, False, False])
    delta = torch.zeros_like(w, requires_grad=True)
    opt = Sophia([delta], lr=0.1, weight_decay=0.1)
    x = torch.randn(8, 4)
    for step in range(5):
        weight = masked_weights({"lin": w}, {"lin": mask}, {"lin": delta})["lin.weight"]
        loss = ((x @ weight.T - 1.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if step % 2 == 0:
            opt.update_hessian([8 * delta.grad ** 2])
        opt.step()
    final = masked_weights({"lin": w}, {"lin": mask}, {"lin": delta})["lin.weight"].detach()
    assert torch.equal(final[~mask], w[~mask])  # bit for bit
    assert (final[mask] != w[mask]).all()


def test_simu_deltas_touch_only_critical_rows(tiny_pipe, tiny_concept):
    adapter = erase_with("simu", tiny_pipe, tiny_concept, progress=False, **FAST_SIMU, loss="graddiff")
    meta = adapter.metadata
    assert meta["mask_kind"] == "dual" and meta["config"]["loss"] == "graddiff"
    neurons = meta["critical_neurons"]
    assert set(adapter.modules) <= set(neurons) and sum(neurons.values()) < meta["scored_neurons"]
    for name in adapter.modules:
        d = adapter.delta_weight(name).flatten(1)
        moved = int((d.norm(dim=1) > 1e-6 * d.norm(dim=1).max()).sum())
        assert 0 < moved <= neurons[name], name


def test_semu_x_simu_restricts_rows_and_trains_with_sophia(tiny_pipe, tiny_concept):
    base = tiny_images(tiny_pipe)
    plain = erase_with("semu", tiny_pipe, tiny_concept, progress=False, **FAST_SEMU)
    masked = erase_with("semu", tiny_pipe, tiny_concept, progress=False, **{**FAST_SEMU, "learning_rate": 1e-2},
                        mask="simu", optimizer="sophia")
    assert masked.metadata["config"]["mask"] == "simu" and plain.metadata["config"]["mask"] == "none"
    zero_rows = lambda ad, n: int((ad.factors(n)[1].flatten(1).abs().sum(1) == 0).sum())  # noqa: E731
    assert all(zero_rows(plain, n) == 0 for n in plain.modules)
    assert masked.modules and all(0 < zero_rows(masked, n) < masked.factors(n)[1].shape[0] for n in masked.modules)
    tiny_pipe.load_unlearning_adapter(masked)
    assert np.abs(tiny_images(tiny_pipe)[0] - base[0]).max() > 1e-4
    with pytest.raises(InvalidConfigError, match="optimizer"):
        SemuConfig(optimizer="sgd")
