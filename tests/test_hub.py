"""Publishing and hub loading: save_pretrained's folder and model card, diffusers' own
lora_adapter_metadata (same images through diffusers' loader), base models recorded without paths,
hub repos read from a local Hugging Face cache offline (revision, subfolder), push_to_hub's upload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import concept_erase  # noqa: F401  (attaches the pipeline methods)
from concept_erase import UnlearningAdapter
from concept_erase.cli import main
from concept_erase.errors import InvalidConfigError
from concept_erase.hub import WEIGHT_NAME, WORLD_MODEL_ID, base_model_id, looks_like_hub_id
from concept_erase.loading import SHIPPED_ADAPTERS_DIR

from .conftest import build_tiny_pipeline, tiny_images
from .test_state import _lora

ROOT = Path(__file__).parents[1]
# an absolute path of this machine: POSIX (/...), Windows (C:\..., C:/...) or a home directory
ABSOLUTE = re.compile(r'(?:^|[\s"\'`(=])(?:/(?:work|tmp|home|root|Users|var|data|mnt|opt)\b|[A-Za-z]:[\\/]|~/)')


@pytest.fixture
def adapter():
    pipe = build_tiny_pipeline()
    tensors = {**_lora(pipe, "attn2.to_v", 2, seed=1), **_lora(pipe, "attn2.to_k", 3, seed=2)}
    meta = {"method": "semu", "base_model": WORLD_MODEL_ID, "trainable_parameters": 123, "trainable_fraction": 0.01,
            "concept": {"name": "red", "forget": ["a red circle", "a red star"], "anchor": ["a gray circle"],
                        "retain": ["a blue star"]},
            "config": {"steps": 300, "learning_rate": 0.003, "target_modules": ["up_blocks.*attn2.to_v"]}}
    return UnlearningAdapter(tensors, meta)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ---------------------------------------------------------------- save_pretrained and the model card
def test_save_pretrained_writes_weights_and_a_model_card(adapter, tmp_path):
    from huggingface_hub import ModelCard

    folder = adapter.save_pretrained(tmp_path / "no-red", repo_id="someone/no-red",
                                     evaluation={"base": {"forget": 1.0, "retain": 0.98},
                                                 "erased": {"forget": 0.0, "retain": 0.97}})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", WEIGHT_NAME]
    text = (folder / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == WORLD_MODEL_ID and meta["library_name"] == "diffusers"
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-to-image"
    assert {"concept-erasure", "semu", "lora", "diffusers", "text-to-image"} <= set(meta["tags"])
    card = ModelCard.load(folder / "README.md")  # huggingface_hub parses and validates it
    assert card.data.base_model == WORLD_MODEL_ID
    for snippet in ('pipe.load_lora_weights("someone/no-red", weight_name="pytorch_lora_weights.safetensors")',
                    'pipe.load_unlearning_adapter("someone/no-red")', "--format kohya",
                    f"hf download someone/no-red {WEIGHT_NAME}", "a red circle", "| learning_rate | 0.003 |",
                    "| erased | 0 | 0.97 |", "arxiv.org/abs/2502.07587"):
        assert snippet in text, snippet
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    saved = UnlearningAdapter.load(folder / WEIGHT_NAME)
    assert saved.metadata["evaluation"]["erased"]["forget"] == 0.0
    assert all(torch.equal(saved.tensors[k], adapter.tensors[k]) for k in adapter.tensors)


def test_card_orders_the_evaluation_as_a_reader_expects():
    """The file stores the evaluation with sorted keys; the card puts forget/paraphrase/retain first,
    the base model's row first and the prompt counts last, and keeps unknown labels after them."""
    from concept_erase.hub import _evaluation_table

    evaluation = {"base model": {"forget ↓": 1.0, "retain accuracy ↑": 0.98},
                  "prompts per seed": {"forget ↓": 24, "retain accuracy ↑": 48},
                  "semu, mean": {"attack success ↓": 0.3, "custom": 7, "forget ↓": 0.1, "paraphrase ↓": 0.1,
                                 "relearn steps ↑": 20, "retain accuracy ↑": 1.0, "specificity ↑": 0.9},
                  "a file": {"forget ↓": 0.0}}
    lines = _evaluation_table(evaluation)
    assert lines[0] == ("| | forget ↓ | paraphrase ↓ | retain accuracy ↑ | specificity ↑ | attack success ↓ | "
                        "relearn steps ↑ | custom |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| base model", "| semu, mean", "| a file",
                                                           "| prompts per seed"]


def test_card_of_a_local_base_has_no_base_model_and_no_path(adapter, tmp_path, tiny_pipe_dir):
    from diffusers import StableDiffusionPipeline

    from concept_erase.methods.common import base_model_id as of_pipe

    local = StableDiffusionPipeline.from_pretrained(tiny_pipe_dir, safety_checker=None, requires_safety_checker=False)
    recorded = of_pipe(local)
    assert recorded == tiny_pipe_dir.name and not looks_like_hub_id(recorded)
    other = UnlearningAdapter(adapter.tensors, {**adapter.metadata, "base_model": recorded, "method": "uce"})
    text = (other.save_pretrained(tmp_path / "card") / "README.md").read_text()
    meta = _front_matter(text)
    assert "base_model" not in meta and meta["license"] == "other" and "uce" in meta["tags"]
    assert "BASE_MODEL_DIR_OR_ID" in text and not ABSOLUTE.search(text)


def test_save_pretrained_refuses_a_directory_of_other_files(adapter, tmp_path):
    from concept_erase.errors import OutputPathError

    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(OutputPathError, match="already holds files"):
        adapter.save_pretrained(tmp_path)
    with pytest.raises(InvalidConfigError, match="owner/name"):
        adapter.save_pretrained(tmp_path / "x", repo_id="not a repo")
    assert (tmp_path / "mine.txt").read_text() == "keep" and not (tmp_path / "x").exists()


def test_base_model_ids_never_record_a_path(tmp_path):
    snapshot = tmp_path / "hub" / "models--some-org--sd-15" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    local = tmp_path / "my-model"
    local.mkdir()
    assert base_model_id(str(snapshot)) == "some-org/sd-15"  # the Hugging Face cache knows the repo
    assert base_model_id(str(local)) == "my-model"
    assert base_model_id("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert base_model_id("/gone/away/model") == "model"  # a path that no longer exists: its name only
    assert base_model_id(str(local), world_dir=tmp_path) == WORLD_MODEL_ID


def test_shipped_adapters_record_no_absolute_path_and_describe_themselves():
    from peft import LoraConfig
    from safetensors import safe_open

    files = sorted(SHIPPED_ADAPTERS_DIR.glob("*.safetensors"))
    assert files
    for path in files:
        with safe_open(str(path), "pt") as f:
            header = f.metadata()
        for key, value in header.items():
            assert not ABSOLUTE.search(value), f"{path.name}: {key} records an absolute path"
        assert json.loads(header["concept_erase"])["base_model"] == WORLD_MODEL_ID
        lora = json.loads(header["lora_adapter_metadata"])
        config = LoraConfig(**{k.removeprefix("unet."): v for k, v in lora.items()})
        ranks = UnlearningAdapter.load(path).ranks
        assert {m: config.rank_pattern.get(m, config.r) for m in ranks} == ranks
        assert {m: config.alpha_pattern.get(m, config.lora_alpha) for m in ranks} == ranks  # scale 1 everywhere


# ---------------------------------------------------------------- diffusers' lora_adapter_metadata
def test_diffusers_reads_our_lora_config_and_gives_the_same_images(adapter, tmp_path):
    path = adapter.save(tmp_path / "red.safetensors")
    theirs = build_tiny_pipeline()
    theirs.load_lora_weights(str(path), adapter_name="red")  # unmodified diffusers, metadata from the header
    config = theirs.unet.peft_config["red"]
    assert config.r == 3 and set(config.rank_pattern.values()) == {2} and config.alpha_pattern == config.rank_pattern
    ours = build_tiny_pipeline()
    ours.load_unlearning_adapter(path)
    assert np.array_equal(tiny_images(ours), tiny_images(theirs))
    base = tiny_images(build_tiny_pipeline())
    assert np.abs(tiny_images(theirs) - base).max() > 1e-3  # the adapter does change the images


# ---------------------------------------------------------------- hub ids from a local cache, offline
def _cache_repo(cache: Path, repo_id: str, commits: dict[str, dict[str, Path]], refs: dict[str, str]) -> None:
    """Lay files out as huggingface_hub's cache does: snapshots/<commit>/<path> and refs/<name>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, files in commits.items():
        for rel, src in files.items():
            dest = repo / "snapshots" / commit / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)


def test_hub_repo_from_the_offline_cache_with_revision_and_subfolder(adapter, tmp_path):
    red = adapter.save(tmp_path / "red.safetensors")
    other = UnlearningAdapter({k: v * 2 for k, v in adapter.tensors.items()},
                              {**adapter.metadata, "concept": {"name": "red-v2"}}).save(tmp_path / "v2.safetensors")
    main_commit, v2_commit = "a" * 40, "b" * 40
    cache = tmp_path / "hf" / "hub"
    _cache_repo(cache, "someone/no-red", {main_commit: {WEIGHT_NAME: red},
                                          v2_commit: {f"sd15/{WEIGHT_NAME}": other}},
                refs={"main": main_commit, "v2": v2_commit})
    script = textwrap.dedent(f"""
        import json
        from concept_erase import UnlearningAdapter
        from concept_erase.errors import UnknownConceptError
        from concept_erase.loading import resolve_adapter
        out = {{
            "main": UnlearningAdapter.from_pretrained("someone/no-red").name,
            "tag": UnlearningAdapter.from_pretrained("someone/no-red", revision="v2", subfolder="sd15").name,
            "commit": resolve_adapter("someone/no-red", revision="{v2_commit}", subfolder="sd15",
                                      weight_name="{WEIGHT_NAME}").parent.parent.name,
        }}
        try:
            resolve_adapter("someone/missing", weight_name="x.safetensors", revision="v1")
        except UnknownConceptError as e:
            out["error"] = str(e)
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["main"] == "red" and out["tag"] == "red-v2" and out["commit"] == v2_commit
    assert "hf download someone/missing x.safetensors --revision v1" in out["error"]
    assert "huggingface-cli" not in out["error"] and "HF_HUB_OFFLINE" in out["error"]


def test_revision_is_refused_for_local_files(tmp_path, adapter):
    from concept_erase.loading import resolve_adapter

    path = adapter.save(tmp_path / "red.safetensors")
    with pytest.raises(InvalidConfigError, match="hub repo ids"):
        resolve_adapter(str(path), revision="main")


# ---------------------------------------------------------------- push_to_hub and the command line
def test_push_to_hub_uploads_the_saved_folder(adapter, monkeypatch):
    """The network calls are huggingface_hub's; they are replaced by recorders of what would be sent."""
    import huggingface_hub

    sent = {}

    def create_repo(repo_id, **kwargs):
        sent["created"] = (repo_id, kwargs.get("private"))

    def upload_folder(*, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        sent["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        sent["repo_id"], sent["revision"] = repo_id, kwargs.get("revision")
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="",
                                          commit_description="", oid="1" * 40)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    url = adapter.push_to_hub("someone/no-red", private=True, revision="main")
    assert url == "https://huggingface.co/someone/no-red/commit/1"
    assert sent["created"] == ("someone/no-red", True) and sent["repo_id"] == "someone/no-red"
    assert sorted(sent["files"]) == ["README.md", WEIGHT_NAME]
    assert b'load_unlearning_adapter("someone/no-red")' in sent["files"]["README.md"]


def test_erase_out_directory_writes_the_hub_layout(tiny_pipe_dir, tmp_path, capsys):
    out = tmp_path / "no-red-v1.5"  # a directory, although its name has a suffix
    assert main(["erase", "--method", "uce", "--base", str(tiny_pipe_dir), "--forget", "a red circle",
                 "--anchor", "a gray circle", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", WEIGHT_NAME]
    meta = _front_matter((out / "README.md").read_text())
    assert "uce" in meta["tags"] and "base_model" not in meta  # a local base that is not a hub id
    assert "model card" in capsys.readouterr().out
    assert UnlearningAdapter.load(out / WEIGHT_NAME).metadata["base_model"] == tiny_pipe_dir.name


def test_erase_push_to_hub_is_checked_before_training(tiny_pipe_dir, tmp_path, capsys, monkeypatch):
    import concept_erase.loading as loading

    def fail(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(loading, "load_base", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo, message in (("not a repo", "expects a hub repo id"), ("someone/no-red", "HF_HUB_OFFLINE is set")):
        assert main(["erase", "--method", "uce", "--base", str(tiny_pipe_dir), "--forget", "a red circle",
                     "--anchor", "a gray circle", "--push-to-hub", repo]) == 2
        assert message in capsys.readouterr().err
