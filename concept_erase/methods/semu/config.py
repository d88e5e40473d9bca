"""``SemuConfig``: every setting of a SEMU erasure, validated, and serialised into the adapter file."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config, check_choice, check_fraction, check_int, check_number, check_patterns, setting
from ...errors import InvalidConfigError
from ...objectives import GRADIENT_LOSSES, OBJECTIVES
from ..simu.attribution import MASK_KINDS

__all__ = ["SemuConfig", "SEMU_MASKS", "SEMU_OPTIMIZERS", "SEMU_SUBSPACES", "SEMU_PARAMETRIZATIONS"]

SEMU_MASKS = ("none", "simu")
SEMU_OPTIMIZERS = ("adam", "sophia")
SEMU_SUBSPACES = ("gradient", "random")
SEMU_PARAMETRIZATIONS = ("semu", "lora", "full")


@dataclass
class SemuConfig(Config):
    """Settings of :func:`concept_erase.erase` with SEMU.

    >>> SemuConfig(steps=100, gamma=0.95).gamma_cross_attention
    1.0
    """

    # Which layers: glob patterns over UNet module names (nn.Linear / nn.Conv2d only). Measured on
    # the shapes world (README, "Choosing the layers"): every attn2 to_k/to_v forgets best but trains
    # 2.6% of the UNet at γ = 1; the cross-attention values of the decoder plus the keys/values of the
    # highest-resolution blocks keep forgetting and retention at 0.96%. For SD 1.x, where the highest
    # resolution blocks are down_blocks.0 / up_blocks.3, ("*attn2.to_k", "*attn2.to_v") is the ESD-x
    # layer set and a good start.
    target_modules: tuple[str, ...] = setting((
        "up_blocks.*attn2.to_v",
        "up_blocks.2.*attn2.to_k",
        "down_blocks.0.*attn2.to_k",
        "down_blocks.0.*attn2.to_v",
    ), "glob patterns of the UNet module names to adapt (Linear/Conv2d)")
    # γ on attn2 layers: keep every non-zero direction (SEMU, arXiv 2502.07587). The projection G − αW adds a
    # sliver of the full-rank weight to every direction, so γ = 1 keeps a layer's full rank; any γ < 1 sees
    # through it (README, "What γ selects": 0.999 keeps 9-64 directions a layer on the shapes world).
    gamma_cross_attention: float = setting(1.0, "SEMU: explained-variance threshold γ on cross-attention (attn2)")
    gamma: float = setting(0.9, "SEMU: explained-variance threshold γ on every other target layer")
    max_rank: int | None = setting(None, "SEMU: optional cap on the rank r of each layer")
    # A budget on the share of the UNet's parameters trained (Σ r² / UNet parameters). When γ keeps
    # more, directions are admitted across all target layers in decreasing order of the share of their
    # layer's gradient variance they explain (SEMU's own criterion, one threshold for every layer) until
    # the next one would break the budget; every layer keeps at least one direction.
    max_trainable_fraction: float | None = setting(None, "SEMU: budget on the trained share of the UNet "
                                                         "(e.g. 0.005); γ's directions are cut to fit it")
    project: bool = setting(True, "SEMU: project the gradient perpendicular to the weight before the SVD")
    # Null-space constraint (AlphaEdit, arXiv 2410.02355; SPEED, arXiv 2503.07392): on the cross-attention
    # key/value layers, which see only the text encoder's outputs, remove from the forget gradient the
    # principal directions holding this share of the energy of the retain prompts' and the empty
    # prompt's embeddings, so that U_r R V_rᵀ maps that part of them to zero whatever R learns: the retain
    # prompts and the unconditional branch of guidance reach the adapter only through the rest (1 − E of
    # their energy). On the shapes world 0.8 won its dev search (README, "robust SEMU"). None: off.
    null_space: float | None = setting(None, "SEMU: keep cross-attention k/v updates off the principal directions "
                                             "holding this share of the retain and empty prompts' embedding energy "
                                             "(e.g. 0.99)")
    # Forget gradient: "guided_ascent" is the loss of the official SEMU Stable Diffusion code.
    gradient_loss: str = setting("guided_ascent", "SEMU: loss whose gradient spans the subspace",
                                 choices=tuple(GRADIENT_LOSSES))
    gradient_guidance: float = setting(7.5, "SEMU: guidance w of the guided_ascent gradient loss")
    gradient_batches: int = setting(8, "SEMU: batches the forget gradient is accumulated over")
    # clip each batch's gradient norm before summing (the official SEMU DDPM code)
    clip_gradient: float | None = setting(1.0, "SEMU: clip each batch's gradient to this norm (none: no clipping)")
    # Memory of the accumulation: False sums every target layer's gradient at once (one float32 sum per
    # layer beyond what autograd holds); True takes the layers in groups of at most the largest layer's
    # size and sums one group at a time (its SVD follows before the next group starts), so at most one
    # layer's dense gradient is held beyond autograd, at the cost of one pass over the batches per group
    # (plus one for the clipping norms). Same subspaces either way, up to float rounding.
    stream_gradient: bool = setting(False, "SEMU: accumulate the forget gradient one group of layers at a time "
                                           "(at most one layer's gradient held; one more pass per group)")
    # Data generated by the base pipeline itself.
    num_forget_images: int = setting(32, "forget images the base model generates")
    num_retain_images: int = setting(32, "retain images the base model generates")
    sample_steps: int = setting(20, "sampler steps when the pipeline generates training data")
    sample_guidance: float = setting(5.0, "guidance scale when the pipeline generates training data")
    # Training R.
    objective: str = setting("relabel", "SEMU: unlearning objective R is trained on", choices=tuple(OBJECTIVES))
    eta: float = setting(1.0, "SEMU: negative-guidance strength of the esd objective")
    steps: int = setting(300, "training steps")
    batch_size: int = setting(8, "batch size")
    learning_rate: float = setting(3e-3, "learning rate")
    # α in L_f + α·L_r; ignored without retain prompts
    retain_weight: float = setting(1.0, "SEMU: weight α of the retain term")
    # The base model's side of every loss (the relabel/esd teacher, the retain distillation target)
    # depends only on the frozen base and the noised latents: with a pool, it is computed once for
    # `target_pool` noised forget examples (and as many retain ones) in no-grad chunks of 32 (halved
    # on out-of-memory), and the training steps draw their batches from the pool, with no base forward
    # per step; never more examples than the steps draw (steps x batch_size). 0: one base forward per
    # step on freshly noised latents. On the shapes world (3 seeds, held-out prompts) the pool of 256
    # erases within the intervals of fresh latents, its point estimates the same or a little worse,
    # and a default erase takes 0.75x the time (README, "SEMU, as implemented").
    target_pool: int = setting(256, "SEMU: precompute the base model's targets for this many noised examples and "
                                    "train on them (0: a base forward every step)")
    # Robust SEMU (AdvUnlearn, arXiv 2405.15234, moved into SEMU's subspace; methods/semu/adversarial.py):
    # every step first refines, for the batch's forget prompts, `adversarial_tokens` soft token embeddings
    # appended to the prompt by `adversarial_steps` steps of the UnlearnDiffAtk objective on the current
    # adapted model (through the text encoder), then trains R on the forget loss of both the clean and the
    # attacked prompts (weight `adversarial_weight` on the attacked one) plus the retain term.
    adversarial: bool = setting(False, "SEMU robust: train R against an inner attack on the forget prompts "
                                       "(AdvUnlearn-style adversarial training)")
    adversarial_tokens: int = setting(5, "SEMU robust: soft tokens the inner attack appends to each forget "
                                         "prompt (the eval attack's 5)")
    adversarial_steps: int = setting(2, "SEMU robust: inner attack steps per training step")
    adversarial_step_size: float = setting(0.1, "SEMU robust: inner step, as a fraction of the mean norm of the "
                                                "vocabulary's token embeddings")
    adversarial_weight: float = setting(1.0, "SEMU robust: weight of the forget loss on the attacked prompts")
    # With adversarial_retain, the attack's current tokens are also appended to retain prompts, and the retain
    # term keeps the adapted model's prediction on them at the base model's (same tokens, same weight α).
    adversarial_retain: bool = setting(False, "SEMU robust: also keep the retain prompts unchanged with the "
                                              "attack's tokens appended (needs adversarial and retain prompts)")
    max_timestep: int = setting(1000, "train on timesteps t in [0, max_timestep)")
    seed: int = setting(0, "random seed of the training data and steps")
    # SEMU x SIMU ("SIMU: Selective Influence Machine Unlearning"): "simu" keeps only the rows of the
    # critical neurons (the SIMU attribution mask on the target layers) in each layer's subspace,
    # so U_r R V_rᵀ is zero outside them. "none" is plain SEMU, unchanged.
    mask: str = setting("none", "SEMU x SIMU: restrict the subspace to SIMU's critical neurons",
                        choices=SEMU_MASKS)
    mask_kind: str = setting("dual", "SEMU x SIMU: forget-critical neurons, or dual (forget and not retain)",
                             choices=MASK_KINDS)
    mask_threshold: float = setting(0.3, "SEMU x SIMU: layer-wise attribution threshold t")
    mask_steps: int = setting(5, "SEMU x SIMU: Riemann steps m of the attribution")
    # "sophia": R is trained with Sophia (arXiv 2305.14342, GNB Hessian estimate every 10 steps)
    optimizer: str = setting("adam", "SEMU: optimiser of R", choices=SEMU_OPTIMIZERS)
    sophia_rho: float = setting(0.04, "SEMU with Sophia: ρ of the clipped update")
    # Ablations, to isolate what SEMU's SVD subspace contributes (same layers, loss, data, steps and
    # optimiser). "random": U_r, V_r are random orthonormal bases of the rank the gradient's SVD chose
    # for each layer. "lora": a LoRA ("LoRA: Low-Rank Adaptation of Large Language Models", arXiv
    # 2106.09685) per layer whose rank matches SEMU's r² trainable parameters, max(1, round(r²/(in+out)));
    # "full": the full weight matrices are trained. "gradient" / "semu" are SEMU itself.
    subspace: str = setting("gradient", "SEMU ablation: U_r, V_r from the forget gradient's SVD, or random "
                                        "orthonormal ones of the same rank", choices=SEMU_SUBSPACES)
    parametrization: str = setting("semu", "SEMU ablation: train R of W + U_r R V_rᵀ (semu), a LoRA of as many "
                                           "parameters (lora), or the full weights (full)",
                                   choices=SEMU_PARAMETRIZATIONS)

    def __post_init__(self) -> None:
        check_patterns(self)
        for name in ("project", "stream_gradient", "adversarial", "adversarial_retain"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidConfigError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        check_fraction(self, "gamma", "gamma_cross_attention")
        check_int(self, "gradient_batches", "num_forget_images", "sample_steps", "batch_size")
        check_int(self, "steps", "num_retain_images", "target_pool", minimum=0)
        if self.max_rank is not None:
            check_int(self, "max_rank")
        if self.max_trainable_fraction is not None:
            check_fraction(self, "max_trainable_fraction")
        if self.null_space is not None:
            try:
                check_fraction(self, "null_space", high_open=True)
            except InvalidConfigError as e:
                raise InvalidConfigError(f"{e} It is the share of the retain and empty prompts' embedding energy "
                                         "kept off the adapter (1 would close every direction): try 0.8, or None "
                                         "to turn it off.") from None
        check_choice(self, "objective", tuple(OBJECTIVES))
        check_choice(self, "gradient_loss", tuple(GRADIENT_LOSSES))
        check_number(self, "learning_rate")
        check_number(self, "gradient_guidance", "eta", "retain_weight", allow_zero=True)
        check_number(self, "clip_gradient", optional=True)
        check_int(self, "max_timestep", maximum=1000)
        check_int(self, "adversarial_tokens", "adversarial_steps")
        check_number(self, "adversarial_step_size", "adversarial_weight")
        if self.adversarial_retain and not self.adversarial:
            raise InvalidConfigError("`adversarial_retain=True` keeps the retain prompts unchanged under robust "
                                     "SEMU's attack, but `adversarial` is False, so there is no attack: set "
                                     "adversarial=True as well, or adversarial_retain=False.")
        check_choice(self, "mask", SEMU_MASKS)
        check_choice(self, "mask_kind", MASK_KINDS)
        check_choice(self, "optimizer", SEMU_OPTIMIZERS)
        check_fraction(self, "mask_threshold")
        check_int(self, "mask_steps")
        check_number(self, "sophia_rho")
        check_choice(self, "subspace", SEMU_SUBSPACES)
        check_choice(self, "parametrization", SEMU_PARAMETRIZATIONS)
        if self.subspace != "gradient" and self.parametrization != "semu":
            raise InvalidConfigError(
                f"`subspace` {self.subspace!r} only applies to parametrization 'semu' (U_r R V_rᵀ); parametrization "
                f"{self.parametrization!r} has no subspace. Use subspace='gradient' with it.")
        # options that act on the gradient's SVD subspace, which the ablations replace or do not have
        restricting = {"mask": ("none", "(SEMU x SIMU)"), "null_space": (None, "(null-space constraint)")}
        if self.parametrization != "semu" or self.subspace != "gradient":
            for name, (off, what) in restricting.items():
                if getattr(self, name) != off:
                    raise InvalidConfigError(
                        f"`{name}` {getattr(self, name)!r} {what} restricts SEMU's gradient subspace, so it needs "
                        f"parametrization='semu' and subspace='gradient', not parametrization="
                        f"{self.parametrization!r}, subspace={self.subspace!r}. Use {name}={off!r} for the ablations.")

    def gamma_for(self, module_name: str) -> float:
        return self.gamma_cross_attention if ".attn2." in f".{module_name}." else self.gamma
