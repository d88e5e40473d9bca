"""concept-erase inside eval-unlearn: the entry points, and the technique and metric run the way the harness
runs them, offline on the shapes world.

The technique needs nothing from eval-unlearn (the harness only calls it), so its tests always run; the tests
that go through eval-unlearn itself (its entry-point registry, its ``eval-unlearn run`` command) skip when the
``eval-unlearn`` extra is not installed (``pip install -e ".[eval-unlearn]"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from concept_erase.errors import InvalidConfigError, InvalidPromptError, OutputPathError, UnknownConceptError
from concept_erase.integrations.eval_unlearn import (
    ConceptEraseTechnique, WorldConceptMetric, WorldMetricConfig, resolve_concept_name,
)

BATCH = 8  # the metric's default batch: the harness restarts the seeds at every batch (image i: seed + i)


@pytest.fixture(scope="module")
def reference_pipe():
    """A world pipeline of this module's own (adapters go on and off it)."""
    from concept_erase import world

    return world.load_pipeline()


def reference_images(pipe, prompts: list[str], *, adapter: str | None = None) -> np.ndarray:
    """What concept-erase itself draws for ``prompts`` with the harness's seeds, as uint8 RGB."""
    from concept_erase import world
    from concept_erase.diffusion import generate_images

    if adapter is not None:
        pipe.load_unlearning_adapter(adapter)
        pipe.fuse_unlearning_adapter()
    try:
        images = generate_images(pipe, prompts, [i % BATCH for i in range(len(prompts))], batch_size=BATCH,
                                 **world.SAMPLING)
    finally:
        if adapter is not None:
            pipe.unload_unlearning_adapter()
    return np.stack([np.asarray(im) for im in pipe.numpy_to_pil(images)])


def as_array(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


# ---------------------------------------------------------------- without eval-unlearn
def test_the_module_imports_without_eval_unlearn_torch_or_diffusers():
    code = ("import sys; sys.modules['eval_unlearn'] = None  # as if not installed\n"
            "import concept_erase.integrations.eval_unlearn\n"
            "print(sorted(m for m in ('eval_unlearn', 'torch', 'diffusers') if sys.modules.get(m)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("config, error, message", [
    ({}, InvalidConfigError, "Give `adapter`"),
    ({"adapter": "no-red", "method": "uce"}, InvalidConfigError, "`method` is for erasing on the fly"),
    ({"adapter": "no-red", "method_config": {"steps": 3}}, InvalidConfigError, "`method_config` is for erasing"),
    ({"adapter": "no-red", "train_method": "xattn"}, InvalidConfigError, "no setting 'train_method'"),
    ({"adapter": "no-red", "batch_size": 0}, InvalidConfigError, "`batch_size` must be a positive integer but is 0"),
    ({"adapter": []}, InvalidConfigError, "`adapter` must be a name or path"),
    ({"adapter": "no-such-adapter"}, UnknownConceptError, "Unknown unlearning adapter 'no-such-adapter'"),
    ({"erase_concept": "teal"}, UnknownConceptError,
     "'teal' is neither a preset, nor a phrase with a preset 'no-teal'"),
    ({"erase_concept": "red", "method": "esd"}, InvalidConfigError, "`method` must be one of"),
    ({"erase_concept": "red", "method": "uce", "method_config": {"lambda": 1}}, InvalidConfigError,
     "no setting 'lambda'"),
    ({"method": "none", "save_path": "x.safetensors"}, InvalidConfigError, "have nothing to apply to"),
])
def test_bad_technique_configs_fail_before_the_model_loads(config, error, message):
    with pytest.raises(error) as info:
        ConceptEraseTechnique(**config)
    assert message in str(info.value)


def test_an_existing_save_path_is_refused_before_erasing(tmp_path):
    existing = tmp_path / "red.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(OutputPathError, match="already exists: pass it as `adapter`"):
        ConceptEraseTechnique(erase_concept="red", method="uce", save_path=str(existing))
    assert existing.read_bytes() == b"mine"


def test_erase_concept_names_a_preset_or_a_phrase_with_one():
    assert resolve_concept_name("red").name == "no-red"
    assert resolve_concept_name("no-circle").name == "no-circle"
    assert resolve_concept_name("Striped").name == "no-striped"
    assert resolve_concept_name("nudity").name == "no-nudity"


def test_bad_metric_configs():
    with pytest.raises(InvalidConfigError, match=r"`splits` must be a non-empty list of forget, paraphrase, retain, "
                                                 r"but is \['train'\]"):
        WorldMetricConfig(splits=["train"])
    with pytest.raises(InvalidPromptError, match="scores shapes-world concepts .* 'no-nudity' has target"):
        WorldConceptMetric(concept="nudity")


@pytest.mark.slow
def test_the_technique_draws_what_load_unlearning_adapter_draws(reference_pipe):
    prompts = ["a red circle", "red square", "a blue star"]
    technique = ConceptEraseTechnique(adapter="no-red", erase_concept="red")
    got = as_array(technique.generate(prompts=prompts, seed=None))
    erased = reference_images(reference_pipe, prompts, adapter="no-red")
    base = reference_images(reference_pipe, prompts)
    assert technique.pipe.unlearning_adapters == {"no-red": 1.0}
    assert np.abs(got.astype(int) - erased).max() <= 1  # the same adapter and seeds, fused in both
    red = np.abs(got[:2].astype(int) - base[:2]).mean()
    assert red > 20, f"images of red prompts barely differ from the base model's (mean |Δ| {red:.1f} of 255)"
    # the baseline row: method "none" is the base model, sampled the same way
    baseline = ConceptEraseTechnique(method="none", erase_concept="red")
    assert baseline.pipe.unlearning_adapters == {}
    assert np.abs(as_array(baseline.generate(prompts)).astype(int) - base).max() <= 1


@pytest.mark.slow
def test_erasing_on_the_fly_writes_an_adapter_that_loads_back(tmp_path, reference_pipe):
    prompts = ["a red circle", "a green cross"]
    out = tmp_path / "red-uce.safetensors"
    technique = ConceptEraseTechnique(erase_concept="red", method="uce", save_path=str(out))
    assert out.is_file() and technique.adapter_names
    first = as_array(technique.generate(prompts, seed=3))
    again = as_array(ConceptEraseTechnique(adapter=str(out), erase_concept="red").generate(prompts, seed=3))
    assert np.abs(first.astype(int) - again).max() <= 1
    from concept_erase import world
    from concept_erase.diffusion import generate_images

    base = np.stack([np.asarray(im) for im in reference_pipe.numpy_to_pil(
        generate_images(reference_pipe, prompts, [3, 4], **world.SAMPLING))])
    assert np.abs(first[0].astype(int) - base[0]).mean() > 20  # "a red circle" changed


# ---------------------------------------------------------------- through eval-unlearn
def test_eval_unlearn_finds_the_technique_and_the_metric():
    pytest.importorskip("eval_unlearn")
    techniques = {ep.name: ep for ep in entry_points(group="eval_unlearn.techniques")}
    metrics = {ep.name: ep for ep in entry_points(group="eval_unlearn.metrics")}
    assert "concept_erase" in techniques, "entry point missing: reinstall with `pip install -e .`"
    assert techniques["concept_erase"].load() is ConceptEraseTechnique
    assert metrics["concept_erase_world"].load() is WorldConceptMetric
    from eval_unlearn.registry import get_metric, get_technique
    from eval_unlearn.registry.entrypoints import load_entrypoints

    load_entrypoints()  # what every eval-unlearn runner does first
    assert get_technique("concept_erase") is ConceptEraseTechnique
    assert get_metric("concept_erase_world") is WorldConceptMetric


@pytest.mark.slow
def test_eval_unlearn_run_offline_on_the_world(tmp_path, reference_pipe, world_classifier):
    pytest.importorskip("eval_unlearn")
    from concept_erase import load_preset
    from concept_erase.evaluation.world import erasure_metrics

    config = {
        "output_dir": "results",
        "technique": {"name": "concept_erase", "config": {"adapter": "no-red", "erase_concept": "red"}},
        "metric": {"name": "concept_erase_world", "config": {"concept": "red", "splits": ["forget", "retain"]}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "eval_unlearn.cli", "run", "--config", "config.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads((tmp_path / "results" / "concept_erase_red_latest_report.json").read_text())
    assert report["technique_name"] == "concept_erase" and report["erase_concept"] == "red"
    result = report["metric_result"]
    splits = result["details"]["splits"]
    assert splits["forget"]["n"] == 8 and splits["retain"]["n"] == 8
    assert result["value"] == splits["forget"]["concept_rate"] <= 0.125
    assert splits["retain"]["accuracy"] >= 0.875

    concept = load_preset("no-red")
    run_dir = tmp_path / "results" / f"concept_erase_concept_erase_world_{report['run_id']}"
    for split, prompts in (("forget", concept.forget), ("retain", concept.retain)):
        files = sorted((run_dir / "images" / split).glob("*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        assert len(files) == len(prompts)
        from PIL import Image

        saved = as_array([Image.open(f) for f in files])
        erased = reference_images(reference_pipe, prompts, adapter="no-red")
        assert np.abs(saved.astype(int) - erased).max() <= 1, f"{split}: the harness's images are not no-red's"
        if split == "forget":
            base = reference_images(reference_pipe, prompts)
            assert erasure_metrics(world_classifier, base, prompts, concept.target)["concept_rate"] >= 0.75
            assert np.abs(saved.astype(int) - base).mean() > 20
