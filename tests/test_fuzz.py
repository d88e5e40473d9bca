"""Fuzz suite: generated malformed adapters, prompt files and interrupted writes.

Every case asserts the documented error type (:class:`AdapterFormatError` for adapter files,
:class:`InvalidPromptError` for prompt files), one line from the command line, and that nothing the
user owned changed: the file's bytes, the pipeline's weights, the directory's other files.
Cases are generated from a fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from concept_erase.adapter import METADATA_KEY, UnlearningAdapter
from concept_erase.cli import main
from concept_erase.errors import AdapterFormatError, ArchitectureMismatchError, InvalidPromptError

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
KOHYA = "lora_unet_" + LAYER.replace(".", "_")
RNG_SEED = 1234


def _weight_shape(pipe) -> tuple[int, int]:
    return tuple(dict(pipe.unet.named_modules())[LAYER].weight.shape)


def _good_tensors(pipe, rank: int = 2) -> dict[str, torch.Tensor]:
    out_f, in_f = _weight_shape(pipe)
    g = torch.Generator().manual_seed(0)
    return {f"unet.{LAYER}.lora_A.weight": torch.randn(rank, in_f, generator=g),
            f"unet.{LAYER}.lora_B.weight": torch.randn(out_f, rank, generator=g)}


def _write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


# ---------------------------------------------------------------- generated malformed adapters
def _cases(pipe, tmp: Path) -> list[tuple[str, Path]]:
    """(label, file) for every kind of malformed adapter."""
    rng = random.Random(RNG_SEED)
    out_f, in_f = _weight_shape(pipe)
    good = _write(tmp / "good.safetensors", _good_tensors(pipe), {"format": "pt"})
    raw = good.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    cases: list[tuple[str, bytes | dict]] = []

    # truncations at every interesting offset, and random ones
    for cut in sorted({0, 1, 7, 8, 9, 8 + header_len // 2, 8 + header_len, len(raw) - 1,
                       *(rng.randrange(len(raw)) for _ in range(12))}):
        cases.append((f"truncated at {cut}", raw[:cut]))
    # header corruptions: flipped bytes inside the JSON, a lying length, garbage
    for i in range(12):
        b = bytearray(raw)
        pos = 8 + rng.randrange(header_len)
        b[pos] = rng.choice(b'{}[]":,\x00\xff0')
        cases.append((f"header byte {pos} flipped", bytes(b)))
    cases.append(("header length too large", struct.pack("<Q", 1 << 40) + raw[8:]))
    cases.append(("header length zero", struct.pack("<Q", 0) + raw[8:]))
    cases.append(("random bytes", bytes(rng.randrange(256) for _ in range(4096))))
    cases.append(("empty file", b""))
    cases.append(("text file", b"this is not an adapter\n" * 10))
    cases.append(("offsets past the end", _raw_safetensors(
        {f"unet.{LAYER}.lora_A.weight": {"dtype": "F32", "shape": [2, in_f], "data_offsets": [0, 10**9]}})))
    cases.append(("unknown dtype", _raw_safetensors(
        {f"unet.{LAYER}.lora_A.weight": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\x00")))
    cases.append(("header is a list", _raw_safetensors([1, 2, 3])))  # type: ignore[arg-type]

    # pickles of every protocol, and a torch checkpoint (zip), named .safetensors
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        cases.append((f"pickle protocol {protocol}", pickle.dumps(Boom(), protocol=protocol)))
    buf = io.BytesIO()
    torch.save(_good_tensors(pipe), buf)
    cases.append(("torch.save checkpoint", buf.getvalue()))

    # wrong dtypes and shapes (valid safetensors, invalid adapters)
    t = _good_tensors(pipe)
    a, b = f"unet.{LAYER}.lora_A.weight", f"unet.{LAYER}.lora_B.weight"
    for label, tensors in {
        "int factors": {a: t[a].to(torch.int32), b: t[b].to(torch.int32)},
        "bool factors": {a: t[a] > 0, b: t[b] > 0},
        "1-D lora_A": {a: t[a][0], b: t[b]},
        "3-D factors": {a: t[a][None], b: t[b][None]},
        "rank 0": {a: torch.zeros(0, in_f), b: torch.zeros(out_f, 0)},
        "ranks disagree": {a: torch.randn(3, in_f), b: t[b]},
        "NaN": {a: t[a].clone().fill_(float("nan")), b: t[b]},
        "inf": {a: t[a], b: t[b].clone().fill_(float("inf"))},
        "lora_B missing": {a: t[a]},
        "no tensors": {},
        "unknown key": {"model.weight": t[a]},
        "text encoder key": {f"text_encoder.{LAYER}.lora_A.weight": t[a], b: t[b]},
        "wrong in features": {a: torch.randn(2, in_f + 1), b: t[b]},
        "rank above min(out, in)": {a: torch.randn(min(out_f, in_f) + 5, in_f),
                                    b: torch.randn(out_f, min(out_f, in_f) + 5)},
        "kohya vector alpha": {f"{KOHYA}.lora_down.weight": t[a], f"{KOHYA}.lora_up.weight": t[b],
                               f"{KOHYA}.alpha": torch.tensor([1.0, 2.0])},
        "kohya NaN alpha": {f"{KOHYA}.lora_down.weight": t[a], f"{KOHYA}.lora_up.weight": t[b],
                            f"{KOHYA}.alpha": torch.tensor(float("nan"))},
        "kohya 1-D lora_up": {f"{KOHYA}.lora_down.weight": t[a], f"{KOHYA}.lora_up.weight": t[b][:, 0]},
        "kohya rank 0": {f"{KOHYA}.lora_down.weight": torch.zeros(0, in_f),
                         f"{KOHYA}.lora_up.weight": torch.zeros(out_f, 0), f"{KOHYA}.alpha": torch.tensor(1.0)},
        "kohya text encoder": {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": t[a]},
        "kohya unknown layer": {"lora_unet_nowhere_0.lora_down.weight": t[a], "lora_unet_nowhere_0.lora_up.weight": t[b]},
    }.items():
        cases.append((label, tensors))

    # hostile metadata on valid tensors
    deep = "[" * 200_000 + "]" * 200_000
    for label, meta in {
        "metadata format_version '2'": json.dumps({"format_version": "2"}),
        "metadata format_version 99": json.dumps({"format_version": 99}),
        "metadata format_version -1": json.dumps({"format_version": -1}),
        "metadata format_version true": json.dumps({"format_version": True}),
        "metadata is a list": json.dumps([1, 2]),
        "metadata is a string": json.dumps("hello"),
        "metadata nested 200,000 deep": deep,
        "metadata nested 100 deep": json.dumps({"x": json.loads("[" * 100 + "]" * 100)}),
        "metadata of 5 MB": json.dumps({"config": {"x": "y" * (5 << 20)}}),
        "metadata not JSON": "{'python': 'dict'}",
        "concept is a list": json.dumps({"concept": ["no-red"]}),
        "concept name is a number": json.dumps({"concept": {"name": 3}}),
        "forget is a string": json.dumps({"concept": {"name": "x", "forget": "a red circle"}}),
        "trainable_fraction is text": json.dumps({"trainable_fraction": "1%"}),
        "seconds is null": json.dumps({"seconds": None}),
    }.items():
        cases.append((label, (_good_tensors(pipe), {"format": "pt", METADATA_KEY: meta})))

    files = []
    for i, (label, content) in enumerate(cases):
        path = tmp / f"case{i:03d}.safetensors"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, tuple):
            _write(path, *content)
        else:
            _write(path, content)
        files.append((label, path))
    return files


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    import concept_erase  # noqa: F401

    from .conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    return pipe, _cases(pipe, tmp_path_factory.mktemp("fuzz"))


def test_every_malformed_adapter_raises_the_project_error_and_changes_nothing(fuzz_files, tmp_path, monkeypatch):
    pipe, files = fuzz_files
    monkeypatch.chdir(tmp_path)  # a pickle that ran would leave PWNED here
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert len(files) > 70
    for label, path in files:
        content = path.read_bytes()
        with pytest.raises((AdapterFormatError, ArchitectureMismatchError)) as info:
            adapter = UnlearningAdapter.load(path)
            pipe.load_unlearning_adapter(adapter)  # parse errors above, architecture errors here
        message = str(info.value)
        assert message and "Traceback" not in message, label
        with pytest.raises((AdapterFormatError, ArchitectureMismatchError)):
            pipe.load_unlearning_adapter(str(path))
        assert path.read_bytes() == content, label
        assert pipe.unlearning_adapters == {}, label
    assert all(torch.equal(weights[k], v) for k, v in pipe.unet.state_dict().items())
    assert not Path("PWNED").exists()


def test_the_command_line_answers_every_malformed_adapter_in_one_line(fuzz_files, tmp_path, capsys):
    _, files = fuzz_files
    for label, path in files:
        code = main(["info", str(path)])
        captured = capsys.readouterr()
        if code == 0:  # a file `info` can describe; it fails only when loaded into a UNet
            continue
        assert code == 2, label
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, (label, captured.err[:300])
        code = main(["export", str(path), "--out", str(tmp_path / "x.safetensors")])
        assert code == 2 and not (tmp_path / "x.safetensors").exists(), label
        capsys.readouterr()


# ---------------------------------------------------------------- malformed prompt files
@pytest.mark.parametrize("name,content", [
    ("empty.txt", b""),
    ("blank.txt", b"\n\n   \n"),
    ("latin1.txt", "caf\xe9 au lait".encode("latin-1")),
    ("binary.txt", bytes(range(256)) * 4),
    ("nul.csv", b"prompt\na red\x00 circle\n"),
    ("noprompt.csv", b"caption,seed\na red circle,1\n"),
    ("badseed.csv", b"prompt,sd_seed\na red circle,abc\n"),
    ("negseed.csv", b"prompt,sd_seed\na red circle,-5\n"),
    ("hugeseed.csv", b"prompt,sd_seed\na red circle,99999999999999999999999\n"),
    ("ragged.csv", b"prompt,split\na red circle,forget,extra,more\n"),
    ("badsplit.csv", b"prompt,split\na red circle,../../etc\n"),
    ("quote.csv", b'prompt\n"a red circle\n'),
    ("emptyprompt.csv", b"prompt,split\n,forget\n"),
    ("header-only.csv", b"prompt,split\n"),
    ("huge-field.csv", b"prompt\n" + b"x" * (200 << 10) + b"\n"),
])
def test_malformed_prompt_files_raise_invalid_prompt_error(tmp_path, name, content):
    from concept_erase.evaluation.prompts import load_prompts

    path = tmp_path / name
    path.write_bytes(content)
    try:
        rows = load_prompts([str(path)]).rows
    except InvalidPromptError as e:
        assert str(e) and str(path.name) in str(e) or "prompt" in str(e).lower()
    else:  # accepted only if every row is a usable prompt
        assert rows and all(r.prompt.strip() and "\x00" not in r.prompt for r in rows), name
    assert path.read_bytes() == content


# ---------------------------------------------------------------- interrupted writes
def test_a_failed_save_leaves_the_old_file_and_no_temporary(tiny_pipe, tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "adapter.safetensors"
    old = UnlearningAdapter(_good_tensors(tiny_pipe), {"concept": {"name": "old"}})
    old.save(target)
    before = target.read_bytes()

    def half_then_crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(OSError):
        UnlearningAdapter(_good_tensors(tiny_pipe, rank=3), {"concept": {"name": "new"}}).save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]


_KILLED_WRITER = r"""
import os, signal, sys
import torch
from concept_erase._io import atomic_path
target = sys.argv[1]
with atomic_path(target) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"half of a new adapter")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # the power goes out mid-write
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_process_killed_mid_write_leaves_the_old_file_and_a_hidden_temporary_nobody_lists(tiny_pipe, tmp_path,
                                                                                        monkeypatch):
    from concept_erase.loading import known_adapters

    monkeypatch.setenv("CONCEPT_ERASE_HOME", str(tmp_path))
    target = tmp_path / "mine.safetensors"
    UnlearningAdapter(_good_tensors(tiny_pipe), {"concept": {"name": "mine"}}).save(target)
    before = target.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "mine.safetensors"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".mine.safetensors.") and leftovers[0].endswith(".tmp")
    assert list(known_adapters()) [:1] == ["mine"] and all(not k.startswith(".") for k in known_adapters())
    assert tiny_pipe.load_unlearning_adapter(str(tmp_path)) == "mine"  # the directory holds one adapter


# ---------------------------------------------------------------- codebook files (CodeUnlearn erasures)
def test_malformed_codebook_files_raise_the_project_error(tmp_path):
    from safetensors import safe_open

    from concept_erase.codebook import CodebookEdit
    from concept_erase.methods.codebook import WORLD_CODEBOOK

    with safe_open(str(WORLD_CODEBOOK), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()[METADATA_KEY])
    CodebookEdit.load(WORLD_CODEBOOK)  # control: the shipped file loads
    cases = {
        "deep metadata": (tensors, "[" * 100_000 + "]" * 100_000),
        "metadata list": (tensors, "[]"),
        "k missing": (tensors, json.dumps({**meta, "k": None})),
        "k too large": (tensors, json.dumps({**meta, "k": 10**6})),
        "1-D dictionary": ({**tensors, "codebook.dictionary": tensors["codebook.dictionary"][0]}, json.dumps(meta)),
        "dictionary of another width": ({**tensors, "codebook.dictionary": tensors["codebook.dictionary"][:, :3]},
                                        json.dumps(meta)),
        "NaN encoder": ({**tensors, "codebook.encoder.weight": tensors["codebook.encoder.weight"] * float("nan")},
                        json.dumps(meta)),
        "codes off out of range": ({**tensors, "codebook.off": torch.tensor([10**6])}, json.dumps(meta)),
        "encoder missing": ({k: v for k, v in tensors.items() if k != "codebook.encoder.weight"}, json.dumps(meta)),
    }
    for label, (t, m) in cases.items():
        path = _write(tmp_path / f"{len(label)}-{label.replace(' ', '_')}.safetensors", t,
                      {"format": "pt", METADATA_KEY: m})
        with pytest.raises(AdapterFormatError):
            CodebookEdit.load(path)
        assert main(["info", str(path)]) in (0, 2), label  # never a traceback
