"""Never lose a user's work: each case a careless or hostile user tried, as a test.

Output paths are checked before any work and nothing the user owns is overwritten or deleted;
names are data; a resumed evaluation heals damaged images; errors are the project's own, one line.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from concept_erase.cli import main
from concept_erase.errors import (
    AdapterFormatError, InvalidConfigError, InvalidPromptError, OutputPathError, TrainingDivergedError,
)

from .test_evaluation import MeanColourClassifier, TinyFeatures, _config, _tiny_adapter

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into read-only directories anyway


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_if_called(*args, **kwargs):
    raise AssertionError("work started although the output path was bad")


# ---------------------------------------------------------------- world train --out
def test_world_train_never_deletes_a_directory_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = _snapshot(mine)
    for extra in ([], ["--overwrite"]):  # not even with --overwrite: it would be replaced whole
        assert main(["world", "train", "--smoke", "--quiet", "--out", str(mine), *extra]) == 2
        assert "not a world model" in capsys.readouterr().err
        assert _snapshot(mine) == before


@pytest.mark.parametrize("out", ["..", ".", "~", "/"])
def test_world_train_refuses_protected_directories(out, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["world", "train", "--smoke", "--quiet", "--out", out, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1
    assert any(w in err for w in ("parent of the working directory", "the working directory", "home directory",
                                  "filesystem root"))


def test_world_train_replaces_its_own_model_only_with_overwrite_and_keeps_it_if_the_swap_fails(tmp_path, monkeypatch):
    from concept_erase.world.train import WorldTrainConfig, train_world

    out = tmp_path / "w"
    train_world(out, WorldTrainConfig.smoke(), progress=False)
    first = _snapshot(out)
    with pytest.raises(OutputPathError, match="already holds a world model.*--overwrite"):
        train_world(out, WorldTrainConfig.smoke(), progress=False)
    # a crash at the moment of the swap: the old model is still there, no partial directory is left
    real_rename = os.rename

    def rename(src, dst):
        if ".partial-" in str(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        train_world(out, WorldTrainConfig.smoke(), progress=False, overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _snapshot(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    # with --overwrite it is replaced, and nothing is left beside it
    train_world(out, WorldTrainConfig.smoke(), progress=False, overwrite=True)
    assert (out / "pipeline" / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


# ---------------------------------------------------------------- checks before work
def test_erase_checks_out_before_loading_anything(tmp_path, monkeypatch, capsys):
    import concept_erase.loading as loading

    monkeypatch.setattr(loading, "load_base", _fail_if_called)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    existing = tmp_path / "old.safetensors"
    existing.write_bytes(b"precious")
    cases = {
        str(a_file / "x.safetensors"): "is a file, not a directory",
        str(tmp_path): "already holds files that are not a saved adapter",  # a directory: save_pretrained's
        str(existing): "already exists. Pass --overwrite",
        str(tmp_path / "adapter.pt"): "must end in .safetensors",
    }
    for out, message in cases.items():
        code = main(["erase", "--preset", "no-red", "--out", out, "--steps", "1"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (out, err)
    assert existing.read_bytes() == b"precious"


def test_read_only_directories_are_refused_before_work(tmp_path, monkeypatch, capsys):
    import concept_erase.loading as loading

    monkeypatch.setattr(loading, "load_base", _fail_if_called)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if ROOT:  # root may write into read-only directories: let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro and mode & os.W_OK
                            else real_access(p, mode))
    try:
        assert main(["erase", "--preset", "no-red", "--out", str(ro / "a.safetensors")]) == 2
        assert "not writable" in capsys.readouterr().err
        assert main(["eval", "--adapter", "no-red", "--prompts", "no-red", "--out", str(ro / "eval")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(stat.S_IRWXU)


def test_eval_refuses_a_directory_of_other_files_before_generating(eval_setup, tmp_path):
    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own notes")  # a name eval would write
    config = _config(tmp_path, prompts, adapter)
    with pytest.raises(OutputPathError, match="not an evaluation.*--overwrite"):
        evaluate(config, pipe=pipe, classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    assert (out / "report.md").read_text() == "my own notes" and sorted(os.listdir(out)) == ["report.md"]
    with pytest.raises(OutputPathError, match="is a file"):
        evaluate(_config(tmp_path, prompts, adapter, out=str(out / "report.md")), pipe=pipe,
                 classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)


def test_other_commands_refuse_to_overwrite(tmp_path, capsys):
    shipped = str(Path(__file__).parents[1] / "concept_erase" / "adapters" / "no-red.safetensors")
    target = tmp_path / "k.safetensors"
    target.write_bytes(b"keep")
    assert main(["export", shipped, "--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_bytes() == b"keep"
    assert main(["export", shipped, "--out", str(target), "--overwrite"]) == 0
    assert target.read_bytes() != b"keep"
    png = tmp_path / "grid.png"
    png.write_bytes(b"my picture")
    assert main(["world", "sample", "--prompt", "a red circle", "-n", "1", "--out", str(png), "--quiet"]) == 2
    assert png.read_bytes() == b"my picture"
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "notes.txt").write_text("mine")
    assert main(["bench", "--quick", "--methods", "uce", "--out", str(bench), "--quiet"]) == 2
    assert "not a benchmark" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(bench), "--quiet"]) == 2
    assert "not a quickstart run" in capsys.readouterr().err


# ---------------------------------------------------------------- names are data
@pytest.mark.parametrize("name", ["no-nudity-sd1.5", "my concept", "rouge été ✓", "../../etc/passwd", "a.b.c"])
def test_any_adapter_or_concept_name_loads_and_unloads(tiny_pipe, tmp_path, name):
    from concept_erase.adapter import UnlearningAdapter
    from concept_erase.evaluation.models import resolve_models, use_model
    from concept_erase.loading import adapter_key

    path = _tiny_adapter(tiny_pipe, tmp_path / "red.safetensors")
    adapter = UnlearningAdapter.load(path)
    adapter.metadata["concept"]["name"] = name
    renamed = adapter.save(tmp_path / "no-nudity-sd1.5.safetensors")
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    assert tiny_pipe.load_unlearning_adapter(renamed) == name  # the user's name, shown as given
    assert tiny_pipe.unlearning_adapters == {name: 1.0}
    assert "." not in adapter_key(name)
    tiny_pipe.set_unlearning_scale(0.5, adapter_name=name)
    tiny_pipe.fuse_unlearning_adapter()
    tiny_pipe.unfuse_unlearning_adapter()
    tiny_pipe.unload_unlearning_adapter(name)
    # the evaluation's model names come from file names, dots included
    model = resolve_models([str(renamed)])[1]
    assert model.name == "no-nudity-sd1.5"
    with use_model(tiny_pipe, model):
        assert tiny_pipe.unlearning_adapters == {"no-nudity-sd1.5": 1.0}
    assert all(torch.equal(before[k], v) for k, v in tiny_pipe.unet.state_dict().items())


def test_adapter_names_that_cannot_be_names_are_refused(tiny_pipe, tmp_path):
    path = _tiny_adapter(tiny_pipe, tmp_path / "red.safetensors")
    for bad in ("", "   ", 3):
        with pytest.raises(InvalidConfigError, match="adapter_name"):
            tiny_pipe.load_unlearning_adapter(path, adapter_name=bad)
    name = tiny_pipe.load_unlearning_adapter(path)
    with pytest.raises(AdapterFormatError, match=f"unload_unlearning_adapter\\('{name}'\\)"):  # a real f-string
        tiny_pipe.load_unlearning_adapter(path)
    for bad in (float("inf"), float("nan"), "1"):
        with pytest.raises(InvalidConfigError, match="finite number"):
            tiny_pipe.set_unlearning_scale(bad)
    assert tiny_pipe.unlearning_adapters == {name: 1.0}


# ---------------------------------------------------------------- self-healing resume
def test_resume_regenerates_damaged_or_foreign_images(eval_setup, tmp_path):
    from PIL import Image

    from concept_erase.evaluation import evaluate

    pipe, prompts, adapter = eval_setup
    config = _config(tmp_path, prompts, adapter)
    kw = dict(pipe=pipe, classifier=MeanColourClassifier(), features=TinyFeatures(), progress=False)
    first = evaluate(config, **kw)
    images = sorted((Path(config.out) / "images" / "base").rglob("*.png"))
    images[0].write_bytes(b"")  # 0 bytes
    images[1].write_bytes(images[1].read_bytes()[:60])  # truncated
    Image.new("RGB", (32, 32), "white").save(images[2])  # a valid PNG that this run did not make
    again = evaluate(config, **kw)
    assert again["timing"]["images_regenerated"] == {"base": 3, "red": 0}
    assert again["timing"]["images_generated"] == {"base": 3, "red": 0}
    assert again["results"] == first["results"]  # the same images came back


# ---------------------------------------------------------------- small cases
def test_temp_files_are_hidden_not_safetensors_and_adapters_get_the_usual_mode(tiny_pipe, tmp_path, monkeypatch):
    from concept_erase._io import atomic_path
    from concept_erase.loading import known_adapters

    monkeypatch.setenv("CONCEPT_ERASE_HOME", str(tmp_path))
    old = os.umask(0o022)
    try:
        path = _tiny_adapter(tiny_pipe, tmp_path / "mine.safetensors")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "next.safetensors") as tmp:
            assert tmp.name.startswith(".next.safetensors.") and tmp.suffix == ".tmp"
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    (tmp_path / ".other.safetensors.abc.safetensors").write_bytes(b"left by an old version")
    assert [p.name for p in tmp_path.glob("*.tmp")] == []
    assert "mine" in known_adapters() and not any(k.startswith(".") for k in known_adapters())
    assert tiny_pipe.load_unlearning_adapter(str(tmp_path)) == "red"  # one adapter in the directory, not two


def test_honest_messages(tmp_path, capsys):
    assert main(["erase", "--forget", "", "--anchor", "a gray circle", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "`forget` must hold non-empty strings" in capsys.readouterr().err
    assert main(["erase", "--preset", "no-red", "--learning-rate", "inf", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "finite positive number" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_diverged_training_returns_no_adapter_and_says_so(tiny_pipe, tiny_concept, fast_config):
    from concept_erase import erase
    from concept_erase.methods.common import make_adapter

    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="nothing was written.*[Ll]ower"):
        erase(tiny_pipe, tiny_concept, fast_config.with_overrides(learning_rate=1e30), progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_pipe.unet.state_dict().items())
    # factors that blew up without a NaN loss are caught before an adapter (or a file) exists
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    tensors = {f"unet.{layer}.lora_A.weight": torch.full((1, 4), float("inf")),
               f"unet.{layer}.lora_B.weight": torch.ones(4, 1)}
    with pytest.raises(TrainingDivergedError, match=f"NaN/inf weights in 1 layer.*{layer}.*nothing was written"):
        make_adapter(tensors, tiny_pipe, method="semu", concept=tiny_concept, config=fast_config)


def test_truncated_and_unknown_prompts_are_counted_in_a_warning(tiny_pipe, caplog):
    from concept_erase.diffusion import check_prompts

    long = "a red circle " + "on a dark background " * 10
    with caplog.at_level(logging.WARNING, logger="concept_erase.diffusion"):
        found = check_prompts(tiny_pipe, ["a red circle", long, "xyzzy plugh", "frobnicate"], what="forget prompts")
    assert found == {"truncated": [long], "unknown": ["xyzzy plugh", "frobnicate"]}
    message = caplog.records[-1].getMessage()
    assert message.startswith("Of 4 forget prompts, 1 longer than") and "2 consist only of words" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="concept_erase.diffusion"):
        check_prompts(tiny_pipe, ["xyzzy plugh"])  # told once per prompt
    assert not caplog.records


def test_malformed_prompt_and_preset_files_raise_project_errors(tmp_path):
    from concept_erase.concepts import load_preset
    from concept_erase.evaluation.prompts import load_prompts

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidPromptError, match="not valid UTF-8 JSON"):
        load_preset(str(deep))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InvalidPromptError, match="JSON object"):
        load_preset(str(listed))
    binary = tmp_path / "p.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x00,\n\x00")
    with pytest.raises(InvalidPromptError):
        load_prompts([str(binary)])


@pytest.fixture
def eval_setup(tiny_pipe, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,split\na red circle,forget\na red square,forget\na crimson circle,paraphrase\n"
                       "a blue star,retain\na green heart,retain\n", encoding="utf-8")
    return tiny_pipe, prompts, _tiny_adapter(tiny_pipe, tmp_path / "red.safetensors")


def test_cli_info_of_a_broken_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    header = json.dumps({"__metadata__": {"concept_erase": json.dumps([1, 2])}}).encode()
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "must be a JSON object" in err
