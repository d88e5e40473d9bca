"""CodeUnlearn's codebook bottleneck: reconstruction on held-out prompts, switching no code off
reproduces the base-with-codebook exactly, an erasure loads through `load_unlearning_adapter`,
changes the forget prompt's output and unloads to the base exactly, the redirect substitutes are the
ridge solution (checked against a least-squares reference) and survive a save/load, and bad inputs
are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concept_erase import Concept
from concept_erase.codebook import Codebook, CodebookEdit, loaded_codebook
from concept_erase.errors import AdapterFormatError, ArchitectureMismatchError, InvalidConfigError, WeightsNotFoundError
from concept_erase.methods import erase_with
from concept_erase.methods.codebook import (
    WORLD_CODEBOOK, CodebookTrainingConfig, _embeddings, fit_substitutes, relative_error, train_codebook,
    world_codebook_prompts,
)

from .conftest import tiny_images

# A codebook for the random tiny pipeline: small and quick, and the bound it must meet on held-out
# prompts (relative error = ‖ĥ − h‖ / ‖h − mean h‖; 1.0 would be no better than the mean embedding).
# The random tiny text encoder's embeddings are close to isotropic noise, the hardest case for a
# sparse dictionary: 1,500 steps reach ~0.35 (training prompts) / ~0.42 (held-out); 400 steps do not.
TINY_TRAINING = CodebookTrainingConfig(codes=128, k=16, steps=1500, batch_size=512)
TINY_HELDOUT_BOUND = 0.5
# The shipped world codebook, on the world's held-out-template prompts (never used to train it):
# measured 0.176 (0.094 on its training captions).
WORLD_HELDOUT_BOUND = 0.2


@pytest.fixture(scope="module")
def tiny_codebook(tmp_path_factory):
    from .conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    train, heldout = world_codebook_prompts()
    book = train_codebook(pipe, train[::4], heldout[::4], TINY_TRAINING, progress=False)
    path = tmp_path_factory.mktemp("codebook") / "tiny-codebook.safetensors"
    book.save(path)
    return path, book


def test_tiny_codebook_reconstructs_held_out_prompts(tiny_codebook):
    _, book = tiny_codebook
    err = book.metadata["relative_error_heldout"]
    assert 0 < err < TINY_HELDOUT_BOUND, err
    assert book.metadata["relative_error_train"] < TINY_HELDOUT_BOUND


def test_shipped_world_codebook_reconstructs_held_out_prompts(world_pipe):
    book = CodebookEdit.load(WORLD_CODEBOOK)
    _, heldout = world_codebook_prompts()
    err = relative_error(book.codebook, _embeddings(world_pipe, heldout))
    assert err < WORLD_HELDOUT_BOUND, err
    assert err == pytest.approx(book.metadata["relative_error_heldout"], rel=1e-3)  # what the file claims


def test_no_code_off_reproduces_the_base_with_codebook_exactly(tiny_pipe, tiny_codebook, tmp_path):
    path, book = tiny_codebook
    edit = erase_with("codebook", tiny_pipe, "no-red", progress=False, codebook=str(path), num_codes=4)
    assert len(edit.off) > 0 and edit.metadata["config"]["codebook"] == path.name  # no local path recorded
    # the bottleneck alone, by hand: the UNet consumes book(h) for every prompt (and the empty one)
    h = _embeddings(tiny_pipe, ["a red circle", "a blue star", ""])
    by_hand = book.codebook(h)
    assert torch.equal(CodebookEdit(book.codebook, torch.zeros(0), book.probe).apply(h), by_hand)
    assert torch.equal(edit.apply(h, scale=0.0), by_hand)  # scale 0: nothing switched off
    assert not torch.equal(edit.apply(h), by_hand)

    base = tiny_images(tiny_pipe)
    name = tiny_pipe.load_unlearning_adapter(str(path))  # the codebook file itself: nothing off
    with_codebook = tiny_images(tiny_pipe)
    tiny_pipe.set_unlearning_scale(0.0)  # scale does nothing when no code is off
    assert np.array_equal(tiny_images(tiny_pipe), with_codebook)
    tiny_pipe.unload_unlearning_adapter(name)
    assert np.array_equal(tiny_images(tiny_pipe), base) and loaded_codebook(tiny_pipe) is None

    saved = edit.save(tmp_path / "no-red.codebook.safetensors")
    assert saved.stat().st_size < 200_000
    name = tiny_pipe.load_unlearning_adapter(str(saved))
    assert tiny_pipe.unlearning_adapters == {name: 1.0}
    erased = tiny_images(tiny_pipe)
    assert np.abs(erased[0] - with_codebook[0]).max() > 1e-3  # the forget prompt's output changes
    tiny_pipe.set_unlearning_scale(0.0, name)
    assert np.array_equal(tiny_images(tiny_pipe), with_codebook)  # bit for bit
    tiny_pipe.unload_unlearning_adapter()
    assert np.array_equal(tiny_images(tiny_pipe), base)


def test_info_describes_a_codebook_erasure(tiny_pipe, tiny_codebook, tmp_path, capsys):
    import json

    from concept_erase.cli import main

    path, _ = tiny_codebook
    edit = erase_with("codebook", tiny_pipe, "no-red", progress=False, codebook=str(path), num_codes=4)
    saved = edit.save(tmp_path / "no-red.codebook.safetensors")
    assert main(["info", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "codebook bottleneck, not a LoRA" in out and f"switched off  {len(edit.off)} codes" in out
    assert main(["info", str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "codebook"


def test_codebook_bad_inputs(tiny_pipe, tiny_codebook, tmp_path):
    path, book = tiny_codebook
    with pytest.raises(WeightsNotFoundError, match="codebook train"):
        erase_with("codebook", tiny_pipe, "no-red", progress=False)  # not the world: no default codebook
    with pytest.raises(ArchitectureMismatchError, match="codebook"):
        erase_with("codebook", tiny_pipe, "no-red", progress=False, codebook=str(WORLD_CODEBOOK))
    tiny_pipe.load_unlearning_adapter(str(path))
    with pytest.raises(AdapterFormatError, match="already loaded"):
        tiny_pipe.load_unlearning_adapter(str(path), adapter_name="again")
    tiny_pipe.unload_unlearning_adapter()
    bad = CodebookEdit(book.codebook, torch.tensor([0]), book.probe, {"deactivate": "zero"})
    bad.off = torch.tensor([10_000])
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(AdapterFormatError, match="outside the codebook"):
        CodebookEdit.load(tmp_path / "bad.safetensors")


def test_fit_substitutes_is_the_ridge_least_squares_solution():
    torch.manual_seed(0)
    book = Codebook(dim=6, codes=10, k=3).requires_grad_(False)
    forget, anchor, neutral = torch.randn(4, 5, 6), torch.randn(4, 5, 6), torch.randn(3, 5, 6)
    off = torch.tensor([1, 4, 7])
    ridge = 0.05
    got = fit_substitutes(book, off, forget, anchor, neutral, ridge)

    # reference: the stacked system [X; √λ I] S = [T; 0] solved by least squares
    def rows(h, target):
        z = book.codes(h)
        zeroed = z.clone()
        zeroed[..., off] = 0
        return z[..., off].reshape(-1, 3), (target - book.decode(zeroed)).reshape(-1, 6)

    xf, tf = rows(forget, book.decode(book.codes(anchor)))
    xn, tn = rows(neutral, book.decode(book.codes(neutral)))
    x, t = torch.cat([xf, xn]).double(), torch.cat([tf, tn]).double()
    lam = ridge * float((x * x).sum(0).mean())
    a = torch.cat([x, lam ** 0.5 * torch.eye(3, dtype=x.dtype)])
    b = torch.cat([t, torch.zeros(3, 6, dtype=t.dtype)])
    want = torch.linalg.lstsq(a, b).solution.float()
    assert got.shape == (3, 6)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_redirect_moves_forget_prompts_to_their_anchors_and_round_trips(tiny_pipe, tiny_codebook, tmp_path):
    path, book = tiny_codebook
    edit = erase_with("codebook", tiny_pipe, "no-red", progress=False, codebook=str(path), num_codes=8,
                      deactivate="redirect")
    zero = erase_with("codebook", tiny_pipe, "no-red", progress=False, codebook=str(path), num_codes=8,
                      deactivate="zero")
    assert edit.mode == "redirect" and edit.substitute.shape == (len(edit.off), book.codebook.dictionary.shape[1])
    assert edit.metadata["aligned_pairs"] == 8  # every no-red anchor says its forget prompt with "gray"
    forget = _embeddings(tiny_pipe, ["a red circle", "red square"])
    anchor = book.codebook(_embeddings(tiny_pipe, ["a gray circle", "gray square"]))
    # the edit brings the forget prompts' reconstruction towards their anchors', beyond what deleting does
    assert (edit.apply(forget) - anchor).norm() < (book.codebook(forget) - anchor).norm()
    assert (edit.apply(forget) - anchor).norm() < (zero.apply(forget) - anchor).norm()
    assert torch.equal(edit.apply(forget, scale=0.0), book.codebook(forget))

    saved = edit.save(tmp_path / "no-red.redirect.safetensors")
    loaded = CodebookEdit.load(saved)
    assert loaded.mode == "redirect" and torch.equal(loaded.substitute, edit.substitute)
    assert torch.equal(loaded.apply(forget), edit.apply(forget))
    base = tiny_images(tiny_pipe)
    name = tiny_pipe.load_unlearning_adapter(str(saved))
    erased = tiny_images(tiny_pipe)
    assert np.abs(erased[0] - base[0]).max() > 1e-3
    tiny_pipe.unload_unlearning_adapter(name)
    assert np.array_equal(tiny_images(tiny_pipe), base)

    # a redirect file that lost its substitutes is refused, not silently turned into deletion
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(str(saved))
    with safe_open(str(saved), framework="pt") as f:
        header = f.metadata()
    del tensors["codebook.substitute"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=header)
    with pytest.raises(AdapterFormatError, match="substitute"):
        CodebookEdit.load(tmp_path / "cut.safetensors")


def test_redirect_needs_token_aligned_anchors(tiny_pipe, tiny_codebook):
    path, _ = tiny_codebook
    concept = Concept(name="red", forget=["a red circle", "red square"], anchor=["a gray circle on a light background"],
                      retain=["a blue star"])
    with pytest.raises(InvalidConfigError, match="line up") as e:
        erase_with("codebook", tiny_pipe, concept, progress=False, codebook=str(path), deactivate="redirect")
    assert "deactivate='zero'" in str(e.value)  # says what to do
    edit = erase_with("codebook", tiny_pipe, concept, progress=False, codebook=str(path), deactivate="zero", num_codes=4)
    assert edit.mode == "zero" and edit.substitute is None
