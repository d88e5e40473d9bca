"""The peer methods (ESD-x/-u, UCE, gradient ascent, task vectors) and SEMU behind `erase_with`:
loadable adapters, untouched pipelines, parameter budgets, UCE's closed form, exact task-vector
negation, the dense -> LoRA compression, and every bad-input path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from concept_erase import UnlearningAdapter, unet_fingerprint
from concept_erase.errors import InvalidConfigError, TrainingDivergedError
from concept_erase.methods import METHODS, EsdConfig, erase_with, method_config
from concept_erase.methods.dense import compress_delta
from concept_erase.methods.esd import partial_sample
from concept_erase.methods.uce import UceConfig, token_embeddings, uce_closed_form
from concept_erase.diffusion import encode_prompts

from .conftest import TINY_CALL, tiny_images

# A few steps each: enough to move the weights, fast on 2 CPU cores.
FAST = {
    "semu": dict(steps=3, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2, gradient_batches=2,
                 learning_rate=0.05),
    "esd-x": dict(iterations=3, sample_steps=3, learning_rate=1e-2),
    "esd-u": dict(iterations=2, sample_steps=3, learning_rate=1e-3),
    "uce": dict(),
    "gradient-ascent": dict(steps=3, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2,
                            learning_rate=1e-3),
    "task-vector": dict(steps=3, num_forget_images=4, sample_steps=2, batch_size=2, learning_rate=1e-3),
    "simu": dict(steps=3, num_forget_images=4, num_retain_images=2, sample_steps=2, batch_size=2, attribution_images=4,
                 learning_rate=1e-2),
}
# Not LoRA factors: the codebook method's file and loading are tested in test_codebook.py.
NOT_LORA = {"codebook"}
KV = ("attn2.to_k", "attn2.to_v")
# Which Linear/Conv2d layers each method may touch, and whether it must touch all of them.
BUDGET = {
    "semu": (lambda n: n.endswith(KV), False),
    "esd-x": (lambda n: ".attn2." in n, True),
    "esd-u": (lambda n: ".attn2." not in n, True),
    "uce": (lambda n: n.endswith(KV), True),
    "gradient-ascent": (lambda n: True, True),
    "task-vector": (lambda n: True, True),
    "simu": (lambda n: ".attn1." in n or ".attn2." in n or ".ff.net." in n, False),
}
REQUIRED_METADATA = ("method", "concept", "config", "trainable_parameters", "unet_parameters", "trainable_fraction",
                     "base_fingerprint", "seconds", "compression_error")


def _weight_layers(unet) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def test_every_method_is_registered_and_tested():
    assert set(METHODS) == set(FAST) | NOT_LORA == {"semu", "esd-x", "esd-u", "uce", "gradient-ascent", "task-vector",
                                                    "simu", "codebook"}


@pytest.mark.parametrize("method", list(FAST))
def test_method_gives_a_loadable_adapter_within_budget_and_leaves_the_pipeline_alone(method, tiny_pipe, tiny_concept,
                                                                                     tmp_path):
    unet = tiny_pipe.unet
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    requires_grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    training = unet.training
    base = tiny_images(tiny_pipe)

    adapter = erase_with(method, tiny_pipe, tiny_concept, progress=False, **FAST[method])

    # the pipeline is exactly as it was
    after = unet.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in unet.parameters())
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == requires_grad and unet.training == training

    meta = adapter.metadata
    assert all(k in meta for k in REQUIRED_METADATA), set(REQUIRED_METADATA) - set(meta)
    assert meta["method"] == method and meta["concept"]["name"] == "red"
    assert meta["base_fingerprint"] == unet_fingerprint(unet)
    assert meta["unet_parameters"] == sum(p.numel() for p in unet.parameters())
    assert meta["trainable_fraction"] == pytest.approx(meta["trainable_parameters"] / meta["unet_parameters"])
    assert 0 <= meta["compression_error"] <= meta["config"].get("lora_max_error", 0.0) + 1e-6

    # parameter budget: which layers it touches, and what it counts as trainable
    layers = _weight_layers(unet)
    allowed, all_of_them = BUDGET[method]
    assert adapter.modules and all(allowed(m) for m in adapter.modules), [m for m in adapter.modules if not allowed(m)]
    if all_of_them:
        assert set(adapter.modules) == {n for n in layers if allowed(n)}
        assert meta["trainable_parameters"] == sum(layers[n].weight.numel() for n in adapter.modules)

    # the file round-trips and loads through diffusers; the forget prompt's output changes
    path = adapter.save(tmp_path / f"{method}.safetensors")
    loaded = UnlearningAdapter.load(path)
    assert loaded.metadata["config"] == json.loads(json.dumps(meta["config"])) and loaded.ranks == adapter.ranks
    assert type(method_config(method)).from_dict(loaded.metadata["config"]) == method_config(method, **FAST[method])
    tiny_pipe.load_unlearning_adapter(str(path))
    assert np.abs(tiny_images(tiny_pipe)[0] - base[0]).max() > 1e-3


def test_esd_x_strict_trains_only_keys_and_values(tiny_pipe, tiny_concept):
    strict = erase_with("esd-x", tiny_pipe, tiny_concept, progress=False, train_method="esd-x-strict", iterations=1,
                        sample_steps=2)
    assert set(strict.modules) == {n for n in _weight_layers(tiny_pipe.unet) if n.endswith(KV)}
    assert strict.metadata["method"] == "esd-x-strict"


def test_esd_partial_sampling_follows_the_pipeline_sampler(tiny_pipe):
    """Run to the end, ESD's x_t sampler is the pipeline's own denoising loop (same noise, same guidance)."""
    steps, guidance = 3, 3.0
    c, null = encode_prompts(tiny_pipe, ["a red circle"]), encode_prompts(tiny_pipe, [""])
    scheduler = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    ours = partial_sample(tiny_pipe, scheduler, c, null, steps, guidance=guidance,
                          generator=torch.Generator().manual_seed(3))
    theirs = tiny_pipe(prompt_embeds=c, negative_prompt_embeds=null, num_inference_steps=steps,
                       guidance_scale=guidance, output_type="latent", generator=torch.Generator().manual_seed(3),
                       height=TINY_CALL["height"], width=TINY_CALL["width"]).images
    assert torch.allclose(ours, theirs, atol=1e-5)
    scheduler.set_timesteps(steps)
    x0 = partial_sample(tiny_pipe, scheduler, c, null, 0, guidance=guidance, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x0, noise * scheduler.init_noise_sigma)


# ---------------------------------------------------------------- UCE
def test_uce_closed_form_equals_a_direct_least_squares_solve():
    g = torch.Generator().manual_seed(0)
    out, d, n, m = 7, 5, 3, 2
    shapes = ((out, d), (n, d), (n, out), (m, d))
    w0, c_e, v_e, c_p = (torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes)
    lamb, s_e, s_p = 0.3, 1.7, 0.6
    w = uce_closed_form(w0, c_e, v_e, c_p, lamb=lamb, erase_scale=s_e, preserve_scale=s_p)
    # min s_e‖C_e Wᵀ − V_e‖² + s_p‖C_p Wᵀ − C_p W₀ᵀ‖² + λ‖Wᵀ − W₀ᵀ‖², stacked as one lstsq problem
    a = torch.cat([s_e ** 0.5 * c_e, s_p ** 0.5 * c_p, lamb ** 0.5 * torch.eye(d, dtype=torch.float64)])
    b = torch.cat([s_e ** 0.5 * v_e, s_p ** 0.5 * c_p @ w0.T, lamb ** 0.5 * w0.T])
    w_lstsq = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(w, w_lstsq, atol=1e-10)
    # no preserve set: the same problem without those rows
    w_np = uce_closed_form(w0, c_e, v_e, lamb=lamb, erase_scale=s_e)
    keep = torch.cat([torch.arange(n), torch.arange(n + m, n + m + d)])
    assert torch.allclose(w_np, torch.linalg.lstsq(a[keep], b[keep]).solution.T, atol=1e-10)


def test_uce_maps_the_forget_tokens_onto_the_anchor_outputs(tiny_pipe, tiny_concept):
    # with a strong erase term, W' c_i ≈ W₀ c*_i on every edited projection (one token per prompt)
    adapter = erase_with("uce", tiny_pipe, tiny_concept, progress=False, erase_scale=1e4, use_retain=False,
                         tokens="last")
    assert adapter.metadata["compression_error"] < 1e-4 and max(adapter.ranks.values()) <= len(tiny_concept.forget)
    c_e, c_star = token_embeddings(tiny_pipe, tiny_concept.forget, tiny_concept.anchor)
    for name in adapter.modules:
        w0 = tiny_pipe.unet.get_submodule(name).weight.detach()
        w = w0 + adapter.delta_weight(name)
        target = c_star @ w0.T
        assert (c_e @ w.T - target).norm() < 1e-3 * target.norm()
    assert (c_e @ w0.T - target).norm() > 0.1 * target.norm()  # and the edit did something
    # the factored solve used by erase_uce is eq. 7 itself
    reference = uce_closed_form(w0, c_e, target, lamb=0.5, erase_scale=1e4) - w0.double()
    assert torch.allclose(adapter.delta_weight(name).double(), reference, atol=1e-5 * reference.abs().max().item())


def test_uce_without_to_k_edits_only_values(tiny_pipe, tiny_concept):
    adapter = erase_with("uce", tiny_pipe, tiny_concept, progress=False, with_to_k=False, tokens="last_to_end")
    assert adapter.modules and all(m.endswith("attn2.to_v") for m in adapter.modules)
    assert adapter.metadata["erase_tokens"] > len(tiny_concept.forget)  # several tokens per prompt


# ---------------------------------------------------------------- task vectors
def test_task_vector_with_scale_zero_reproduces_the_base_exactly(tiny_pipe, tiny_concept):
    base = tiny_images(tiny_pipe)
    adapter = erase_with("task-vector", tiny_pipe, tiny_concept, progress=False, scale=0.0, **FAST["task-vector"])
    assert all(torch.count_nonzero(adapter.delta_weight(m)) == 0 for m in adapter.modules)
    tiny_pipe.load_unlearning_adapter(adapter)
    assert np.array_equal(tiny_images(tiny_pipe), base)
    tiny_pipe.fuse_unlearning_adapter()
    assert np.array_equal(tiny_images(tiny_pipe), base)


def test_task_vector_is_linear_in_its_scale(tiny_pipe, tiny_concept):
    fast = {**FAST["task-vector"], "steps": 1}
    one = erase_with("task-vector", tiny_pipe, tiny_concept, progress=False, scale=1.0, **fast)
    minus = erase_with("task-vector", tiny_pipe, tiny_concept, progress=False, scale=-1.0, **fast)
    for m in one.modules:  # θ − s·τ: s = −1 re-adds exactly what s = 1 subtracts
        assert torch.allclose(minus.delta_weight(m), -one.delta_weight(m), atol=1e-6)


# ---------------------------------------------------------------- dense deltas -> LoRA
def test_compression_recovers_a_low_rank_delta_exactly():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(20, 3, generator=g) @ torch.randn(3, 30, generator=g)
    a, b, err = compress_delta(delta, max_error=1e-6)
    assert a.shape == (3, 30) and b.shape == (20, 3) and err < 1e-6
    assert torch.allclose(b @ a, delta, atol=1e-4)


def test_compression_of_a_conv_kernel_keeps_the_smallest_rank_within_the_error():
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(8, 4, 3, 3, generator=g)
    a, b, err = compress_delta(delta, max_error=0.3)
    r = a.shape[0]
    assert a.shape == (r, 4, 3, 3) and b.shape == (8, r, 1, 1)
    recon = (b.flatten(1) @ a.flatten(1)).reshape(delta.shape)
    assert err == pytest.approx(float((delta - recon).norm() / delta.norm()), rel=1e-4) and err <= 0.3
    s = torch.linalg.svdvals(delta.reshape(8, -1).double())
    assert math.sqrt(float((s[r - 1:] ** 2).sum() / (s ** 2).sum())) > 0.3  # one rank fewer would not do
    a2, _, err2 = compress_delta(delta, max_error=0.0, max_rank=2)  # a rank cap wins; the error says what it cost
    assert a2.shape[0] == 2 and err2 == pytest.approx(math.sqrt(float((s[2:] ** 2).sum() / (s ** 2).sum())), rel=1e-4)


def test_compression_of_a_zero_delta_is_exactly_zero():
    a, b, err = compress_delta(torch.zeros(6, 5))
    assert a.shape == (1, 5) and b.shape == (6, 1) and err == 0.0 and not (b @ a).any()


# ---------------------------------------------------------------- bad input
def test_unknown_method_lists_the_known_ones(tiny_pipe, tiny_concept):
    with pytest.raises(InvalidConfigError, match="Unknown method 'esd-z'.*esd-x.*uce") as e:
        erase_with("esd-z", tiny_pipe, tiny_concept)
    assert isinstance(e.value, ValueError)


def test_unknown_setting_names_it_and_the_valid_ones():
    with pytest.raises(InvalidConfigError, match="EsdConfig has no setting 'iteration'.*iterations"):
        method_config("esd-x", iteration=3)
    with pytest.raises(InvalidConfigError, match="takes a UceConfig, but `config` is a EsdConfig"):
        method_config("uce", EsdConfig())
    assert method_config("esd-u", iterations=7).train_method == "esd-u"
    assert method_config("uce", UceConfig(lamb=0.1), erase_scale=2.0) == UceConfig(lamb=0.1, erase_scale=2.0)


@pytest.mark.parametrize(
    "method,field,value",
    [
        ("esd-x", "train_method", "esd-q"), ("esd-x", "iterations", 0), ("esd-x", "learning_rate", -1e-5),
        ("esd-u", "negative_guidance", float("nan")), ("esd-x", "lora_max_error", 1.5), ("esd-x", "lora_max_rank", 0),
        ("uce", "tokens", "first"), ("uce", "lamb", 0.0), ("uce", "preserve_scale", -1.0),
        ("gradient-ascent", "alpha", 0.0), ("gradient-ascent", "max_timestep", 0),
        ("gradient-ascent", "target_modules", ()),
        ("task-vector", "scale", float("inf")), ("task-vector", "batch_size", 0), ("task-vector", "steps", 2.5),
    ],
)
def test_bad_config_values_name_the_field_and_value(method, field, value):
    with pytest.raises(InvalidConfigError, match=f"`{field}`.*{value!r}" if field != "target_modules" else field):
        method_config(method, **{field: value})


def test_no_matching_layer_is_a_clear_error(tiny_pipe, tiny_concept):
    with pytest.raises(InvalidConfigError, match=r"No nn.Linear or nn.Conv2d layer .*\['\*nothing\*'\]"):
        erase_with("gradient-ascent", tiny_pipe, tiny_concept, progress=False, target_modules=("*nothing*",))


def test_divergence_stops_with_a_clear_error_and_the_pipeline_intact(tiny_pipe, tiny_concept):
    state = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    kwargs = {**FAST["gradient-ascent"], "learning_rate": 1e30, "steps": 6}
    with pytest.raises(TrainingDivergedError, match="nothing was written"):
        erase_with("gradient-ascent", tiny_pipe, tiny_concept, progress=False, **kwargs)
    after = tiny_pipe.unet.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())


def test_adapters_record_no_path_of_the_machine_they_were_made_on(tiny_pipe_dir):
    import json
    import re

    from diffusers import StableDiffusionPipeline

    from concept_erase import world
    from concept_erase.loading import SHIPPED_ADAPTERS_DIR
    from concept_erase.methods.common import base_model_id

    local = StableDiffusionPipeline.from_pretrained(tiny_pipe_dir, safety_checker=None, requires_safety_checker=False)
    assert base_model_id(local) == tiny_pipe_dir.name  # a local directory: its name only
    assert base_model_id(world.load_pipeline()) == "concept-erase/shapes-world"
    local.register_to_config(_name_or_path="runwayml/stable-diffusion-v1-5")
    assert base_model_id(local) == "runwayml/stable-diffusion-v1-5"  # a hub id as given
    for path in sorted(SHIPPED_ADAPTERS_DIR.glob("*.safetensors")):
        text = json.dumps(UnlearningAdapter.load(path).metadata)
        assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', text), f"{path.name} records an absolute path"
