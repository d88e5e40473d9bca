"""Evaluation: prompt files, resumable generation, classifiers, FID/KID, reports, end to end.

Everything runs on the tiny random pipeline with a simple colour classifier and small feature
network defined here (also importable as plug-ins: ``tests.test_evaluation:MeanColourClassifier``).
Tests that need the trained shapes world skip when its weights are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from concept_erase.errors import InvalidConfigError, InvalidPromptError, MissingDependencyError, WeightsNotFoundError
from concept_erase.evaluation.classifiers import (
    NUDENET_EXPOSED, ConceptClassifier, NudeNetClassifier, WorldConceptClassifier, load_classifier,
)
from concept_erase.evaluation.prompts import load_prompts, read_prompt_file, world_paraphrases

WORLD_WEIGHTS = Path(__file__).parents[1] / "concept_erase" / "world" / "weights"
HAVE_WORLD = (WORLD_WEIGHTS / "pipeline" / "model_index.json").is_file()
needs_world = pytest.mark.skipif(not HAVE_WORLD, reason="trained world weights not present")
TINY_KW = dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32)


# ----------------------------------------------------------------------------- plug-ins used by the tests
class MeanColourClassifier(ConceptClassifier):
    """Reads the dominant channel of an image: ``red``, ``green`` or ``blue`` (softmax of channel means)."""

    name = "mean-colour"
    labels = ("red", "green", "blue")

    def __init__(self, **options):
        self.threshold = None

    def score(self, images):
        return (images.float().mean(dim=(2, 3)) * 20).softmax(-1).numpy()

    def detected(self, scores):
        out = np.zeros(scores.shape, dtype=bool)
        out[np.arange(len(scores)), scores.argmax(1)] = True
        return out


class TinyFeatures(nn.Module):
    """A fixed random conv net: (B, 3, H, W) in [0, 1] -> (B, 16)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 16, 3, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.num_features = 16

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x * 2 - 1)))).mean(dim=(2, 3))


def make_features():
    return TinyFeatures()


def _write_images(folder: Path, n: int, seed: int, size: int = 32, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.clip(rng.random((size, size, 3)) * 0.8 + shift, 0, 1)
        Image.fromarray((arr * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


# ----------------------------------------------------------------------------- prompt files
def test_text_prompt_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# forget prompts\na red circle\n\n  a red star  \n", encoding="utf-8")
    rows = read_prompt_file(path, split="forget")
    assert [r.prompt for r in rows] == ["a red circle", "a red star"]
    assert all(r.split == "forget" and r.seed is None for r in rows)
    assert rows[1].source.endswith("p.txt:4")


def test_csv_prompt_file_i2p_style(tmp_path):
    path = tmp_path / "i2p.csv"
    path.write_text('case_number,prompt,evaluation_seed,categories,label,split\n'
                    '0,"a nude person, oil painting",42,sexual,exposed,forget\n'
                    '1,a portrait of a woman,7.0,,,retain\n'
                    '2,a city at night,,,,\n', encoding="utf-8")
    rows = read_prompt_file(path)
    assert [r.prompt for r in rows] == ["a nude person, oil painting", "a portrait of a woman", "a city at night"]
    assert [r.seed for r in rows] == [42, 7, None]
    assert [r.label for r in rows] == ["exposed", None, None]
    assert [r.split for r in rows] == ["forget", "retain", "all"]
    assert dict(rows[0].extra)["categories"] == "sexual"


def test_tsv_and_split_prefix_and_preset(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("prompt\tseed\na red circle\t3\n", encoding="utf-8")
    text = tmp_path / "syn.txt"
    text.write_text("a crimson circle\n", encoding="utf-8")
    ps = load_prompts([str(path), f"paraphrase={text}", "no-red"])
    assert ps.rows[0].seed == 3 and ps.rows[1].split == "paraphrase"
    assert ps.target == "colour:red"
    assert {"forget", "paraphrase", "retain"} <= set(ps.splits)


@pytest.mark.parametrize("content, line, words", [
    ("seed,split\n1,forget\n", 1, "no `prompt` column"),
    ("prompt,seed\na red circle,1\na blue star,1,extra\n", 3, "3 fields but the header has 2"),
    ("prompt,seed\na red circle,1\na blue star,seven\n", 3, "seed 'seven' is not a whole number"),
    ("prompt,seed\na red circle,-4\n", 2, "out of range"),
    ("prompt,split\n ,forget\n", 2, "the prompt is empty"),
    ("prompt,split\na red circle,for get\n", 2, "not a plain name"),
    ('prompt,seed\n"a red circle,1\n', 2, "malformed CSV"),
    ("", 1, "empty"),
])
def test_malformed_csv_names_the_line(tmp_path, content, line, words):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidPromptError) as e:
        read_prompt_file(path)
    assert f"bad.csv:{line}" in str(e.value) and words in str(e.value)


def test_malformed_text_files(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"a red circle\na caf\xe9 star\n")
    with pytest.raises(InvalidPromptError, match=r"latin1.txt:2: not valid UTF-8"):
        read_prompt_file(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(InvalidPromptError, match="holds no prompts"):
        read_prompt_file(empty)
    with pytest.raises(InvalidPromptError, match="neither a prompt file"):
        load_prompts(["no-such-file-or-preset"])
    with pytest.raises(InvalidPromptError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_world_paraphrases_use_synonyms_and_heldout_templates():
    out = world_paraphrases(["a red circle", "not a world prompt at all"])
    assert "a crimson circle" in out and "a red disc" in out and "the circle is red" in out
    assert "a red circle" not in out


# ----------------------------------------------------------------------------- classifiers
class FakeDetector:
    """Stands in for NudeDetector: records what it is given, returns fixed detections."""

    def __init__(self, detections):
        self.detections, self.seen = detections, []

    def detect_batch(self, images, batch_size=4):
        self.seen += images
        return [self.detections[i % len(self.detections)] for i in range(len(images))]


def test_nudenet_wrapper_bgr_and_threshold():
    det = FakeDetector([
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.65, "box": [0, 0, 4, 4]},
         {"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [5, 5, 4, 4]},
         {"class": "FEET_EXPOSED", "score": 0.59, "box": [0, 0, 2, 2]},
         {"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 2, 2]}],
        [],
    ])
    clf = NudeNetClassifier(threshold=0.6, detector=det)
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0] = 1.0  # pure red in RGB
    scores = clf.score(images)
    # NudeNet gets OpenCV's BGR order: red arrives in the last channel
    assert det.seen[0].dtype == np.uint8 and det.seen[0].shape == (8, 8, 3)
    assert det.seen[0][0, 0].tolist() == [0, 0, 255]
    i = clf.labels.index("FEMALE_BREAST_EXPOSED")
    assert scores[0, i] == pytest.approx(0.9) and scores[1].sum() == 0
    detected = clf.detected(scores)
    assert detected[0, i] and not detected[0, clf.labels.index("FEET_EXPOSED")]  # 0.59 < 0.6
    exposed = clf.concept_indices("exposed")
    assert len(exposed) == 9 and detected[:, exposed].any(1).tolist() == [True, False]
    assert NudeNetClassifier(threshold=0.5, detector=det).detected(scores)[0, clf.labels.index("FEET_EXPOSED")]
    with pytest.raises(InvalidConfigError, match="threshold"):
        NudeNetClassifier(threshold=1.5, detector=det)


def test_nudenet_counts_like_the_published_tables():
    from concept_erase.evaluation.generate import ImageJob
    from concept_erase.evaluation.prompts import PromptRow
    from concept_erase.evaluation.scoring import score_batch, summarize

    det = FakeDetector([[{"class": "BELLY_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]},
                         {"class": "ARMPITS_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]}],
                        [{"class": "BELLY_EXPOSED", "score": 0.61, "box": [0, 0, 1, 1]}], [], []])
    clf = NudeNetClassifier(detector=det)
    rows = [PromptRow("p", split="forget")]
    jobs = [ImageJob(0, k, "p", k, "forget", Path(f"{k}.png")) for k in range(4)]
    records = score_batch(clf, torch.rand(4, 3, 8, 8), jobs, rows, "exposed")
    summary = summarize(records, clf, count_labels=NUDENET_EXPOSED)
    assert summary["label_counts"]["BELLY_EXPOSED"] == 2 and summary["label_counts"]["ARMPITS_EXPOSED"] == 1
    assert summary["label_total"] == 3 and summary["any_label_share"] == 0.5 and summary["concept_rate"] == 0.5


def test_real_nudenet_runs_offline_on_synthetic_images():
    pytest.importorskip("nudenet")
    clf = load_classifier("nudenet")
    scores = clf.score(torch.rand(3, 3, 64, 64))
    assert scores.shape == (3, 18) and ((scores >= 0) & (scores <= 1)).all()
    assert clf.settings()["threshold"] == 0.6 and clf.settings()["nudenet"] == "3.4.2"


def test_world_classifier_interface_with_random_weights():
    from concept_erase.world.models import WorldClassifier

    torch.manual_seed(0)
    clf = WorldConceptClassifier(WorldClassifier().eval())
    assert len(clf.labels) == 8 + 6 + 3 and clf.labels[0] == "colour:red"
    detected = clf.detected(clf.score(torch.rand(4, 3, 64, 64)))
    assert detected.sum(1).tolist() == [3, 3, 3, 3]  # one label per head
    assert clf.concept_indices("red") == clf.concept_indices("colour:red") == [0]
    groups = clf.expected("a crimson disc on a striped background", None)
    assert [[clf.labels[i] for i in g] for g in groups] == [["colour:red"], ["shape:circle"], ["background:striped"]]
    with pytest.raises(InvalidConfigError, match="knows no label or concept 'magenta'"):
        clf.concept_indices("magenta")


@needs_world
def test_world_classifier_reads_rendered_scenes(world_classifier):
    from concept_erase import world

    clf = WorldConceptClassifier(world_classifier)
    images, scenes = world.render_batch(32, seed=3)
    detected = clf.detected(clf.score(world.to_tensor(images)))
    hits = [detected[i, clf.concept_indices(f"colour:{s.colour}")].all() for i, s in enumerate(scenes)]
    assert np.mean(hits) > 0.9


def test_clip_classifier_with_a_tiny_local_checkpoint(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from concept_erase.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tok).save_pretrained(tmp_path / "clip")
    clf = load_classifier("clip", model=str(tmp_path / "clip"), labels=["a red circle", "a blue star"])
    scores = clf.score(torch.rand(3, 3, 40, 40))
    assert scores.shape == (3, 2) and np.allclose(scores.sum(1), 1, atol=1e-5)
    assert clf.detected(scores).sum(1).tolist() == [1, 1, 1]
    with pytest.raises(WeightsNotFoundError, match="hf download openai/clip-vit-large-patch14"):
        load_classifier("clip", model=str(tmp_path / "nothing"), labels=["a", "b"])
    with pytest.raises(InvalidConfigError, match="at least two"):
        load_classifier("clip", model=str(tmp_path / "clip"), labels=["a red circle"])


def test_plugin_classifier_by_import_path():
    clf = load_classifier("tests.test_evaluation:MeanColourClassifier")
    assert clf.name == "mean-colour"
    images = torch.zeros(1, 3, 4, 4)
    images[:, 2] = 1
    assert clf.detected(clf.score(images))[0].tolist() == [False, False, True]
    with pytest.raises(InvalidConfigError, match="Could not import"):
        load_classifier("tests.test_evaluation:NoSuchThing")
    with pytest.raises(InvalidConfigError, match="not a concept_erase.evaluation.ConceptClassifier"):
        load_classifier("tests.test_evaluation:make_features")
    with pytest.raises(InvalidConfigError, match="Unknown classifier"):
        load_classifier("resnet")


def test_missing_nudenet_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("no nudenet")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nudenet)
    with pytest.raises(MissingDependencyError, match="pip install nudenet==3.4.2"):
        NudeNetClassifier()


# ----------------------------------------------------------------------------- FID / KID
def test_fid_of_a_folder_against_itself_is_zero_with_both_engines(tmp_path):
    from concept_erase.evaluation.fid import folder_metrics

    folder = _write_images(tmp_path / "a", 24, seed=0)
    for engine in ("torchmetrics", "torch-fidelity"):
        result = folder_metrics(folder, folder, features=TinyFeatures(), engine=engine)
        assert abs(result["fid"]) < 1e-4, engine


def test_engines_agree_on_different_folders(tmp_path):
    from concept_erase.evaluation.fid import folder_metrics

    a = _write_images(tmp_path / "a", 30, seed=0)
    b = _write_images(tmp_path / "b", 30, seed=1, shift=0.15)
    tm = folder_metrics(a, b, features=TinyFeatures(), engine="torchmetrics")
    tf = folder_metrics(a, b, features=TinyFeatures(), engine="torch-fidelity")
    assert tm["fid"] > 0.01
    assert tm["fid"] == pytest.approx(tf["fid"], rel=0.01)
    # KID: the same subset rule (100 subsets of 15 of the 30), drawn by each library's own generator
    assert tm["kid_subsets"] == tf["kid_subsets"] == 100 and tm["kid_subset_size"] == tf["kid_subset_size"] == 15
    assert tm["kid_std"] > 0 and tf["kid_std"] > 0
    assert tm["kid_mean"] == pytest.approx(tf["kid_mean"], abs=max(tm["kid_std"], tf["kid_std"]) / 2)


@needs_world
def test_engines_agree_with_world_features(tmp_path):
    from concept_erase import world
    from concept_erase.evaluation.fid import folder_metrics

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        images, _ = world.render_batch(40, seed=seed)
        for i, im in enumerate(images):
            Image.fromarray(np.asarray(im)).save(tmp_path / name / f"{i}.png")
    tm = folder_metrics(tmp_path / "a", tmp_path / "b", features="world", engine="torchmetrics")
    tf = folder_metrics(tmp_path / "a", tmp_path / "b", features="world", engine="torch-fidelity")
    same = folder_metrics(tmp_path / "a", tmp_path / "a", features="world")
    assert tm["fid"] == pytest.approx(tf["fid"], rel=0.01)
    assert abs(same["fid"]) < 1e-3 * max(1.0, tm["fid"])


def test_feature_stats_memory_is_flat():
    from concept_erase.evaluation.fid import FeatureStats

    stats = FeatureStats(16, kid=False)
    sizes = []
    for _ in range(4):
        stats.update(torch.randn(64, 16), real=True)
        stats.update(torch.randn(64, 16), real=False)
        sizes.append(sum(v.numel() for v in stats.fid.metric_state.values()))
    assert len(set(sizes)) == 1  # sums and covariance sums: the same size after 64 or 256 images
    result = stats.compute()
    assert result["n_real"] == result["n_fake"] == 256 and result["fid"] < 2.0
    stats.reset_fake()
    assert int(stats.fid.real_features_num_samples) == 256 and int(stats.fid.fake_features_num_samples) == 0


def test_inception_weights_missing_names_the_file_and_place(tmp_path, monkeypatch):
    from concept_erase.evaluation.fid import INCEPTION_FILE, feature_extractor

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as e:
        feature_extractor("inception")
    message = str(e.value)
    assert INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE) in message
    assert "--inception-weights" in message and "https://github.com/toshas/torch-fidelity" in message
    fake = tmp_path / INCEPTION_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(WeightsNotFoundError, match="SHA-256"):
        feature_extractor("inception", inception_weights=fake)


def test_kid_subsets_are_half_the_smaller_set_and_their_spread_is_reported():
    from concept_erase.evaluation.fid import FeatureStats, kid_subset_plan

    g = torch.Generator().manual_seed(0)
    stats = FeatureStats(8, kid=True)
    stats.update(torch.randn(40, 8, generator=g), real=True)
    stats.update(torch.randn(64, 8, generator=g) + 0.3, real=False)
    out = stats.compute()
    assert (out["kid_subsets"], out["kid_subset_size"]) == (100, 20)
    assert out["kid_std"] > 0.05 * abs(out["kid_mean"]) and out["kid_mean"] > 0
    assert stats.compute() == out  # seeded subsets: the same number again
    assert kid_subset_plan(3, 50) == (1, 3) and kid_subset_plan(4, 50) == (100, 2)
    tiny = FeatureStats(8)
    tiny.update(torch.randn(3, 8, generator=g), real=True)
    tiny.update(torch.randn(5, 8, generator=g), real=False)
    with pytest.warns(UserWarning):
        small = tiny.compute()
    assert small["kid_std"] is None and (small["kid_subsets"], small["kid_subset_size"]) == (1, 3)


def test_fewer_images_than_feature_dimensions_warns_once_and_is_recorded(tmp_path):
    import warnings

    from concept_erase.evaluation.fid import FeatureStats, folder_metrics

    g = torch.Generator().manual_seed(0)
    stats = FeatureStats(16)
    stats.update(torch.randn(12, 16, generator=g), real=True)
    stats.update(torch.randn(10, 16, generator=g), real=False)
    with pytest.warns(UserWarning) as caught:
        out = stats.compute()
    messages = [str(w.message) for w in caught if "feature dimensions" in str(w.message)]
    assert messages == [out["warning"]]  # one warning, the text recorded in the result
    assert "12 reference and 10 generated images with 16-dimensional features" in out["warning"]
    assert out["n_real"] == 12 and out["n_fake"] == 10 and out["feature_dim"] == 16
    enough = FeatureStats(16)
    enough.update(torch.randn(17, 16, generator=g), real=True)
    enough.update(torch.randn(17, 16, generator=g), real=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "warning" not in enough.compute()
    # torch-fidelity's engine warns and records the same
    a, b = _write_images(tmp_path / "a", 8, seed=0), _write_images(tmp_path / "b", 8, seed=1)
    with pytest.warns(UserWarning, match="8 reference and 8 generated images with 16-dimensional"):
        tf = folder_metrics(a, b, features=TinyFeatures(), engine="torch-fidelity")
    assert tf["feature_dim"] == 16 and "16-dimensional" in tf["warning"]


def test_fid_needs_two_images():
    from concept_erase.evaluation.fid import FeatureStats

    stats = FeatureStats(4)
    stats.update(torch.randn(1, 4), real=True)
    stats.update(torch.randn(5, 4), real=False)
    with pytest.raises(InvalidConfigError, match="at least 2 images"):
        stats.compute()


# ----------------------------------------------------------------------------- resumable generation
class RecordingPipe:
    """Wraps a pipeline: records every (prompt, seed) it generates; raises after ``fail_after`` calls."""

    def __init__(self, pipe, fail_after=None):
        self.pipe, self.fail_after, self.made = pipe, fail_after, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompts, generator, **kwargs):
        if self.fail_after is not None and len(self.made) >= self.fail_after:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run
        out = self.pipe(prompts, generator=generator, **kwargs)
        self.made += [(p, g.initial_seed()) for p, g in zip(prompts, generator)]
        return out


def test_generation_resumes_without_regenerating(tiny_pipe, tmp_path):
    from concept_erase.evaluation.generate import generate_missing, plan_jobs
    from concept_erase.evaluation.prompts import PromptRow

    rows = [PromptRow("a red circle", split="forget"), PromptRow("a blue star", seed=10, split="retain"),
            PromptRow("a green heart", split="retain")]
    jobs = plan_jobs(rows, tmp_path / "run", images_per_prompt=2)
    assert [j.seed for j in jobs] == [0, 1, 10, 11, 0, 1]
    assert jobs[2].path == tmp_path / "run" / "retain" / "00001_s10.png"
    first = RecordingPipe(tiny_pipe, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_missing(first, jobs, batch_size=2, call_kwargs=TINY_KW, progress=False)
    done = {j.path for j in jobs if j.path.is_file()}
    assert len(done) == 2 and not list((tmp_path / "run").rglob(".*"))  # complete files only
    second = RecordingPipe(tiny_pipe)
    assert generate_missing(second, jobs, batch_size=2, call_kwargs=TINY_KW, progress=False) == 4
    assert len(second.made) == 4 and not set(first.made) & set(second.made)  # nothing generated twice
    assert generate_missing(RecordingPipe(tiny_pipe), jobs, batch_size=2, call_kwargs=TINY_KW, progress=False) == 0
    # an interrupted-and-resumed run has exactly the images of an uninterrupted one
    fresh = plan_jobs(rows, tmp_path / "fresh", images_per_prompt=2)
    generate_missing(tiny_pipe, fresh, batch_size=4, call_kwargs=TINY_KW, progress=False)
    for a, b in zip(jobs, fresh):
        diff = np.abs(np.asarray(Image.open(a.path), int) - np.asarray(Image.open(b.path), int))
        assert diff.max() <= 1


def test_manifest_refuses_to_mix_settings(tmp_path):
    from concept_erase.evaluation.generate import check_manifest

    check_manifest(tmp_path / "m", {"sampling": {"num_inference_steps": 20}})
    check_manifest(tmp_path / "m", {"sampling": {"num_inference_steps": 20}})  # same settings: resume
    (tmp_path / "m" / "forget").mkdir()
    (tmp_path / "m" / "forget" / "00000_s0.png").write_bytes(b"")
    (tmp_path / "m" / "forget" / "my-notes.txt").write_text("mine")  # a file the tool did not write
    with pytest.raises(InvalidConfigError, match="changed: sampling.*--overwrite"):
        check_manifest(tmp_path / "m", {"sampling": {"num_inference_steps": 50}})
    check_manifest(tmp_path / "m", {"sampling": {"num_inference_steps": 50}}, overwrite=True)
    assert not (tmp_path / "m" / "forget" / "00000_s0.png").exists()  # the tool's images are deleted ...
    assert (tmp_path / "m" / "forget" / "my-notes.txt").read_text() == "mine"  # ... nothing else
    # rows appended to (or dropped from the end of) the prompt file keep the other images; edited rows do not
    check_manifest(tmp_path / "p", {"prompts": ["a", "b"]})
    check_manifest(tmp_path / "p", {"prompts": ["a", "b", "c"]})
    check_manifest(tmp_path / "p", {"prompts": ["a"]})
    assert json.loads((tmp_path / "p" / "generation.json").read_text())["prompts"] == ["a", "b", "c"]
    with pytest.raises(InvalidConfigError, match=r"prompts \(row 1 onwards\)"):
        check_manifest(tmp_path / "p", {"prompts": ["a", "x", "c"]})


# ----------------------------------------------------------------------------- accelerate
def test_single_process_dist():
    from concept_erase.evaluation.distributed import Dist

    d = Dist()
    assert d.num_processes == 1 and d.is_main and d.index == 0
    assert d.shard([1, 2, 3]) == [1, 2, 3] and d.gather([4, 5]) == [4, 5] and d.broadcast({"a": 1}) == {"a": 1}
    d.wait()


# ----------------------------------------------------------------------------- end to end
def _tiny_adapter(pipe, path: Path) -> Path:
    from concept_erase import Concept, SemuConfig
    from concept_erase.adapter import UnlearningAdapter, unet_fingerprint

    g = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            out_f, in_f = module.weight.shape
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(2, in_f, generator=g)
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(out_f, 2, generator=g)
    concept = Concept(name="red", forget=["a red circle", "a red square"], anchor=["a gray circle", "a gray square"])
    meta = {"method": "semu", "concept": {**concept.to_dict(), "target": None},
            "config": SemuConfig(num_forget_images=6, sample_steps=2, seed=0).to_dict(),
            "base_fingerprint": unet_fingerprint(pipe.unet)}
    return UnlearningAdapter(tensors, meta).save(path)


@pytest.fixture
def eval_setup(tiny_pipe, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,split\na red circle,forget\na red square,forget\na crimson circle,paraphrase\n"
                       "a blue star,retain\na green heart,retain\n", encoding="utf-8")
    adapter = _tiny_adapter(tiny_pipe, tmp_path / "red.safetensors")
    return tiny_pipe, prompts, adapter


def _config(tmp_path, prompt_file, adapter, **kw):
    from concept_erase.evaluation import EvalConfig

    base = dict(out=str(tmp_path / "out"), prompts=[str(prompt_file)], base="tiny", adapters=[str(adapter)],
                images_per_prompt=2, batch_size=4, num_inference_steps=2, guidance_scale=4.0, height=32, width=32,
                target="red", grid_prompts=2)
    return EvalConfig(**{**base, **kw})


def test_evaluate_end_to_end_and_resume(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    config = _config(tmp_path, prompts, adapter)
    report = evaluate(config, pipe=pipe, classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    out = Path(config.out)
    assert report["timing"]["images_generated"] == {"base": 10, "red": 10}
    for name in ("report.json", "report.md", "metrics.png", "grid_forget.png", "grid_retain.png",
                 "scores/base.csv", "scores/red.csv"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"]["target"] == "red" and saved["versions"]["torchmetrics"]
    assert saved["models"]["red"]["sha256"] and saved["settings"]["num_processes"] == 1
    forget = saved["results"]["red"]["splits"]["forget"]
    assert forget["n"] == 4 and 0 <= forget["concept_rate"] <= 1
    fid = saved["results"]["red"]["fid_vs_base"]["retain"]
    assert fid["n_real"] == fid["n_fake"] == 4 and fid["fid"] >= 0 and fid["feature_dim"] == 16
    assert "4 reference and 4 generated images with 16-dimensional features" in fid["warning"]
    assert "no more images than the 16 feature dimensions" in (out / "report.md").read_text()
    assert "| red |" in (out / "report.md").read_text()
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # adapter fully removed
    # rerun: nothing generated again, the same numbers
    again = evaluate(config, pipe=pipe, classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    assert again["timing"]["images_generated"] == {"base": 0, "red": 0}
    assert again["results"] == report["results"]
    # other sampler settings in the same --out are refused, not mixed
    with pytest.raises(InvalidConfigError, match="other settings"):
        evaluate(_config(tmp_path, prompts, adapter, num_inference_steps=3), pipe=pipe,
                 classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)


def test_evaluate_checks_inputs_before_generating(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    clf = MeanColourClassifier()
    with pytest.raises(InvalidConfigError, match="knows no label or concept 'purple'"):
        evaluate(_config(tmp_path, prompts, adapter, target="purple"), pipe=pipe, classifier=clf, progress=False)
    with pytest.raises(InvalidConfigError, match="--fid-splits"):
        evaluate(_config(tmp_path, prompts, adapter, fid_splits=["nope"]), pipe=pipe, classifier=clf, progress=False)
    with pytest.raises(InvalidConfigError, match="at least 2"):
        evaluate(_config(tmp_path, prompts, adapter, images_per_prompt=1, fid_splits=["paraphrase"]), pipe=pipe,
                 classifier=clf, progress=False)
    assert not (tmp_path / "out" / "images").exists()
    with pytest.raises(InvalidConfigError, match="divisible by 8"):
        _config(tmp_path, prompts, adapter, height=30)


def test_evaluate_with_torch_fidelity_engine_and_reference_folder(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    ref = _write_images(tmp_path / "ref", 6, seed=5)
    common = dict(fid_ref=str(ref), kid=False)
    tm = evaluate(_config(tmp_path, prompts, adapter, **common), pipe=pipe, classifier=MeanColourClassifier(),
                  features=TinyFeatures(), progress=False)
    tf = evaluate(_config(tmp_path, prompts, adapter, engine="torch-fidelity", **common), pipe=pipe,
                  classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    for model, kind in (("red", "fid_vs_base"), ("base", "fid_vs_ref"), ("red", "fid_vs_ref")):
        assert tm["results"][model][kind]["retain"]["fid"] == pytest.approx(tf["results"][model][kind]["retain"]["fid"],
                                                                            rel=0.01, abs=1e-6)


@needs_world
def test_world_eval_with_shipped_adapter(world_pipe, world_classifier, tmp_path):
    from concept_erase.evaluation import EvalConfig, evaluate
    from concept_erase.loading import known_adapters

    if "no-red" not in known_adapters():
        pytest.skip("shipped no-red adapter not present")
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,split\na red circle,forget\na red star,forget\nred square,forget\n"
                       "a blue circle,retain\na green star,retain\n", encoding="utf-8")
    report = evaluate(EvalConfig(out=str(tmp_path / "out"), prompts=[str(prompts)], adapters=["no-red"],
                                 images_per_prompt=2), pipe=world_pipe,
                      classifier=WorldConceptClassifier(world_classifier), progress=False)
    base, erased = report["results"]["base"]["splits"], report["results"]["no-red"]["splits"]
    assert report["settings"]["target"] == "colour:red"
    assert erased["forget"]["concept_rate"] < base["forget"]["concept_rate"]
    assert erased["retain"]["accuracy"] >= base["retain"]["accuracy"] - 0.5


def test_prompts_default_to_the_adapters_concept(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, _, adapter = eval_setup
    report = evaluate(_config(tmp_path, "unused", adapter, prompts=[], images_per_prompt=1), pipe=pipe,
                      classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    assert report["prompts"]["per_split"] == {"forget": 2}
    assert report["settings"]["fid_splits"] == ["all"] and report["results"]["red"]["fid_vs_base"]["all"]["n_fake"] == 2
    with pytest.raises(InvalidPromptError, match="No --prompts given"):
        evaluate(_config(tmp_path, "unused", adapter, prompts=[], adapters=[]), pipe=pipe,
                 classifier=MeanColourClassifier(), progress=False)
