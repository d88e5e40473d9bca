"""UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, arXiv 2308.14761): a
closed-form edit of the
cross-attention key/value projections, no training and no images.

For each attn2 ``to_k`` / ``to_v`` weight W₀ (out × d), with c_i the text-encoder embeddings of the
forget prompts, c*_i those of their anchors ("guide" concepts) and c_j those of the retain
("preserve") prompts, UCE minimises

    s_e Σ_i ‖W c_i − W₀ c*_i‖² + s_p Σ_j ‖W c_j − W₀ c_j‖² + λ ‖W − W₀‖_F²

whose solution is (paper eq. 7)

    W = (s_e Σ_i W₀c*_i c_iᵀ + s_p Σ_j W₀c_j c_jᵀ + λW₀)
        · (s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ + λI)⁻¹.

ΔW = W − W₀ has rank at most the number of distinct forget embeddings, so the LoRA export is exact.
Official code: github.com/rohitgandikota/unified-concept-editing, ``trainscripts/uce_sd_erase.py``
(2024) and ``train-scripts/train_erase.py`` (2023, the paper's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..concepts import Concept, resolve_concept
from ..config import check_choice, check_number, setting
from ..diffusion import encode_prompts
from .common import weight_modules
from .dense import DenseExportSettings, adapter_from_deltas

__all__ = ["UceConfig", "erase_uce", "uce_closed_form", "token_embeddings"]

TOKENS = ("last", "last_to_end")


@dataclass
class UceConfig(DenseExportSettings):
    """Settings of UCE; defaults from ``uce_sd_erase.py``, except the token rule (the paper's).

    >>> UceConfig().lamb
    0.5
    """

    erase_scale: float = setting(1.0, "UCE: weight s_e of the erased concepts")  # uce_sd_erase.py --erase_scale 1
    # s_p, uce_sd_erase.py --preserve_scale 1 (train_erase.py: 0.1)
    preserve_scale: float = setting(1.0, "UCE: weight s_p of the preserved (retain) concepts")
    lamb: float = setting(0.5, "UCE: regulariser λ towards the original weights")  # uce_sd_erase.py --lamb 0.5
    with_to_k: bool = setting(True, "UCE: edit to_k as well as to_v")  # both codes do by default
    # Which token embeddings stand for a prompt: "last_to_end" = the last word token, the end token
    # and the padding after it, aligned between a forget prompt and its anchor (the paper's rule,
    # train_erase.py); "last" = the last word token only (the 2024 script uce_sd_erase.py).
    # Retain prompts use the same selection.
    tokens: str = setting("last_to_end", "UCE: which token embeddings stand for a prompt", choices=TOKENS)
    # the concept's retain prompts are UCE's preserve concepts
    use_retain: bool = setting(True, "UCE: use the retain prompts as preserved concepts")
    # LoRA export (dense.py); ΔW is low-rank, so this is exact in practice.
    lora_max_error: float = setting(1e-4, "largest relative error of the LoRA export of dense deltas, per layer")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self, "erase_scale", "lamb")
        check_number(self, "preserve_scale", allow_zero=True)
        check_choice(self, "tokens", TOKENS)


def uce_closed_form(w0: torch.Tensor, c_erase: torch.Tensor, v_erase: torch.Tensor,
                    c_preserve: torch.Tensor | None = None, v_preserve: torch.Tensor | None = None, *, lamb: float,
                    erase_scale: float = 1.0, preserve_scale: float = 1.0) -> torch.Tensor:
    """The edited weight W (out × d) of UCE eq. 7, in float64.

    ``c_erase`` (n, d) and ``v_erase`` (n, out) are the inputs and their target outputs (W₀c*_i);
    ``c_preserve`` (m, d) / ``v_preserve`` (m, out) those to keep (``v_preserve`` defaults to W₀c_j).
    """
    w0 = w0.double()
    c_e, v_e = c_erase.double(), v_erase.double()
    d = w0.shape[1]
    m1 = lamb * w0 + erase_scale * v_e.T @ c_e  # (out, d): λW₀ + s_e Σ v*_i c_iᵀ
    m2 = lamb * torch.eye(d, dtype=torch.float64, device=w0.device) + erase_scale * c_e.T @ c_e  # (d, d)
    if c_preserve is not None and len(c_preserve):
        c_p = c_preserve.double()
        v_p = (c_p @ w0.T) if v_preserve is None else v_preserve.double()
        m1 = m1 + preserve_scale * v_p.T @ c_p
        m2 = m2 + preserve_scale * c_p.T @ c_p
    # W = M1 M2⁻¹ with M2 symmetric positive definite: solve M2 Wᵀ = M1ᵀ instead of inverting
    return torch.linalg.solve(m2, m1.T).T


def _last_token(pipe, prompts: list[str]) -> torch.Tensor:
    """Index of each prompt's last word token (before the end token), as the official code computes it."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    return tok["attention_mask"].sum(1) - 2


def token_embeddings(pipe, prompts: list[str], anchors: list[str] | None = None, *, tokens: str = "last"
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The embeddings ``(n, d)`` that stand for ``prompts`` (and, aligned with them, for ``anchors``)."""
    emb = encode_prompts(pipe, prompts)  # (P, T, d)
    last = _last_token(pipe, prompts)
    emb_a = encode_prompts(pipe, anchors) if anchors is not None else None
    last_a = _last_token(pipe, anchors) if anchors is not None else last
    rows, rows_a = [], []
    T = emb.shape[1]
    for i in range(len(prompts)):
        if tokens == "last":
            rows.append(emb[i, last[i]][None])
            if emb_a is not None:
                rows_a.append(emb_a[i, last_a[i]][None])
        else:  # from the last word token to the end, the same number of tokens in both prompts
            n = T - int(max(last[i], last_a[i]))
            rows.append(emb[i, last[i] : last[i] + n])
            if emb_a is not None:
                rows_a.append(emb_a[i, last_a[i] : last_a[i] + n])
    return torch.cat(rows), (torch.cat(rows_a) if emb_a is not None else None)


def erase_uce(pipe, concept: Concept | str | dict, config: UceConfig | None = None, *, progress: bool = True):
    """Erase ``concept`` from ``pipe`` with UCE's closed form; returns an adapter, the pipeline is unchanged.

    >>> adapter = erase_uce(pipe, "no-red")  # doctest: +SKIP
    """
    concept = resolve_concept(concept)
    config = config or UceConfig()
    start = time.perf_counter()
    unet = pipe.unet
    suffixes = (".attn2.to_k", ".attn2.to_v") if config.with_to_k else (".attn2.to_v",)
    modules = weight_modules(unet, lambda n: f".{n}".endswith(suffixes))
    c_e, c_star = token_embeddings(pipe, concept.forget, concept.anchor, tokens=config.tokens)  # (n, d) each
    c_p = None
    if config.use_retain and concept.retain and config.preserve_scale > 0:
        c_p, _ = token_embeddings(pipe, concept.retain, tokens=config.tokens)

    # With v*_i = W₀c*_i and v_j = W₀c_j (what UCE uses), eq. 7 factors through W₀:
    #   W − W₀ = W₀ · s_e (C* − C_e)ᵀ C_e M⁻¹,   M = λI + s_e C_eᵀC_e + s_p C_pᵀC_p   (d × d)
    # (the λ and preserve terms cancel), so M is solved once for every layer, not once per layer.
    ce, cs = c_e.double(), c_star.double()
    m = config.lamb * torch.eye(ce.shape[1], dtype=torch.float64, device=ce.device) + config.erase_scale * ce.T @ ce
    if c_p is not None:
        m = m + config.preserve_scale * c_p.double().T @ c_p.double()
    right = torch.linalg.solve(m, ce.T).T  # (n, d) = C_e M⁻¹, M symmetric
    left = config.erase_scale * (cs - ce)  # (n, d)

    def deltas():
        for name, mod in modules.items():
            w0 = mod.weight.detach().double()  # (out, d)
            yield name, (w0 @ left.T.to(w0.device)) @ right.to(w0.device)  # (out, n) @ (n, d), rank <= n

    return adapter_from_deltas(
        deltas(), pipe=pipe, method="uce", concept=concept, config=config,
        trainable_parameters=sum(m.weight.numel() for m in modules.values()), start=start,
        max_error=config.lora_max_error, max_rank=config.lora_max_rank,
        extra={"erase_tokens": int(c_e.shape[0]), "preserve_tokens": 0 if c_p is None else int(c_p.shape[0])},
    )
