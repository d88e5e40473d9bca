"""The command line: erase / info / export on a tiny pipeline directory, and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from concept_erase import UnlearningAdapter
from concept_erase.cli import main

FAST = ["--steps", "2", "--num-forget-images", "2", "--num-retain-images", "2", "--sample-steps", "2",
        "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def cli_adapter(tiny_pipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "red.safetensors"
    assert main(["erase", "--base", str(tiny_pipe_dir), "--forget", "a red circle", "a red star",
                 "--anchor", "a gray circle", "a gray star", "--retain", "a blue circle", "--name", "red",
                 "--out", str(out), *FAST]) == 0
    return out


def test_erase_writes_an_adapter_and_prints_a_summary(cli_adapter, capsys, tiny_pipe_dir, tmp_path):
    adapter = UnlearningAdapter.load(cli_adapter)
    assert adapter.metadata["concept"]["forget"] == ["a red circle", "a red star"]
    assert adapter.metadata["config"]["steps"] == 2
    out = tmp_path / "p.safetensors"
    assert main(["erase", "--base", str(tiny_pipe_dir), "--preset", "no-red", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "trainable" in text and "% of the UNet" in text and str(out) in text


def test_info_and_json(cli_adapter, capsys):
    assert main(["info", str(cli_adapter)]) == 0
    assert "concept       red" in capsys.readouterr().out
    assert main(["info", str(cli_adapter), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metadata"]["method"] == "semu" and data["ranks"]


def test_export_kohya(cli_adapter, tmp_path, capsys):
    out = tmp_path / "k.safetensors"
    assert main(["export", str(cli_adapter), "--format", "kohya", "--out", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert all(k.startswith("lora_unet_") for k in f.keys())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["erase", "--preset", "no-unicorns", "--out", "x.safetensors"], "Unknown preset 'no-unicorns'"),
        (["erase", "--forget", "a red circle", "--out", "x.safetensors"], "--anchor"),
        (["erase", "--preset", "no-red", "--gamma", "1.5", "--out", "x.safetensors"], "`gamma` must be in (0, 1]"),
        (["info", "missing.safetensors"], "does not exist"),
        (["erase", "--base", "/nonexistent-dir-xyz", "--preset", "no-red", "--out", "x.safetensors"],
         "is not an existing directory"),
        (["erase", "--base", "nobody/no-such-model", "--preset", "no-red", "--out", "x.safetensors"],
         "Could not load --base"),
    ],
)
def test_errors_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_file_for_info(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not safetensors")
    assert main(["info", str(bad)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "concept_erase.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "quickstart" in result.stdout and "erase" in result.stdout


def test_erase_with_a_peer_method_and_settings(tiny_pipe_dir, tmp_path):
    out = tmp_path / "uce.safetensors"
    assert main(["erase", "--method", "uce", "--base", str(tiny_pipe_dir), "--forget", "a red circle",
                 "--anchor", "a gray circle", "--set", "lamb=0.1", "--out", str(out), "--quiet"]) == 0
    meta = UnlearningAdapter.load(out).metadata
    assert meta["method"] == "uce" and meta["config"]["lamb"] == 0.1


def test_bad_setting_names_the_valid_ones(tiny_pipe_dir, tmp_path, capsys):
    assert main(["erase", "--method", "uce", "--base", str(tiny_pipe_dir), "--forget", "a red circle",
                 "--anchor", "a gray circle", "--set", "nope=1", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "has no setting 'nope'" in capsys.readouterr().err
