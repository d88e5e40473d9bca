"""CodeUnlearn ("CodeUnlearn: Amortized Zero-Shot Machine Unlearning in Language Models Using Discrete
Concept", arXiv 2410.10866) on a text-to-image pipeline: a codebook bottleneck on the text embeddings
that cross-attention consumes (``concept_erase/codebook.py``), trained **once per base model**, and
erasure as switching codes off, **with no per-concept training** (zero-shot).

- :func:`train_codebook` fits the bottleneck to reconstruct the text encoder's token embeddings of a
  prompt corpus (the paper trains its codebook on the model's own activations, §3.1): Adam on the
  MSE of ĥ vs h, the dictionary initialised from sampled embeddings; the relative error on held-out
  prompts is measured and written into the file. For the shapes world the corpus is every caption
  the world was trained on (and ""), the held-out set its held-out templates, and the result ships
  in the package; for another model, ``concept-erase codebook train --base ID --prompts FILE``.
- :func:`erase_codebook` finds the codes most associated with the concept (§3.2: codes activated by
  the forget data far more than by other data): for each code j, its mean activation mass per
  prompt (Σ over tokens of z_j) on the forget prompts minus the same on neutral prompts (the
  concept's anchor and retain prompts), and switches off the ``num_codes`` codes with the largest
  positive difference. Encoding a few hundred prompts and one subtraction: well under a second.
- Switching a code off makes the concept *unspecified*, and the UNet then draws the attribute from
  its prior; ``deactivate="redirect"`` (an extension of the paper, the default because it won the
  tuning on the dev concepts) makes it the anchor instead. The codes are chosen by the paired,
  token-level difference between each forget prompt and its anchor (``"a red circle"`` vs
  ``"a gray circle"``: the same tokens but one), and each switched-off code j gets a substitute
  vector s_j: ridge regression, in closed form, of (a) the anchor's reconstruction minus the forget
  prompt's reconstruction with the codes zeroed, token by token, on every forget/anchor pair, and (b)
  zero change on the neutral prompts and "" (their reconstruction with the codes zeroed must come
  back to what it was). Still no gradient training: a few hundred token embeddings and one
  ``(n, n)`` solve.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..codebook import DEACTIVATE_MODES, Codebook, CodebookEdit
from ..concepts import Concept, resolve_concept
from ..config import Config, check_choice, check_fraction, check_int, check_number, setting
from ..diffusion import encode_prompts
from ..errors import InvalidConfigError, UnsupportedArchitectureError, WeightsNotFoundError
from ..world import WEIGHTS_DIR
from ..hub import WORLD_MODEL_ID
from .common import adapter_metadata, base_model_id

__all__ = ["CodebookConfig", "CodebookTrainingConfig", "train_codebook", "erase_codebook", "WORLD_CODEBOOK",
           "world_codebook_prompts", "code_scores",
           "paired_code_scores", "fit_substitutes", "aligned_pairs"]
logger = logging.getLogger(__name__)

WORLD_CODEBOOK = WEIGHTS_DIR / "codebook.safetensors"


@dataclass
class CodebookTrainingConfig(Config):
    """Settings of the one-off codebook training (per base model)."""

    # 512 codes of which 16 per token: measured on the shapes world (README, "CodeUnlearn") this
    # reconstructs held-out prompts' embeddings well enough to keep the world's retain accuracy.
    codes: int = setting(512, "codebook size C")
    k: int = setting(16, "codes selected per token (top-k)")
    steps: int = setting(4000, "training steps")
    batch_size: int = setting(1024, "token embeddings per step")
    learning_rate: float = setting(1e-3, "Adam learning rate")
    seed: int = setting(0, "random seed")

    def __post_init__(self) -> None:
        check_int(self, "codes", "k", "steps", "batch_size")
        check_number(self, "learning_rate")
        if self.k > self.codes:
            raise InvalidConfigError(f"`k` ({self.k}) cannot exceed `codes` ({self.codes}).")


@dataclass
class CodebookConfig(Config):
    """Settings of a codebook erasure (no training: the codebook is trained once per base model).

    >>> CodebookConfig().num_codes
    32
    """

    # None: the codebook shipped with the shapes world; for another base, the file that
    # `concept-erase codebook train` wrote.
    codebook: str | None = setting(None, "codebook file of the base model (default: the shipped world codebook)")
    # The benchmark's tuning on the dev concepts (benchmarks/results/tuning.json): redirecting 16 or 32
    # codes erased all three (forget 0%) at the base model's retain accuracy; deleting 64 left 25%.
    num_codes: int = setting(32, "codes switched off (those most associated with the forget prompts)")
    # The paper deletes codes (zero / exclude), which leaves the attribute to the model's prior;
    # redirect (an extension) sends it to the anchor. Chosen by the benchmark's tuning on the dev concepts.
    deactivate: str = setting("redirect", "how a code is switched off: zero its coefficient, exclude it from the "
                              "top-k, or redirect it to a substitute fitted to the anchors", choices=DEACTIVATE_MODES)
    # Only codes used more by the forget prompts than by the neutral ones are ever switched off; a
    # fraction > 0 also skips weakly associated codes (0.05 stopped no-blue at 23 codes, forget 26%).
    min_score: float = setting(0.0, "skip codes whose association is below this fraction of the strongest one")
    # Relative to the mean squared activation of the switched-off codes (scale-free across models).
    ridge: float = setting(1e-3, "redirect: ridge penalty of the substitute fit, relative to the codes' mean energy")

    def __post_init__(self) -> None:
        check_int(self, "num_codes")
        check_choice(self, "deactivate", DEACTIVATE_MODES)
        check_fraction(self, "min_score", low_open=False)
        check_number(self, "ridge")


# ---------------------------------------------------------------- training (once per base model)
def world_codebook_prompts() -> tuple[list[str], list[str]]:
    """The shapes world's training captions (every template, colour, shape, synonym, background,
    and "") and its held-out-template prompts (never used to train the codebook)."""
    from ..world.captions import fill
    from ..world.vocab import BACKGROUNDS, COLOURS, HELDOUT_TEMPLATES, PARTIAL_TEMPLATES, SHAPES, SYNONYMS, \
        TRAIN_TEMPLATES

    colours = [w for c in COLOURS for w in (c, *SYNONYMS.get(c, ()))]
    shapes = [w for s in SHAPES for w in (s, *SYNONYMS.get(s, ()))]

    def expand(templates):
        out = set()
        for t in templates:
            for c in (colours if "{c}" in t else [""]):
                for s in (shapes if "{s}" in t else [""]):
                    for b in (BACKGROUNDS if "{b}" in t else [""]):
                        out.add(fill(t, c, s, b))
        return sorted(out)

    return [""] + expand(TRAIN_TEMPLATES + PARTIAL_TEMPLATES), expand(HELDOUT_TEMPLATES)


def _embeddings(pipe, prompts: Sequence[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([encode_prompts(pipe, list(prompts[i:i + batch])).float().cpu()
                      for i in range(0, len(prompts), batch)])  # (N, T, D)


def relative_error(book: Codebook, h: torch.Tensor) -> float:
    """‖ĥ − h‖_F / ‖h − mean(h)‖_F over all token embeddings ``h`` (..., D): 0 is perfect, 1 is no
    better than predicting the mean embedding."""
    with torch.no_grad():
        flat = h.reshape(-1, h.shape[-1])
        return float((book(flat) - flat).norm() / (flat - flat.mean(0)).norm())


def train_codebook(pipe, prompts: Sequence[str], heldout: Sequence[str] = (), config: CodebookTrainingConfig | None
                   = None, *, progress: bool = True) -> CodebookEdit:
    """Fit the bottleneck to ``pipe``'s text embeddings of ``prompts``; returns it as a
    :class:`CodebookEdit` with no code switched off (save it, then pass it as ``codebook=``)."""
    config = config or CodebookTrainingConfig()
    if not prompts:
        raise InvalidConfigError("Codebook training needs prompts (one per line in --prompts).")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(config.seed)
    h = _embeddings(pipe, prompts)  # (N, T, D)
    flat = h.reshape(-1, h.shape[-1])  # every token position is consumed by cross-attention
    book = Codebook(flat.shape[1], config.codes, config.k)
    with torch.no_grad():  # initialise the dictionary from data (centred), the encoder as its transpose
        book.bias.copy_(flat.mean(0))
        pick = torch.randint(0, len(flat), (config.codes,), generator=g)
        jitter = 1e-3 * torch.randn(config.codes, flat.shape[1], generator=g)
        atoms = F.normalize(flat[pick] - book.bias + jitter, dim=1)
        book.dictionary.copy_(atoms)
        book.encoder.weight.copy_(atoms)
        book.encoder.bias.zero_()
    opt = torch.optim.Adam(book.parameters(), lr=config.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    bar = tqdm(range(config.steps), desc="codebook", disable=not progress)
    for step in bar:
        x = flat[torch.randint(0, len(flat), (min(config.batch_size, len(flat)),), generator=g)]
        loss = F.mse_loss(book(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(mse=f"{loss.item():.2e}")
    with torch.no_grad():  # store unit-norm codes, so the file and this object decode identically
        book.dictionary.copy_(F.normalize(book.dictionary, dim=1))
    book.requires_grad_(False).eval()
    train_err = relative_error(book, h)
    held_err = relative_error(book, _embeddings(pipe, heldout)) if heldout else None
    with torch.no_grad():
        used = int((book.codes(flat) > 0).any(0).sum())
    probe = encode_prompts(pipe, [""]).float().cpu()
    meta = {"method": "codebook-training", "name": "codebook", "base_model": base_model_id(pipe),
            "training": config.to_dict(), "prompts": len(prompts), "heldout_prompts": len(heldout),
            "relative_error_train": train_err, "relative_error_heldout": held_err, "codes_used": used,
            "seconds": time.perf_counter() - start}
    logger.info("codebook: %d codes (top-%d), relative error %.4f train / %s held-out, %d codes used, %.0fs",
                config.codes, config.k, train_err, f"{held_err:.4f}" if held_err is not None else "-", used,
                meta["seconds"])
    return CodebookEdit(book, torch.zeros(0, dtype=torch.int64), probe, meta)


# ---------------------------------------------------------------- erasure (zero-shot)
def load_codebook(pipe, path: str | Path | None) -> CodebookEdit:
    """The codebook of ``pipe``'s base model: ``path``, or the shipped world codebook."""
    if path is None:
        if base_model_id(pipe) != WORLD_MODEL_ID:
            raise WeightsNotFoundError(
                "The codebook method needs a codebook trained for this base model: run `concept-erase codebook "
                "train --base DIR_OR_ID --prompts PROMPTS.txt --out codebook.safetensors` once, then pass "
                "`codebook=\"codebook.safetensors\"` (--codebook).")
        path = WORLD_CODEBOOK
    if not Path(path).is_file():
        raise WeightsNotFoundError(f"Codebook file {str(path)!r} does not exist; train one with `concept-erase "
                                   "codebook train`.")
    book = CodebookEdit.load(path)
    book.check_compatible(pipe)
    return book


def code_scores(book: Codebook, forget: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """Per code: mean activation mass per prompt (Σ_tokens z_j) on ``forget`` minus on ``neutral``
    (both ``(N, T, D)`` text embeddings); ``(C,)``."""
    with torch.no_grad():
        return book.codes(forget).sum(1).mean(0) - book.codes(neutral).sum(1).mean(0)


def aligned_pairs(pipe, concept: Concept) -> list[tuple[str, str]]:
    """The (forget, anchor) pairs whose prompts have the same number of tokens, so that token t of
    one corresponds to token t of the other (``"a red circle"`` / ``"a gray circle"``)."""
    tok = pipe.tokenizer

    def count(p: str) -> int:
        return len(tok(p, truncation=True, max_length=tok.model_max_length).input_ids)

    return [(f, a) for f, a in zip(concept.forget, concept.anchor) if count(f) == count(a)]


def paired_code_scores(book: Codebook, forget: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Per code: mean over pairs of Σ_tokens (z_j(forget) − z_j(anchor)), token-aligned ``(N, T, D)``
    embeddings of each forget prompt and its anchor; ``(C,)``."""
    with torch.no_grad():
        return (book.codes(forget) - book.codes(anchor)).sum(1).mean(0)


def fit_substitutes(book: Codebook, off: torch.Tensor, forget: torch.Tensor, anchor: torch.Tensor,
                    neutral: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Substitute vectors ``(len(off), D)`` for the switched-off codes: the ridge solution S of

        min_S Σ_forget tokens ‖z_off S − (ĥ(anchor) − ĥ_0(forget))‖² + Σ_neutral tokens ‖z_off S − (ĥ − ĥ_0)‖²
              + λ ‖S‖²,   λ = ridge · mean_j Σ_tokens z_j²

    where z_off are a token's coefficients on the switched-off codes and ĥ_0 its reconstruction with
    them zeroed: forget tokens move to their anchor's reconstruction, neutral tokens keep theirs."""
    with torch.no_grad():
        def rows(z, target):
            zeroed = book.decode(z.index_fill(-1, off, 0.0))
            return z.index_select(-1, off).reshape(-1, len(off)), (target - zeroed).reshape(-1, target.shape[-1])

        zn = book.codes(neutral)
        xf, tf = rows(book.codes(forget), book.decode(book.codes(anchor)))
        xn, tn = rows(zn, book.decode(zn))
        x, t = torch.cat([xf, xn]).double(), torch.cat([tf, tn]).double()
        gram = x.T @ x
        lam = ridge * float(gram.diagonal().mean()) + 1e-12
        return torch.linalg.solve(gram + lam * torch.eye(len(off), dtype=gram.dtype), x.T @ t).float()


def erase_codebook(pipe, concept: Concept | str | dict, config: CodebookConfig | None = None, *,
                   progress: bool = True) -> CodebookEdit:
    """Erase ``concept`` zero-shot: switch off the codes most associated with its forget prompts.

    >>> edit = erase_codebook(pipe, "no-red")          # doctest: +SKIP
    >>> edit.save("no-red.codebook.safetensors")       # doctest: +SKIP
    >>> pipe.load_unlearning_adapter("no-red.codebook.safetensors")  # doctest: +SKIP
    """
    start = time.perf_counter()
    concept, config = resolve_concept(concept), config or CodebookConfig()
    added = pipe.unet.config.get("addition_embed_type")
    if added is not None:
        # SDXL's UNet also reads the prompt through the pooled text embedding (added_cond_kwargs), a path
        # around the bottleneck on encoder_hidden_states: switching codes off could not remove the concept.
        raise UnsupportedArchitectureError(
            f"The codebook method cannot erase from {type(pipe).__name__}: its UNet (addition_embed_type={added!r}) "
            "also conditions on the pooled text embedding, which bypasses the codebook bottleneck on the "
            "cross-attention text embeddings. Use semu, esd-x, uce or another method on this model.")
    base = load_codebook(pipe, config.codebook)
    neutral_prompts = list(dict.fromkeys([*concept.anchor, *concept.retain]))
    if not neutral_prompts:
        raise InvalidConfigError(f"Concept {concept.name!r} has no anchor or retain prompts to contrast the forget "
                                 "prompts with; give a few neutral prompts as `retain`.")
    book = base.codebook
    substitute, pairs = None, []
    if config.deactivate == "redirect":
        pairs = aligned_pairs(pipe, concept)
        if not pairs:
            f, a = concept.forget[0], concept.anchor[0]
            raise InvalidConfigError(
                f"deactivate='redirect' maps each forget prompt onto its anchor token by token, so it needs anchors "
                f"that say the forget prompt with the concept replaced, in as many tokens (e.g. 'a red circle' -> 'a "
                f"gray circle'); none of the {len(concept.forget)} pairs of {concept.name!r} line up (e.g. {f!r} / "
                f"{a!r}). Give one such anchor per forget prompt, or use deactivate='zero'.")
        if len(pairs) < len(concept.forget):
            logger.warning("codebook redirect: %d of %d forget/anchor pairs have different token counts and are "
                           "not used.", len(concept.forget) - len(pairs), len(concept.forget))
        forget_h = _embeddings(pipe, [f for f, _ in pairs])
        anchor_h = _embeddings(pipe, [a for _, a in pairs])
        scores = paired_code_scores(book, forget_h, anchor_h)
    else:
        scores = code_scores(book, _embeddings(pipe, concept.forget), _embeddings(pipe, neutral_prompts))
    order = torch.argsort(scores, descending=True)
    top = float(scores[order[0]])
    off = [int(j) for j in order[: config.num_codes] if scores[j] > 0 and scores[j] >= config.min_score * top]
    if config.deactivate == "redirect" and off:
        # the neutral prompts and "" (the unconditional embedding of classifier-free guidance) keep their own
        substitute = fit_substitutes(book, torch.tensor(off, dtype=torch.int64), forget_h, anchor_h,
                                     _embeddings(pipe, [*neutral_prompts, ""]), config.ridge)
    training = {k: v for k, v in base.metadata.items() if k.startswith(("relative_error", "training", "codes_used"))}
    meta = adapter_metadata(pipe, method="codebook", concept=concept, config=config, ranks={}, trainable_parameters=0,
                            start=start, deactivate=config.deactivate, compression_error=0.0,
                            codes_off=off, code_scores=[round(float(scores[j]), 6) for j in off],
                            aligned_pairs=len(pairs),
                            codebook_training=training)
    if config.codebook is not None:  # a file never records a path of the machine it was made on
        meta["config"]["codebook"] = Path(config.codebook).name
    meta["seconds"] = time.perf_counter() - start
    logger.info("codebook erased %r: %d codes off (%s) in %.2fs", concept.name, len(off), config.deactivate,
                meta["seconds"])
    if config.deactivate == "redirect" and not off:
        meta["deactivate"] = "zero"  # nothing switched off: nothing to redirect (the bottleneck alone)
    return CodebookEdit(book, torch.tensor(off, dtype=torch.int64), base.probe, meta, substitute)
