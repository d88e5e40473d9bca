"""End to end on the shipped world model: SEMU really erases, and the shipped adapters work by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concept_erase import SemuConfig, UnlearningAdapter, erase, load_preset, world
from concept_erase.evaluation.world import erasure_metrics, evaluate_sets


def test_short_erase_on_the_world_model_drops_the_concept_rate(world_pipe, world_classifier):
    concept = load_preset("no-red")
    prompts = [f"a red {s}" for s in world.SHAPES]
    seeds = list(range(len(prompts)))

    def rate():
        imgs = world_pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
                          **world.SAMPLING).images
        return erasure_metrics(world_classifier, imgs, prompts, concept.target)["concept_rate"]

    before = rate()
    cfg = SemuConfig(steps=60, num_forget_images=12, num_retain_images=12, sample_steps=10)
    adapter = erase(world_pipe, concept, cfg, progress=False)
    assert adapter.metadata["trainable_fraction"] <= 0.01
    world_pipe.load_unlearning_adapter(adapter, adapter_name="short")
    try:
        after = rate()
    finally:
        world_pipe.unload_unlearning_adapter()
    assert before >= 0.8 and after <= before - 0.5, (before, after)


@pytest.mark.parametrize("name", ["no-red", "no-circle", "no-striped"])
def test_shipped_adapters_load_by_name_and_erase(world_pipe, world_classifier, name):
    concept = load_preset(name)
    adapter = UnlearningAdapter.load(f"{world.WEIGHTS_DIR.parent.parent}/adapters/{name}.safetensors")
    assert adapter.metadata["concept"]["name"] == name and adapter.metadata["trainable_fraction"] <= 0.01
    before = evaluate_sets(world_pipe, world_classifier, concept, max_prompts=12)
    world_pipe.load_unlearning_adapter(name)
    try:
        after = evaluate_sets(world_pipe, world_classifier, concept, max_prompts=12)
    finally:
        world_pipe.unload_unlearning_adapter()
    assert before["forget"]["concept_rate"] >= 0.8
    assert after["forget"]["concept_rate"] <= 0.2, after
    assert after["retain"]["accuracy"] >= before["retain"]["accuracy"] - 0.1, (before, after)


def test_adapter_changes_the_forget_prompt_far_more_than_unrelated_ones(world_pipe, world_classifier):
    prompts = ["a red star", "a blue star", "a green circle", "a white heart"]
    gens = lambda: [torch.Generator().manual_seed(0) for _ in prompts]  # noqa: E731
    base = world_pipe(prompts, generator=gens(), output_type="np", **world.SAMPLING).images
    world_pipe.load_unlearning_adapter("no-red")
    try:
        adapted = world_pipe(prompts, generator=gens(), output_type="np", **world.SAMPLING).images
    finally:
        world_pipe.unload_unlearning_adapter()
    diff = np.abs(adapted - base).mean(axis=(1, 2, 3))
    assert diff[0] > 3 * diff[1:].max(), diff
    assert world_classifier.predict(adapted[1:]) == world_classifier.predict(base[1:])
    assert world_classifier.predict(adapted[:1])[0]["colour"] != "red"
