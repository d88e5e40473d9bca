"""Robustness checks of the evaluation: membership-inference AUC, adversarial prompts, relearning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concept_erase.errors import InvalidConfigError
from concept_erase.evaluation.membership import auc, denoising_losses, membership_auc, semu_forget_samples
from tests.test_evaluation import TINY_KW, MeanColourClassifier, _config, _tiny_adapter
from tests.test_evaluation import eval_setup  # noqa: F401  (fixture)


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def _unchanged(pipe, saved):
    return all(torch.equal(saved[k], v) for k, v in pipe.unet.state_dict().items())


def _flags(pipe):
    return {n: p.requires_grad for m in (pipe.unet, pipe.text_encoder) for n, p in m.named_parameters()}


# ----------------------------------------------------------------------------- AUC
def test_auc_matches_torchmetrics_with_ties():
    from torchmetrics.classification import BinaryAUROC

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(1, 8, 55).astype(float)  # many ties
    expected = BinaryAUROC()(torch.tensor(np.concatenate([pos, neg])),
                             torch.tensor([1] * len(pos) + [0] * len(neg)))
    assert auc(pos, neg) == pytest.approx(float(expected), abs=1e-6)
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    with pytest.raises(InvalidConfigError, match="both classes"):
        auc([], [1.0])


def test_membership_auc_is_half_on_identically_distributed_sets(tiny_pipe):
    g = torch.Generator().manual_seed(0)
    n = 48
    x_a, x_b = torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 4, 8, 8, generator=g)
    from concept_erase.diffusion import encode_prompts

    c = encode_prompts(tiny_pipe, ["a red circle", "a red star"] * (n // 2))
    result = membership_auc(tiny_pipe, (x_a, c), (x_b, c), timesteps=(200, 600))
    assert abs(result["auc"] - 0.5) < 0.15  # sd of the AUC under the null is about 0.06 here
    assert result["n_members"] == result["n_nonmembers"] == n
    # the same samples on both sides: exactly 0.5
    same = membership_auc(tiny_pipe, (x_a, c), (x_a, c), timesteps=(200,))
    assert same["auc"] != 1.0 and same["member_loss"] > 0


def test_denoising_losses_are_per_sample_and_deterministic(tiny_pipe):
    from concept_erase.diffusion import encode_prompts

    x = torch.randn(5, 4, 8, 8)
    c = encode_prompts(tiny_pipe, ["a red circle"] * 5)
    a = denoising_losses(tiny_pipe, x, c, timesteps=(300,), seed=1)
    b = denoising_losses(tiny_pipe, x[:3], c[:3], timesteps=(300,), seed=1, batch_size=2)
    assert a.shape == (5,) and np.allclose(a[:3], b, rtol=1e-5)


def test_semu_forget_samples_regenerate_the_training_data(tiny_pipe, tmp_path):
    from concept_erase.adapter import UnlearningAdapter

    meta = UnlearningAdapter.load(_tiny_adapter(tiny_pipe, tmp_path / "a.safetensors")).metadata
    (x_in, c_in), (x_out, c_out) = semu_forget_samples(tiny_pipe, meta, limit=4)
    assert x_in.shape == x_out.shape and x_in.shape[0] == 4 and c_in.shape[0] == 4
    assert not torch.allclose(x_in, x_out)  # other seeds
    with pytest.raises(InvalidConfigError, match="no SEMU config"):
        semu_forget_samples(tiny_pipe, {"method": "esd"})


# ----------------------------------------------------------------------------- adversarial attack
def test_adversarial_attack_smoke(eval_setup):
    from concept_erase.evaluation.adversarial import AttackConfig, adversarial_attack, attack_prompt

    pipe, _, adapter = eval_setup
    target = torch.randn(2, 4, 8, 8)
    saved = _state(pipe)
    pipe.load_unlearning_adapter(adapter, adapter_name="red")
    try:
        cfg = AttackConfig(num_tokens=3, steps=3, noise_draws=2)
        flags = _flags(pipe)
        found = attack_prompt(pipe, "a red circle", target, cfg)
        assert _flags(pipe) == flags
        assert found["adversarial_prompt"].startswith("a red circle ") and len(found["tokens"]) == 3
        assert np.isfinite(found["loss"]) and found["prompt_embeds"].shape[0] == 1
        # projected: the embeddings are exactly those of a real token sequence (prompt + 3 vocabulary tokens)
        tok = pipe.tokenizer
        assert not set(found["tokens"]) & set(tok.all_special_ids)
        ids = tok("a red circle").input_ids[:-1] + found["tokens"] + [tok.eos_token_id]
        ids += [tok.pad_token_id] * (tok.model_max_length - len(ids))
        with torch.no_grad():
            plain = pipe.text_encoder(torch.tensor([ids]))[0]
        assert torch.allclose(plain, found["prompt_embeds"], atol=1e-5)
        result = adversarial_attack(pipe, MeanColourClassifier(), ["a red circle"], [target], "red",
                                    config=AttackConfig(num_tokens=2, steps=2, noise_draws=2, project=False),
                                    call_kwargs=TINY_KW)
        assert 0 <= result["asr"] <= 1 and result["n_prompts"] == 1
        assert result["prompts"][0]["adversarial_prompt"] is None  # free vectors: no text
    finally:
        pipe.unload_unlearning_adapter()
    assert _unchanged(pipe, saved)
    with pytest.raises(InvalidConfigError, match="num_tokens"):
        AttackConfig(num_tokens=0)


# ----------------------------------------------------------------------------- relearning
def test_relearning_attack_restores_the_weights(eval_setup):
    from concept_erase.evaluation.relearning import RelearnConfig, relearning_attack
    from concept_erase.diffusion import encode_prompts

    pipe, _, adapter = eval_setup
    saved = _state(pipe)
    latents = torch.randn(4, 4, 16, 16)
    cond = encode_prompts(pipe, ["a red circle", "a red square"] * 2)
    pipe.load_unlearning_adapter(adapter, adapter_name="red")
    pipe.fuse_unlearning_adapter()
    fused = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    flags = _flags(pipe)
    try:
        result = relearning_attack(pipe, MeanColourClassifier(), latents, cond, ["a red circle", "a red square"], [0, 1],
                                   "red", base_rate=0.5, call_kwargs=TINY_KW,
                                   config=RelearnConfig(steps=2, eval_every=1, learning_rate=1e-2, batch_size=2))
        assert [c["step"] for c in result["curve"]] == [0, 1, 2]
        assert result["trained_parameters"] > 0 and result["base_rate"] == 0.5
        assert all(torch.equal(fused[k], v) for k, v in pipe.unet.state_dict().items()) and _flags(pipe) == flags
    finally:
        pipe.unload_unlearning_adapter()
    assert _unchanged(pipe, saved)
    with pytest.raises(InvalidConfigError, match="No UNet parameter matches"):
        relearning_attack(pipe, MeanColourClassifier(), latents, cond, ["a"], [0], "red",
                          config=RelearnConfig(params="*nothing*"))


# ----------------------------------------------------------------------------- through evaluate
def test_evaluate_with_every_robustness_check(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    saved = _state(pipe)
    config = _config(tmp_path, prompts, adapter, attack=True, attack_steps=2, attack_tokens=2, attack_prompts=1,
                     relearn=True, relearn_steps=2, relearn_eval_every=1, membership=True, membership_samples=4,
                     fid=False)
    report = evaluate(config, pipe=pipe, classifier=MeanColourClassifier(), progress=False)
    rob = report["robustness"]
    assert set(rob) == {"adversarial", "relearning", "membership"}
    assert rob["adversarial"]["red"]["n_prompts"] == 1
    assert len(rob["relearning"]["red"]["curve"]) == 3
    assert 0 <= rob["membership"]["red"]["auc"] <= 1 and 0 <= rob["membership"]["red"]["base_auc"] <= 1
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Adversarial prompts" in md and "Relearning attack" in md and "Membership inference" in md
    assert _unchanged(pipe, saved)


def test_robustness_needs_forget_prompts_and_a_target(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, _, adapter = eval_setup
    plain = tmp_path / "plain.txt"
    plain.write_text("a red circle\na blue star\n", encoding="utf-8")
    with pytest.raises(InvalidConfigError, match="needs forget prompts"):
        evaluate(_config(tmp_path, plain, adapter, attack=True, fid=False), pipe=pipe,
                 classifier=MeanColourClassifier(), progress=False)
