"""What SEMU's γ selects: the per-layer spectra of :func:`gradient_spectra`, and why γ = 1 keeps a
layer's full rank once the gradient is projected perpendicular to a full-rank weight."""

import pytest
import torch

from concept_erase import SemuConfig, erase
from concept_erase.errors import InvalidConfigError
from concept_erase.methods.semu import gradient_spectra, select_rank
from concept_erase.methods.semu.svd import gradient_subspace, prepared_gradient


def test_projection_perpendicular_to_a_full_rank_weight_fills_the_rank():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 2, generator=g), torch.randn(2, 24, generator=g)
    grad = a @ b  # rank 2, as a gradient summed over few token embeddings is low-rank
    weight = torch.randn(16, 24, generator=g)  # full rank; ⟨G, W⟩ ≠ 0, so G⊥ = G − αW with α ≠ 0
    s_grad = torch.linalg.svdvals(grad.double())
    s_proj = torch.linalg.svdvals(prepared_gradient(grad, weight))
    assert select_rank(s_grad, 1.0) == 2
    assert select_rank(s_proj, 1.0) == 16  # G − αW: the weight's full rank comes in with it
    assert select_rank(s_proj, 0.99) == 2  # ...with little energy: a γ below 1 sees through it
    u, _, _ = gradient_subspace(grad, weight, 1.0)
    assert u.shape[1] == 16
    assert torch.allclose(prepared_gradient(grad, weight, project=False), grad.double())


def test_spectra_give_the_ranks_erase_selects(tiny_pipe, tiny_concept, fast_config):
    fast_config.target_modules = ("*attn2.to_k", "*attn2.to_v", "*ff.net.2")
    fast_config.gamma_cross_attention, fast_config.gamma = 0.99, 0.9
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in tiny_pipe.unet.named_parameters()}
    spectra = gradient_spectra(tiny_pipe, tiny_concept, fast_config, progress=False)
    for n, p in tiny_pipe.unet.named_parameters():  # the pipeline is left as it was
        assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] and p.grad is None
    adapter = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    ranks = adapter.metadata["ranks"]
    assert set(spectra) == set(ranks)
    for name, s in spectra.items():
        assert select_rank(s["decomposed"], fast_config.gamma_for(name)) == ranks[name]
        assert s["unprojected"].shape == s["decomposed"].shape
    assert any(select_rank(s["decomposed"], 1.0) > ranks[n] for n, s in spectra.items())  # γ < 1 did select


def test_spectra_follow_the_null_space(tiny_pipe, tiny_concept, fast_config):
    fast_config.target_modules = ("*attn2.to_k", "*attn2.to_v")
    plain = gradient_spectra(tiny_pipe, tiny_concept, fast_config, progress=False)
    fast_config.null_space = 0.9
    null = gradient_spectra(tiny_pipe, tiny_concept, fast_config, progress=False)
    for name in plain:
        assert select_rank(null[name]["decomposed"], 1.0) < select_rank(plain[name]["decomposed"], 1.0)
        assert torch.allclose(null[name]["unprojected"], plain[name]["unprojected"])


def test_spectra_refuse_the_full_ablation(tiny_pipe, tiny_concept):
    with pytest.raises(InvalidConfigError, match="no subspace"):
        gradient_spectra(tiny_pipe, tiny_concept, SemuConfig(parametrization="full"), progress=False)
