"""Robust SEMU (``SemuConfig(adversarial=True)``): the inner attack, the outer update of R only, bad values."""

import pytest
import torch
import torch.nn.functional as F

from concept_erase import SemuConfig, erase
from concept_erase.diffusion import encode_conditioning, unet_prediction
from concept_erase.errors import InvalidConfigError
from concept_erase.methods.semu import trainer
from concept_erase.methods.semu.adversarial import FILLER, AdversarialPrompts


def _prompts_and_latents(pipe):
    prompts = ["a red circle", "a red square on a dark background"]
    c = encode_conditioning(pipe, prompts)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randn(2, 4, 8, 8, generator=g)
    return prompts, c, x_t, torch.tensor([200, 700]), target


def _eps(pipe):
    def eps(x, tt, cond):
        return unet_prediction(pipe.unet, x, tt, cond)

    return eps


def test_attack_lowers_its_objective_through_the_text_encoder(tiny_pipe):
    """The inner attack appends soft tokens before each prompt's end token, lowers the UnlearnDiffAtk
    objective, keeps its tokens within the vocabulary's largest norm, and its conditioning is what
    the text encoder makes of the prompt with those tokens (so the prompt's own positions are unchanged:
    CLIP's causal mask)."""
    prompts, c, x_t, t, target = _prompts_and_latents(tiny_pipe)
    adv = AdversarialPrompts(tiny_pipe, prompts, num_tokens=3, step_size=0.2,
                             generator=torch.Generator().manual_seed(0))
    lengths = [len(tiny_pipe.tokenizer(p).input_ids) - 1 for p in prompts]
    assert adv.positions.tolist() == [list(range(n, n + 3)) for n in lengths]
    assert adv.texts == [p + FILLER * 3 for p in prompts]
    rows = torch.tensor([0, 1])
    eps = _eps(tiny_pipe)
    # the attack starts from vocabulary tokens: its conditioning is the text encoder's on those token ids
    tok = tiny_pipe.tokenizer
    ids = tok(adv.texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    for i in range(2):
        ids[i, adv.positions[i]] = adv.tokens[i]
    with torch.no_grad():
        assert torch.allclose(adv.conditioning(rows).hidden_states, tiny_pipe.text_encoder(ids)[0], atol=1e-5)
        before = F.mse_loss(eps(x_t, t, adv.conditioning(rows)), target)
    for _ in range(4):
        attacked = adv.attack(eps, x_t, t, target, rows, steps=2)
    with torch.no_grad():
        after = F.mse_loss(eps(x_t, t, attacked), target)
    assert after < before  # the attack finds prompts under which the model denoises the concept better
    assert not attacked.hidden_states.requires_grad
    h, h_adv = c.hidden_states, attacked.hidden_states
    for i, n in enumerate(lengths):
        assert torch.allclose(h[i, :n], h_adv[i, :n], atol=1e-5)  # before the tokens: the clean prompt
        assert not torch.allclose(h[i, n:], h_adv[i, n:])
    table = tiny_pipe.text_encoder.get_input_embeddings().weight
    assert (adv.delta[0].norm(dim=-1) <= table.norm(dim=-1).max() * (1 + 1e-5)).all()
    assert all(not p.requires_grad or p.grad is None for p in tiny_pipe.text_encoder.parameters())


def test_carried_tokens_are_the_attack_s_on_the_retain_prompts(tiny_pipe):
    """``carried`` appends the current tokens of a forget prompt to a retain prompt at the retain prompt's
    own reserved positions: before the attack (vocabulary tokens) exactly the text encoder's output on
    those token ids; after it, the retain prompt's own positions are unchanged and the rest moves."""
    prompts, _, x_t, t, target = _prompts_and_latents(tiny_pipe)
    retain = ["a blue circle", "a green star on a light background"]
    adv = AdversarialPrompts(tiny_pipe, prompts, num_tokens=3, step_size=0.2,
                             generator=torch.Generator().manual_seed(0), carriers=retain)
    texts, positions = adv.carriers
    assert texts == [p + FILLER * 3 for p in retain]
    rows, carriers = torch.tensor([1, 0]), torch.tensor([0, 1])
    tok = tiny_pipe.tokenizer
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    for i in range(2):
        ids[i, positions[i]] = adv.tokens[rows[i]]
    with torch.no_grad():
        assert torch.allclose(adv.carried(carriers, rows).hidden_states, tiny_pipe.text_encoder(ids)[0], atol=1e-5)
        plain = encode_conditioning(tiny_pipe, retain).hidden_states
    adv.attack(_eps(tiny_pipe), x_t, t, target, torch.tensor([0, 1]), steps=2)  # the tokens move off the vocabulary
    carried = adv.carried(carriers, rows)
    assert not carried.hidden_states.requires_grad
    for i, p in enumerate(retain):
        n = len(tok(p).input_ids) - 1
        assert torch.allclose(carried.hidden_states[i, :n], plain[i, :n], atol=1e-5)  # the prompt's own positions
        assert not torch.allclose(carried.hidden_states[i, n:], plain[i, n:])
    without = AdversarialPrompts(tiny_pipe, prompts, num_tokens=3, step_size=0.2, generator=torch.Generator())
    with pytest.raises(InvalidConfigError, match="carriers"):
        without.carried(carriers, rows)


def test_adversarial_retain_adds_the_carried_retain_term(tiny_pipe, tiny_concept, fast_config, monkeypatch):
    """With ``adversarial_retain`` every step runs the carried retain batch, R changes, the base weights do not."""
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    calls = []
    real = AdversarialPrompts.carried

    def counting(self, carrier_rows, rows):
        calls.append((carrier_rows.clone(), rows.clone()))
        return real(self, carrier_rows, rows)

    monkeypatch.setattr(AdversarialPrompts, "carried", counting)
    config = fast_config.with_overrides(adversarial=True)
    robust = erase(tiny_pipe, tiny_concept, config, progress=False)
    assert not calls
    both = erase(tiny_pipe, tiny_concept, config.with_overrides(adversarial_retain=True), progress=False)
    assert len(calls) == config.steps
    assert all(len(c) == len(r) == config.batch_size for c, r in calls)
    assert all(int(c.max()) < len(tiny_concept.retain) and int(r.max()) < len(tiny_concept.forget) for c, r in calls)
    for k, v in tiny_pipe.unet.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert both.metadata["config"]["adversarial_retain"] is True
    diffs = [(both.tensors[k] - robust.tensors[k]).abs().max().item() for k in robust.tensors if "lora_B" in k]
    assert max(diffs) > 0


def test_adversarial_retain_needs_the_attack():
    with pytest.raises(InvalidConfigError, match="adversarial=True"):
        SemuConfig(adversarial_retain=True)
    with pytest.raises(InvalidConfigError, match="adversarial_retain"):
        SemuConfig(adversarial=True, adversarial_retain="yes")


def test_tokens_that_do_not_fit_raise(tiny_pipe):
    long = "a red circle on a dark background"  # 8 of the tokenizer's 16 positions
    with pytest.raises(InvalidConfigError, match="adversarial_tokens"):
        AdversarialPrompts(tiny_pipe, [long], num_tokens=8, step_size=0.1, generator=torch.Generator())


def test_robust_erase_trains_r_only_and_differs_from_plain(tiny_pipe, tiny_concept, fast_config, monkeypatch):
    """The adversarial inner loop runs on the tiny pipeline, changes what R learns, and leaves every
    base weight bit-identical."""
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    calls = {"attack": 0}
    real = AdversarialPrompts.attack

    def counting(self, *args, **kwargs):
        calls["attack"] += 1
        out = real(self, *args, **kwargs)
        # while R trains, no base weight may require a gradient
        assert not any(p.requires_grad for n, p in tiny_pipe.unet.named_parameters() if not n.endswith(".r"))
        return out

    monkeypatch.setattr(AdversarialPrompts, "attack", counting)
    plain = erase(tiny_pipe, tiny_concept, fast_config, progress=False)
    assert calls["attack"] == 0
    robust = erase(tiny_pipe, tiny_concept, fast_config.with_overrides(adversarial=True, adversarial_steps=2),
                   progress=False)
    assert calls["attack"] == fast_config.steps
    for k, v in tiny_pipe.unet.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert robust.metadata["config"]["adversarial"] is True
    diffs = [(robust.tensors[k] - plain.tensors[k]).abs().max().item() for k in plain.tensors if "lora_B" in k]
    assert max(diffs) > 0  # same subspace, same seed: only the attacked term makes R differ
    assert set(robust.tensors) == set(plain.tensors)


def test_robust_erase_with_the_target_pool(tiny_pipe, tiny_concept, fast_config):
    adapter = erase(tiny_pipe, tiny_concept, fast_config.with_overrides(adversarial=True, target_pool=8),
                    progress=False)
    assert adapter.metadata["final_loss"] is not None


def test_forget_term_is_shared_by_both_sides(tiny_pipe, tiny_concept, fast_config, monkeypatch):
    """The clean and the attacked forget losses go through one definition (one call each per step),
    on predictions that differ (the attacked conditioning changes the adapted model's output)."""
    seen = []
    real = trainer._forget_term

    def spy(pred, y, sign):
        seen.append((pred.detach().clone(), y))
        return real(pred, y, sign)

    monkeypatch.setattr(trainer, "_forget_term", spy)
    erase(tiny_pipe, tiny_concept, fast_config.with_overrides(adversarial=True, steps=2), progress=False)
    assert len(seen) == 4
    (clean, y0), (attacked, y1) = seen[:2]
    assert y0 is y1  # the same teacher: the base model on the clean prompt
    assert not torch.equal(clean, attacked)


def test_joint_forward_equals_separate_calls(tiny_pipe):
    _, c, x_t, t, _ = _prompts_and_latents(tiny_pipe)
    eps = _eps(tiny_pipe)
    parts = [(x_t, t, c), (x_t[:1] * 0.5, t[:1], c[[1]])]
    with torch.no_grad():
        joint = trainer._joint(eps, parts)
        separate = [eps(*p) for p in parts]
    for a, b in zip(joint, separate):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("field,value", [("adversarial_steps", 0), ("adversarial_tokens", 0),
                                         ("adversarial_step_size", 0.0), ("adversarial_weight", -1.0),
                                         ("adversarial", "yes")])
def test_bad_values_raise(field, value):
    with pytest.raises(InvalidConfigError, match=field.split("_")[0]):
        SemuConfig(**{field: value})
