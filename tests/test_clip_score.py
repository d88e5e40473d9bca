"""CLIP score through torchmetrics' CLIPScore, from a tiny CLIP checkpoint built offline.

The checkpoint is a random ``CLIPModel`` (small vision and text towers) with the shapes world's
tokenizer and a ``CLIPImageProcessor``, saved like a hub download. Scores are checked against a
direct computation with transformers (100 x cosine of the normalised embeddings, mean clipped at 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from concept_erase.errors import WeightsNotFoundError


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A random tiny CLIP checkpoint directory (config.json, model.safetensors, tokenizer, processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from concept_erase.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _direct_scores(path: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """100 x cos(image embedding, prompt embedding) per image, straight from transformers."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    pixels = images.mul(255).round().to(torch.uint8)
    with torch.no_grad():
        image = model.get_image_features(**processor(images=list(pixels), return_tensors="pt")).pooler_output
        text = model.get_text_features(**processor(text=prompts, return_tensors="pt", padding=True)).pooler_output
    return 100 * torch.nn.functional.cosine_similarity(image, text, dim=-1)


def test_clip_score_matches_a_direct_computation(tiny_clip):
    from concept_erase.evaluation.clip_score import ClipScoreStats, load_clip

    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 3, 40, 40, generator=g)
    prompts = ["a red circle", "a blue star", "a green heart", "a red square", "a yellow cross"]
    splits = ["forget", "retain", "retain", "forget", "retain"]
    direct = _direct_scores(tiny_clip, images, prompts)
    expected = {s: max(0.0, float(direct[[i for i, x in enumerate(splits) if x == s]].mean())) for s in ("forget",
                                                                                                       "retain")}
    assert any(v > 1 for v in expected.values())  # not a comparison of two zeros

    model, processor = load_clip(tiny_clip)
    stats = ClipScoreStats(model, processor, ["forget", "retain", "paraphrase"])
    stats.update(images[:2], prompts[:2], splits[:2])  # two batches accumulate like one
    stats.update(images[2:], prompts[2:], splits[2:])
    got = stats.compute()
    assert got["forget"]["n"] == 2 and got["retain"]["n"] == 3
    for split in ("forget", "retain"):
        assert got[split]["clip_score"] == pytest.approx(expected[split], abs=1e-3)
    assert got["paraphrase"] == {"clip_score": None, "n": 0}  # no image: no number
    stats.reset()
    assert stats.compute()["retain"]["n"] == 0


def test_clip_score_on_a_prompt_against_itself_is_higher_than_against_another(tiny_clip):
    from concept_erase.evaluation.clip_score import ClipScoreStats, load_clip

    model, processor = load_clip(tiny_clip)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=g)
    direct = [float(_direct_scores(tiny_clip, image, [p])[0]) for p in ("a red circle", "a blue star")]
    for prompt, want in zip(("a red circle", "a blue star"), direct):
        stats = ClipScoreStats(model, processor, ["all"])
        stats.update(image, [prompt], ["all"])
        assert stats.compute()["all"]["clip_score"] == pytest.approx(max(0.0, want), abs=1e-3)


def test_bad_clip_checkpoints_name_the_files_and_the_download(tiny_clip, tmp_path):
    from concept_erase.evaluation.clip_score import check_clip_checkpoint, load_clip

    def message(path) -> str:
        with pytest.raises(WeightsNotFoundError) as e:
            load_clip(path)
        text = str(e.value)
        assert "hf download openai/clip-vit-large-patch14" in text and "--clip-model" in text
        assert "config.json" in text and "model.safetensors" in text and "tokenizer" in text
        return text

    assert "No CLIP checkpoint given" in message(None)
    assert "No CLIP checkpoint directory at" in message(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_clip / "config.json").read_text())
    (partial / "pytorch_model.bin").write_bytes(b"pickle")
    text = message(partial)
    assert "missing model.safetensors (found only pickled weights pytorch_model.bin" in text
    assert "tokenizer.json (or vocab.json + merges.txt)" in text and "preprocessor_config.json" in text
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_clip.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    assert "holds a 'siglip' model, not CLIP" in message(other)
    assert check_clip_checkpoint(tiny_clip) == tiny_clip


def test_clip_score_needs_a_prompt_per_image(tiny_clip):
    from concept_erase.errors import InvalidConfigError
    from concept_erase.evaluation.clip_score import ClipScoreStats, load_clip

    stats = ClipScoreStats(*load_clip(tiny_clip), ["retain"])
    with pytest.raises(InvalidConfigError, match="2 images, 1 prompts and 2 splits"):
        stats.update(torch.rand(2, 3, 32, 32), ["a red circle"], ["retain", "retain"])
    with pytest.raises(InvalidConfigError, match=r"split\(s\) \['forget'\]"):
        stats.update(torch.rand(1, 3, 32, 32), ["a red circle"], ["forget"])


def test_evaluate_reports_clip_score_per_split_or_says_it_is_absent(tiny_pipe, tiny_clip, tmp_path):
    from concept_erase.evaluation import evaluate
    from tests.test_evaluation import MeanColourClassifier, TinyFeatures, _config, _tiny_adapter

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,split\na red circle,forget\na blue star,retain\na green heart,retain\n",
                       encoding="utf-8")
    adapter = _tiny_adapter(tiny_pipe, tmp_path / "red.safetensors")
    kw = dict(pipe=tiny_pipe, classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    report = evaluate(_config(tmp_path, prompts, adapter, clip_model=str(tiny_clip)), **kw)
    assert report["clip_score"] == {"computed": True, "checkpoint": "tiny-clip"}
    for model in ("base", "red"):
        scores = report["results"][model]["clip_score"]
        assert scores["forget"]["n"] == 2 and scores["retain"]["n"] == 4
        assert all(0 <= scores[s]["clip_score"] <= 100 for s in ("forget", "retain"))
    # the numbers are those of the images on disk, computed directly
    from concept_erase.images import load_images

    files = sorted((tmp_path / "out" / "images" / "red" / "retain").glob("*.png"))
    rows = {0: "a red circle", 1: "a blue star", 2: "a green heart"}
    direct = _direct_scores(tiny_clip, load_images(files), [rows[int(f.name[:5])] for f in files])
    assert report["results"]["red"]["clip_score"]["retain"]["clip_score"] == pytest.approx(
        max(0.0, float(direct.mean())), abs=1e-3)
    assert "## CLIP score" in (tmp_path / "out" / "report.md").read_text()

    absent = evaluate(_config(tmp_path, prompts, adapter, out=str(tmp_path / "out2")), **kw)
    assert absent["clip_score"] == {"computed": False, "reason": "no CLIP checkpoint given (--clip-model DIR)"}
    assert all("clip_score" not in r for r in absent["results"].values())
    assert "CLIP score: not computed" in (tmp_path / "out2" / "report.md").read_text()
