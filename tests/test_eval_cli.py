"""``concept-erase eval`` as a user runs it: killed mid-run, then resumed under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="2", ACCELERATE_DISABLE_RICH="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _args(tiny_pipe_dir, prompts, out):
    return ["eval", "--base", str(tiny_pipe_dir), "--prompts", str(prompts), "--out", str(out),
            "--classifier", "tests.test_evaluation:MeanColourClassifier", "--target", "red",
            "--fid-features", "tests.test_evaluation:make_features", "--fid-splits", "all",
            "--steps", "8", "--height", "32", "--width", "32", "--images-per-prompt", "4", "--batch-size", "1",
            "--quiet"]


def test_killed_run_resumes_under_accelerate_launch(tiny_pipe_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na red square\na blue star\na green heart\na red cross\na blue circle\n",
                       encoding="utf-8")
    out = tmp_path / "out"
    images = out / "images" / "base"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "concept_erase.cli", *_args(tiny_pipe_dir, prompts, out)],
                             cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and first.poll() is None and len(list(images.rglob("[0-9]*.png"))) < 2:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no cleanup of any kind: what a crash or an OOM kill does
    first.wait()
    log.close()
    done = {p: p.stat().st_mtime_ns for p in images.rglob("[0-9]*.png")}
    total = 6 * 4
    assert 2 <= len(done) < total, (tmp_path / "first.log").read_text()[-2000:]

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate's launcher is not installed next to this Python")
    second = subprocess.run([str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
                             "-m", "concept_erase.cli", *_args(tiny_pipe_dir, prompts, out)],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["num_processes"] == 1
    assert report["timing"]["images_generated"] == {"base": total - len(done)}  # nothing generated twice
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished images untouched
    assert len(list(images.rglob("[0-9]*.png"))) == total
    assert report["results"]["base"]["splits"]["all"]["n"] == total
    assert "Concept rate" in second.stdout
