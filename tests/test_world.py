"""The shapes world: renderer, captions, tokenizer, shipped pipeline and classifier, training code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from concept_erase import world
from concept_erase.errors import InvalidPromptError, WeightsNotFoundError
from concept_erase.world.render import Scene, render, render_batch
from concept_erase.world.vocab import BACKGROUND_RGB, COLOUR_RGB, WORDS


def test_renderer_is_deterministic_and_seed_dependent():
    a, sa = render_batch(8, seed=3)
    b, sb = render_batch(8, seed=3)
    c, _ = render_batch(8, seed=4)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("colour,background", [("red", "dark"), ("white", "dark"), ("black", "light"), ("blue", "striped")])
def test_render_labels_are_what_is_drawn(colour, background):
    scene = Scene(colour=colour, shape="square", background=background, cx=0.0, cy=0.0, radius=0.6)
    img = render(scene).astype(int)
    centre = img[28:36, 28:36].reshape(-1, 3)
    assert np.abs(centre - np.array(COLOUR_RGB[colour])).max() <= 1
    corner = img[0, 0]
    assert min(np.abs(corner - np.array(p)).max() for p in BACKGROUND_RGB[background]) <= 1
    assert scene.labels == (world.COLOURS.index(colour), world.SHAPES.index("square"), world.BACKGROUNDS.index(background))


def test_shapes_differ_in_area():
    def area(shape):
        img = render(Scene(colour="red", shape=shape, background="dark", radius=0.6))
        return (np.abs(img.astype(int) - np.array(COLOUR_RGB["red"])).sum(-1) < 60).mean()

    areas = {s: area(s) for s in world.SHAPES}
    assert areas["circle"] > areas["square"] > areas["triangle"] > areas["star"]
    assert len({round(a, 3) for a in areas.values()}) == len(world.SHAPES)


def test_scene_rejects_unknown_and_invisible_combinations():
    with pytest.raises(InvalidPromptError, match="Unknown colour 'orange'"):
        Scene(colour="orange", shape="circle", background="dark")
    with pytest.raises(InvalidPromptError, match="cannot be told from a light background"):
        Scene(colour="white", shape="circle", background="light")


def test_captions_and_parsing():
    rng = np.random.default_rng(0)
    scene = Scene(colour="red", shape="circle", background="striped")
    caps = {world.caption(scene, rng) for _ in range(200)}
    assert any("crimson" in c or "scarlet" in c for c in caps)  # synonyms are used in training
    for c in caps:
        attrs = world.parse_prompt(c)
        assert attrs.colour in (None, "red") and attrs.shape in (None, "circle")
    held_out = {t.split("{")[0] for t in world.HELDOUT_TEMPLATES}
    assert not any(c.startswith("the circle is") for c in caps) and held_out
    assert world.parse_prompt("the disc is scarlet") == ("red", "circle", None)


def test_parse_prompt_errors_name_the_word():
    with pytest.raises(InvalidPromptError, match="'orange'"):
        world.parse_prompt("an orange circle")
    with pytest.raises(InvalidPromptError, match="two colours"):
        world.parse_prompt("a red blue circle")
    with pytest.raises(InvalidPromptError, match="non-empty"):
        world.parse_prompt("  ")


def test_tokenizer_round_trip_offline(tmp_path):
    tok = world.build_tokenizer()
    for word in WORDS:
        ids = tok(word).input_ids
        assert len(ids) == 3, word  # <bos> word <eos>: every world word is one token
    text = "a crimson disc on a striped background"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True).strip() == text
    tok.save_pretrained(tmp_path)
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again(text).input_ids == tok(text).input_ids and again.model_max_length == tok.model_max_length


def test_shipped_pipeline_loads_with_plain_diffusers():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(world.pipeline_dir(), local_files_only=True)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "a blue star"], num_inference_steps=4, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 64, 64, 3)
    assert np.isfinite(out.images).all()


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in world.WEIGHTS_DIR.rglob("*.safetensors"))
    assert total <= 20 * 1024 * 1024, total


def test_classifier_accuracy_on_fresh_renders(world_classifier):
    images, scenes = render_batch(600, seed=2024)  # never used in training (pool seeds are 0...)
    acc = world.accuracy(world_classifier, images, scenes)
    assert acc["colour"] >= 0.98 and acc["shape"] >= 0.98 and acc["background"] >= 0.98, acc


def test_classifier_features(world_classifier):
    x = world.to_tensor(render_batch(4, seed=1)[0])
    f = world_classifier.features(x)
    assert f.shape == (4, world_classifier.feature_dim)


def test_missing_weights_give_clear_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="model_index.json"):
        world.load_pipeline(weights_dir=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="concept-erase world train"):
        world.load_classifier(tmp_path / "nope.safetensors")


def test_training_smoke_run(tmp_path):
    from concept_erase.world.train import WorldTrainConfig, train_world

    out = train_world(tmp_path / "w", WorldTrainConfig.smoke(), progress=False)
    log = json.loads((out / "training_log.json").read_text())
    assert set(log["seconds"]) == {"render", "classifier", "vae", "unet"}
    pipe = world.load_pipeline(weights_dir=out)
    img = pipe("a red circle", num_inference_steps=2, output_type="np", height=32, width=32).images
    assert img.shape == (1, 32, 32, 3)
    clf = world.load_classifier(out / "classifier.safetensors")
    assert clf.predict(img)[0]["colour"] in world.COLOURS


def test_shipped_presets_are_up_to_date(tmp_path):
    from concept_erase.concepts import PRESETS_DIR
    from concept_erase.world.presets import write_presets

    for path in write_presets(tmp_path):
        assert json.loads(path.read_text()) == json.loads((PRESETS_DIR / path.name).read_text()), path.name
