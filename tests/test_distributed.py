"""``concept-erase eval`` in two processes gives the report of one process.

Two real processes on the CPU: ``accelerate launch --multi_gpu --num_processes 2`` (torchrun
underneath; ``accelerate launch --cpu`` starts a single process unless MPI is set up), a gloo process
group, images shared out, torchmetrics states (FID sums, KID features, CLIP score sums) reduced by
torchmetrics on the process's device. The one-process run is the same command in this process.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(pipe_dir, prompts, adapter, ref, clip, out) -> list[str]:
    return ["eval", "--base", str(pipe_dir), "--prompts", str(prompts), "--adapter", str(adapter),
            "--out", str(out), "--classifier", "tests.test_evaluation:MeanColourClassifier", "--target", "red",
            "--fid-features", "tests.test_evaluation:make_features", "--fid-splits", "all", "--fid-ref", str(ref),
            "--clip-model", str(clip), "--steps", "2", "--height", "32", "--width", "32", "--images-per-prompt", "2",
            "--batch-size", "1", "--quiet"]


def _compare(a, b, where="results") -> float:
    """Assert ``a`` and ``b`` hold the same structure and numbers; returns the largest relative difference."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        return max([_compare(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        return max([_compare(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, float) and not isinstance(b, bool):
        # sums reduced across processes add the same terms in another order: float rounding, no more
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), where
        return abs(a - b) / max(abs(a), 1e-12) if a != b else 0.0
    assert a == b, where
    return 0.0


def test_two_processes_report_what_one_process_reports(tiny_pipe_dir, tmp_path):
    import torch

    from concept_erase.cli import main
    from concept_erase.images import load_images
    from tests.conftest import build_tiny_pipeline
    from tests.test_clip_score import save_tiny_clip
    from tests.test_evaluation import _tiny_adapter, _write_images

    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate's launcher is not installed next to this Python")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,split\na red circle,forget\na red square,forget\na blue star,retain\n"
                       "a green heart,retain\na blue circle,retain\n", encoding="utf-8")
    adapter = _tiny_adapter(build_tiny_pipeline(), tmp_path / "red.safetensors")
    ref = _write_images(tmp_path / "ref", 9, seed=5)  # an odd count: the processes get unequal shares
    clip = save_tiny_clip(tmp_path / "clip")

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1", ACCELERATE_DISABLE_RICH="1", CUDA_VISIBLE_DEVICES="")
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend",
                          "no", "-m", "concept_erase.cli", *_args(tiny_pipe_dir, prompts, adapter, ref, clip,
                                                                   tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (OMP_NUM_THREADS=1): the same float rounding in the UNet
    try:
        assert main(_args(tiny_pipe_dir, prompts, adapter, ref, clip, tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)

    one_report = json.loads((tmp_path / "one" / "report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one_report["settings"]["num_processes"] == 1 and two_report["settings"]["num_processes"] == 2
    assert two_report["timing"]["images_generated"] == {"base": 10, "red": 10}  # each image made once
    largest = _compare(one_report["results"], two_report["results"])
    assert largest < 1e-6
    # every metric is there, computed on every image
    red = two_report["results"]["red"]
    assert red["fid_vs_ref"]["all"]["n_real"] == 9 and red["fid_vs_ref"]["all"]["n_fake"] == 10
    assert red["fid_vs_ref"]["all"]["kid_std"] > 0 and red["fid_vs_base"]["all"]["n_real"] == 10
    assert red["clip_score"]["retain"]["n"] == 6 and red["splits"]["all"]["n"] == 10
    # and the images themselves: the same pixels whichever process made them
    for f in sorted((tmp_path / "one" / "images").rglob("*.png")):
        other = tmp_path / "two" / f.relative_to(tmp_path / "one")
        assert torch.equal(load_images([f]), load_images([other])), f
    assert math.isfinite(red["fid_vs_ref"]["all"]["fid"])
