"""SEMU's two cost options: the precomputed target pool (``target_pool``) and the streamed gradient
accumulation (``stream_gradient``). Each must compute what the default path computes."""

import pytest
import torch
import torch.nn.functional as F

from concept_erase import SemuConfig, erase
from concept_erase.diffusion import encode_conditioning, null_conditioning, unet_prediction
from concept_erase.errors import InvalidConfigError
from concept_erase.methods.semu import trainer
from concept_erase.objectives import OBJECTIVES, forget_loss, forget_target


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_forget_target_gives_the_per_step_loss(tiny_pipe, name):
    """sign · MSE(ε(x_t, c_f), y) with y computed ahead equals the objective evaluated in one go."""
    unet = tiny_pipe.unet
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 900])
    target = torch.randn(3, 4, 8, 8, generator=g)
    c_f = encode_conditioning(tiny_pipe, ["a red circle", "a red square", "a red star"])
    c_a = encode_conditioning(tiny_pipe, ["a gray circle", "a gray square", "a gray star"])
    c_null = null_conditioning(tiny_pipe).expand(3)
    # a stand-in "adapted" model: the same UNet with its output shifted, so the two differ
    adapted = lambda x, tt, c: unet_prediction(unet, x, tt, c) * 1.1  # noqa: E731
    base = lambda x, tt, c: unet_prediction(unet, x, tt, c)  # noqa: E731
    with torch.no_grad():
        direct = forget_loss(name)(adapted, base, x_t, t, target, c_f, c_a, c_null, eta=0.7)
        y, sign = forget_target(name, base, x_t, t, target, c_f, c_a, c_null, eta=0.7)
        pooled = sign * F.mse_loss(adapted(x_t, t, c_f), y)
    assert torch.allclose(direct, pooled, rtol=1e-6, atol=1e-7)
    assert not y.requires_grad


def test_target_pool_trains_without_a_base_forward_per_step(tiny_pipe, tiny_concept, fast_config, monkeypatch):
    """With a pool, the base model runs only while the pool is built (in chunks), never inside a step."""
    calls = {"base": 0}
    real = trainer._eps_within

    def counting(eps, context):
        inner = real(eps, context)

        def base_eps(x, t, c):
            calls["base"] += 1
            return inner(x, t, c)

        return base_eps

    monkeypatch.setattr(trainer, "_eps_within", counting)
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    fast_config.steps = 6
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    per_step = calls["base"]
    calls["base"] = 0
    fast_config.target_pool = 16
    adapter = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert per_step == 2 * fast_config.steps  # relabel teacher + retain target, every step
    assert calls["base"] == 2  # one chunk of 16 per side, for all 6 steps
    assert adapter.metadata["config"]["target_pool"] == 16
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # the base is untouched
    # it trained: the adapter is not zero
    assert any(adapter.factors(m)[1].abs().max() > 0 for m in adapter.modules)


def test_pool_chunks_halve_after_out_of_memory_and_other_errors_pass():
    seen = []

    def fn(chunk):
        seen.append(chunk)
        if chunk > 8:  # the message PyTorch's CUDA allocator raises
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.ones(chunk)

    assert trainer._in_chunks_that_fit(fn, 32).shape == (8,)
    assert seen == [32, 16, 8]

    def broken(chunk):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        trainer._in_chunks_that_fit(broken, 32)


def test_pool_built_in_smaller_chunks_after_out_of_memory_trains_the_same(tiny_pipe, tiny_concept, fast_config,
                                                                         monkeypatch):
    """An out-of-memory error while the pool is built costs a retry with smaller chunks, not the run."""
    fast_config.steps, fast_config.target_pool = 6, 12
    plain = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    real = trainer._eps_within
    sizes = []

    def tight(eps, context):
        inner = real(eps, context)

        def base_eps(x, t, c):
            sizes.append(len(x))
            if len(x) > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return inner(x, t, c)

        return base_eps

    monkeypatch.setattr(trainer, "_eps_within", tight)
    retried = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert max(sizes) == 12 and 4 in sizes  # the first try held the whole pool; the retry chunks of 4
    for m in plain.modules:
        for a, b in zip(plain.factors(m), retried.factors(m)):
            assert torch.allclose(a, b, atol=1e-5)


def test_the_pool_is_the_default_and_no_larger_than_the_steps_draw(tiny_pipe, tiny_concept, fast_config,
                                                                  monkeypatch):
    from concept_erase import SemuConfig

    assert SemuConfig().target_pool == 256
    sizes = []
    real = trainer._in_chunks_that_fit
    monkeypatch.setattr(trainer, "_in_chunks_that_fit", lambda fn, chunk: sizes.append(chunk) or real(fn, chunk))
    built = []
    real_pool = trainer._Pool
    monkeypatch.setattr(trainer, "_Pool", lambda *a: built.append(len(a[1])) or real_pool(*a))
    fast_config.target_pool = 256
    fast_config.steps, fast_config.batch_size = 3, 2
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert built == [6, 6]  # 3 steps x 2 examples per side, not 256
    built.clear()
    fast_config.steps = 0
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert built == []  # no steps: no pool


def test_streamed_gradient_gives_the_same_subspaces(tiny_pipe, tiny_concept, fast_config, monkeypatch):
    fast_config.steps = 0
    fast_config.gamma = 0.9
    fast_config.target_modules = ("*attn2.to_k", "*attn2.to_v", "*attn1.to_q")
    seen = {}
    real = trainer._gradient_subspaces

    def capture(*args, **kwargs):
        out = real(*args, **kwargs)
        seen[args[3].stream_gradient] = out
        return out

    monkeypatch.setattr(trainer, "_gradient_subspaces", capture)
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    fast_config.stream_gradient = True
    erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    plain, streamed = seen[False], seen[True]
    assert plain.keys() == streamed.keys() and len(plain) > 2
    for name in plain:
        (u1, v1), (u2, v2) = plain[name], streamed[name]
        assert u1.shape == u2.shape
        # the same subspaces (singular vectors are defined up to sign)
        assert torch.allclose(u1.abs(), u2.abs(), atol=1e-4) and torch.allclose(v1.abs(), v2.abs(), atol=1e-4)


def test_layer_groups_respect_the_one_layer_bound():
    g = torch.Generator().manual_seed(1)
    shapes = [(int(a), int(b)) for a, b in torch.randint(1, 40, (30, 2), generator=g)]
    weights = {f"l{i}": torch.zeros(s) for i, s in enumerate(shapes)}
    groups = trainer._layer_groups(weights)
    largest = max(w.numel() for w in weights.values())
    assert [n for group in groups for n in group] == list(weights)  # every layer once, in order
    assert all(sum(weights[n].numel() for n in group) <= largest for group in groups)
    assert len(groups) < len(weights)  # small layers share a group


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_pool=-1), "target_pool"),
    (dict(target_pool=2.5), "target_pool"),
    (dict(stream_gradient="yes"), "stream_gradient"),
])
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(InvalidConfigError, match=match):
        SemuConfig(**kwargs)


def test_budget_ranks_fit_and_follow_explained_variance():
    g = torch.Generator().manual_seed(3)
    spectra = {f"l{i}": torch.sort(torch.rand(int(n), generator=g) ** 3, descending=True).values
               for i, n in enumerate(torch.randint(2, 60, (12,), generator=g))}
    full = sum(len(s) ** 2 for s in spectra.values())
    for budget in (12, 50, 400, full // 3, full):
        ranks = trainer.budget_ranks(spectra, budget)
        assert sum(r * r for r in ranks.values()) <= budget
        assert all(1 <= ranks[n] <= len(s) for n, s in spectra.items())
    assert trainer.budget_ranks(spectra, full) == {n: len(s) for n, s in spectra.items()}  # nothing to cut
    with pytest.raises(InvalidConfigError, match="at least 12"):
        trainer.budget_ranks(spectra, 11)


def test_erase_respects_the_trainable_budget(tiny_pipe, tiny_concept, fast_config):
    fast_config.steps = 1
    fast_config.target_modules = ("*attn2.to_k", "*attn2.to_v")
    unconstrained = erase(tiny_pipe, tiny_concept, fast_config, progress=False).metadata
    fast_config.max_trainable_fraction = unconstrained["trainable_fraction"] / 4
    meta = erase(tiny_pipe, tiny_concept, fast_config, progress=False).metadata
    assert meta["trainable_fraction"] <= fast_config.max_trainable_fraction
    assert meta["trainable_parameters"] == sum(r * r for r in meta["ranks"].values())
    assert all(meta["ranks"][n] <= unconstrained["ranks"][n] for n in meta["ranks"])
    assert sum(meta["ranks"].values()) < sum(unconstrained["ranks"].values())


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan")])
def test_bad_budget_is_refused(value):
    with pytest.raises(InvalidConfigError, match="max_trainable_fraction"):
        SemuConfig(max_trainable_fraction=value)
