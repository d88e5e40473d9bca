"""``EvalConfig``: every setting of one ``concept-erase eval`` run, validated, recorded in ``report.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import InvalidConfigError

__all__ = ["EvalConfig"]

ENGINES = ("torchmetrics", "torch-fidelity")


@dataclass
class EvalConfig:
    """Settings of :func:`concept_erase.evaluation.evaluate`.

    >>> EvalConfig(out="eval-out", prompts=["no-red"], adapters=["no-red"]).images_per_prompt
    4
    """

    out: str
    prompts: list[str] = field(default_factory=list)  # files (txt/csv) and preset names
    base: str = "world"  # "world", a diffusers directory or a hub id
    adapters: list[str] = field(default_factory=list)  # files, names or hub ids
    adapter_scale: float = 1.0
    # Generation. None = the pipeline's default (the world model: world.SAMPLING).
    images_per_prompt: int = 4
    seed: int = 0  # image k of a row without its own seed uses seed + k
    batch_size: int = 16
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    overwrite: bool = False  # delete images made with other settings instead of refusing
    # Classifier.
    classifier: str = "world"  # world | nudenet | clip | package.module:factory
    target: str | None = None  # label or concept to detect (default: the preset's / adapter's target)
    threshold: float | None = None  # nudenet: 0.6
    classifier_weights: str | None = None  # world classifier file
    clip_model: str | None = None
    labels: list[str] = field(default_factory=list)  # clip zero-shot labels
    count_labels: list[str] = field(default_factory=list)  # per-label counts (nudenet: the nine exposed labels)
    # FID / KID.
    fid: bool = True
    kid: bool = True
    fid_features: str | None = None  # world | inception | package.module:factory (default: world on the world)
    fid_splits: list[str] = field(default_factory=list)  # default: retain if present, else every image
    fid_ref: str | None = None  # a folder of reference images
    engine: str = "torchmetrics"
    inception_weights: str | None = None
    # Robustness.
    paraphrases: bool = False  # add world paraphrases (synonyms, held-out templates) of the forget prompts
    attack: bool = False
    attack_steps: int = 40
    attack_tokens: int = 5
    attack_prompts: int = 8
    relearn: bool = False
    relearn_steps: int = 40
    relearn_lr: float = 1e-4
    relearn_eval_every: int = 10
    relearn_params: str = "*attn2*"
    membership: bool = False
    membership_samples: int = 32
    # Report.
    grid_prompts: int = 8  # prompts per grid
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("images_per_prompt", "batch_size", "attack_steps", "attack_tokens", "attack_prompts",
                     "relearn_steps", "relearn_eval_every", "membership_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"`{name}` must be a positive integer but is {value!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidConfigError(f"`seed` must be a non-negative integer but is {self.seed!r}.")
        if self.engine not in ENGINES:
            raise InvalidConfigError(f"`engine` must be one of {', '.join(ENGINES)} but is {self.engine!r}.")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise InvalidConfigError(f"`threshold` must be in (0, 1] but is {self.threshold!r}.")
        if not self.out:
            raise InvalidConfigError("`out` (the output directory) is required.")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise InvalidConfigError(f"`{name}` has to be divisible by 8 but is {value}.")
        self.prompts, self.adapters = list(self.prompts), list(self.adapters)

    def call_kwargs(self) -> dict:
        """Keyword arguments of the pipeline call (only those set)."""
        names = ("num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return asdict(self)
