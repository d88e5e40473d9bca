"""Erasing from SDXL: every method that can trains on a tiny SDXL-architecture pipeline (two text
encoders of different widths, pooled embeddings and time ids through ``added_cond_kwargs``), its
adapter loads in diffusers and in concept-erase, changes the forget prompt's output and unloads
exactly; the codebook method refuses SDXL by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import concept_erase  # noqa: F401  (the pipeline methods)
from concept_erase import Concept
from concept_erase.diffusion import Conditioning, encode_conditioning, null_conditioning, unet_prediction
from concept_erase.errors import UnsupportedArchitectureError
from concept_erase.methods import erase_with
from concept_erase.world.tokenizer import MAX_LENGTH, build_tokenizer

WIDTH_1, WIDTH_2, TIME_DIM = 32, 48, 8  # SDXL: 768 (CLIP ViT-L) and 1280 (OpenCLIP ViT-bigG), 256
CALL = dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32)
CONCEPT = Concept(name="red", forget=["a red circle", "a red square"], anchor=["a gray circle", "a gray square"],
                  retain=["a blue circle"])
DATA = dict(num_forget_images=2, sample_steps=2, batch_size=2)
FAST = {
    # SDXL's highest-resolution blocks have no attention: the default layer set's down_blocks.0 finds none.
    "semu": dict(steps=3, num_retain_images=2, gradient_batches=1, learning_rate=0.05,
                 target_modules=("*attn2.to_k", "*attn2.to_v"), **DATA),
    "esd-x": dict(iterations=2, sample_steps=2, learning_rate=1e-2),
    "esd-u": dict(iterations=2, sample_steps=2, learning_rate=1e-3),
    "uce": dict(),
    "gradient-ascent": dict(steps=2, num_retain_images=2, learning_rate=1e-3, **DATA),
    "task-vector": dict(steps=2, learning_rate=1e-3, **DATA),
    "simu": dict(steps=2, num_retain_images=2, attribution_images=2, attribution_steps=2, learning_rate=1e-2, **DATA),
}


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's architecture scaled down, as diffusers' own SDXL pipeline tests build it
    (tests/pipelines/stable_diffusion_xl, ``get_dummy_components``), with text encoders of two widths."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + WIDTH_2,  # 6 time ids + the pooled embedding
        cross_attention_dim=WIDTH_1 + WIDTH_2, norm_num_groups=8,
    )
    tok = build_tokenizer()

    def text_config(width):
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act="gelu",
                              projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1)

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)  # SDXL base's scheduler
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "attn2" in name and p.ndim == 2:
                p.mul_(4)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config(WIDTH_1)),
        text_encoder_2=CLIPTextModelWithProjection(text_config(WIDTH_2)), tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe():
    return tiny_sdxl()


def _image(pipe, prompt="a red circle"):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **CALL).images


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_conditioning_is_the_pipelines_own(sdxl_pipe):
    """Both encoders' hidden states, the pooled projection and the time ids, as the pipeline's
    __call__ passes them to the UNet; the unconditional branch is zeros (force_zeros_for_empty_prompt)."""
    pipe = sdxl_pipe
    cond = encode_conditioning(pipe, ["a red circle", "a blue star"])
    assert cond.hidden_states.shape == (2, MAX_LENGTH, WIDTH_1 + WIDTH_2)
    assert cond.text_embeds.shape == (2, WIDTH_2) and cond.time_ids.shape == (2, 6)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    assert cond.time_ids[0].tolist() == [size, size, 0, 0, size, size]
    emb, _, pooled, _ = pipe.encode_prompt("a blue star", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond[1:].hidden_states, emb.detach())  # batched vs alone: float rounding only
    torch.testing.assert_close(cond[1:].text_embeds, pooled.detach())
    null = null_conditioning(pipe)
    assert len(null) == 1 and not null.hidden_states.any() and not null.text_embeds.any()

    # the UNet call: the pipeline's own guided prediction at its first step, reproduced
    seen = []
    hook = pipe.unet.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs, out[0])),
                                           with_kwargs=True)
    try:
        pipe("a blue star", generator=torch.Generator().manual_seed(0), output_type="latent", num_inference_steps=1,
             guidance_scale=4.0)
    finally:
        hook.remove()
    (x, t), kwargs, out = seen[0]
    both = Conditioning.cat([null, cond[1:]])
    assert torch.equal(kwargs["added_cond_kwargs"]["time_ids"], both.time_ids)
    torch.testing.assert_close(unet_prediction(pipe.unet, x, t, both), out)


@pytest.mark.parametrize("method", list(FAST))
def test_every_method_erases_on_sdxl_and_the_adapter_loads_in_diffusers(method, sdxl_pipe, tmp_path):
    pipe = sdxl_pipe
    state = _state(pipe)
    base = _image(pipe)
    adapter = erase_with(method, pipe, CONCEPT, progress=False, **FAST[method])
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in state.items())
    if "final_loss" in adapter.metadata:
        assert np.isfinite(adapter.metadata["final_loss"])
    path = adapter.save(tmp_path / f"{method}.safetensors")

    pipe.load_lora_weights(str(path), adapter_name="plain")  # diffusers' own loader
    plain = _image(pipe)
    pipe.unload_lora_weights()
    pipe.load_unlearning_adapter(str(path))
    ours = _image(pipe)
    pipe.unload_unlearning_adapter()

    assert np.abs(plain - base).max() > 1e-3  # the forget prompt's output changes
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    after = pipe.unet.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    np.testing.assert_array_equal(_image(pipe), base)


def test_uce_edits_keys_and_values_of_the_concatenated_embeddings(sdxl_pipe):
    adapter = erase_with("uce", sdxl_pipe, CONCEPT, progress=False)
    a = adapter.tensors["unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"]
    assert a.shape[1] == WIDTH_1 + WIDTH_2


def test_the_codebook_method_refuses_sdxl_by_name(sdxl_pipe):
    with pytest.raises(UnsupportedArchitectureError, match="codebook.*pooled text embedding"):
        erase_with("codebook", sdxl_pipe, CONCEPT, progress=False)


def test_an_unknown_added_conditioning_is_refused(sdxl_pipe):
    class OtherPipeline:  # an SDXL UNet in a pipeline that cannot make its time ids
        unet = sdxl_pipe.unet
        tokenizer = sdxl_pipe.tokenizer

    with pytest.raises(UnsupportedArchitectureError, match="addition_embed_type='text_time'"):
        encode_conditioning(OtherPipeline(), ["a red circle"])


def test_robust_semu_attacks_through_both_text_encoders(sdxl_pipe):
    """Robust SEMU on SDXL: one set of soft tokens per text encoder at the same positions; the pooled
    embedding follows the attack; text encoders and UNet come back untouched."""
    from concept_erase.methods.semu.adversarial import AdversarialPrompts

    pipe = sdxl_pipe
    state = _state(pipe)
    adv = AdversarialPrompts(pipe, ["a red circle"], num_tokens=2, step_size=0.1, generator=torch.Generator())
    assert [d.shape[-1] for d in adv.delta] == [pipe.text_encoder.config.hidden_size,
                                                pipe.text_encoder_2.config.hidden_size]
    clean = encode_conditioning(pipe, ["a red circle"])
    with torch.no_grad():
        attacked = adv.conditioning(torch.tensor([0]))
    assert not torch.allclose(clean.text_embeds, attacked.text_embeds)
    adapter = erase_with("semu", pipe, CONCEPT, progress=False, **{**FAST["semu"], "adversarial": True,
                                                                     "adversarial_tokens": 2})
    assert np.isfinite(adapter.metadata["final_loss"])
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in state.items())
    assert all(not p.requires_grad or p.grad is None for p in pipe.text_encoder_2.parameters())
