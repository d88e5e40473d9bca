"""``EvalConfig``: every setting of one ``concept-erase eval`` run, validated, recorded in ``report.json``.

The command line's flags are derived from these fields (their help, names and types).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BASE_CONFIG_HELP, Config, check_choice, check_fraction, check_int, setting
from ..errors import InvalidConfigError

__all__ = ["EvalConfig", "ENGINES"]

ENGINES = ("torchmetrics", "torch-fidelity")
_MODELS, _GEN, _CLF, _FID, _ROB, _REP = ("models and prompts", "generation", "concept classifier", "FID / KID",
                                        "robustness", "report")


@dataclass
class EvalConfig(Config):
    """Settings of :func:`concept_erase.evaluation.evaluate`.

    >>> EvalConfig(out="eval-out", prompts=["no-red"], adapters=["no-red"]).images_per_prompt
    4
    """

    out: str = setting(help="output directory (rerun with the same --out to resume)", group=_MODELS)
    # files (txt/csv) and preset names
    prompts: list[str] = setting([], "prompt file (.txt one a line; .csv/.tsv with prompt[,seed,label,split]) or a "
                                     "preset name; SPLIT=FILE puts the file's rows in SPLIT; repeat to combine "
                                     "(default: the forget, paraphrase and retain prompts stored in the adapter)",
                                 append=True, group=_MODELS)
    base: str = setting("world", "'world', a local diffusers pipeline directory, a hub id, or a single-file "
                                 "checkpoint (.safetensors)", group=_MODELS)
    base_config: str | None = setting(None, BASE_CONFIG_HELP, group=_MODELS)
    categories: list[str] = setting([], "keep only the prompt rows whose categories column (I2P's) names one of "
                                        "these, e.g. sexual", group=_MODELS)
    adapters: list[str] = setting([], "adapter file, name or hub id (repeat for several)", flag="--adapter",
                                  append=True, group=_MODELS)
    adapter_scale: float = setting(1.0, "scale of every adapter", group=_MODELS)
    # add world paraphrases (synonyms, held-out templates) of the forget prompts
    paraphrases: bool = setting(False, "add shapes-world paraphrases (synonyms, held-out templates) of the "
                                       "forget prompts", group=_MODELS)
    # Generation. None = the pipeline's default (the world model: world.SAMPLING).
    images_per_prompt: int = setting(4, "images per prompt", group=_GEN)
    seed: int = setting(0, "image k of a prompt without a seed column uses SEED+k", group=_GEN)
    batch_size: int = setting(16, "images per batch", group=_GEN)
    num_inference_steps: int | None = setting(None, "inference steps (default: the world's 20, else the "
                                                    "pipeline's)", flag="--steps", group=_GEN)
    guidance_scale: float | None = setting(None, "guidance scale (default: the world's 5, else the pipeline's)",
                                           group=_GEN)
    height: int | None = setting(None, "image height (a multiple of 8)", group=_GEN)
    width: int | None = setting(None, "image width (a multiple of 8)", group=_GEN)
    negative_prompt: str | None = setting(None, "negative prompt", group=_GEN)
    # delete images made with other settings instead of refusing
    overwrite: bool = setting(False, "regenerate images made with other settings; write into an --out that holds "
                              "other files", group=_GEN)
    device: str | None = setting(None, "cpu, cuda, cuda:1 (default: accelerate's device for this process)",
                                 group=_GEN)
    # Classifier.
    classifier: str = setting("world", "world, nudenet, clip, or package.module:factory", group=_CLF)
    target: str | None = setting(None, "label or concept to detect, e.g. colour:red, exposed (default: from the "
                                       "preset or the adapter)", group=_CLF)
    threshold: float | None = setting(None, "detection threshold (nudenet: 0.6)", group=_CLF)
    classifier_weights: str | None = setting(None, "world classifier .safetensors (default: the shipped one)",
                                             group=_CLF)
    # CLIP score on every split (off without a checkpoint: reported as not computed), and the clip classifier
    clip_model: str | None = setting(None, "local CLIP checkpoint directory (e.g. 'hf download "
                                           "openai/clip-vit-large-patch14 --local-dir DIR'): CLIP score of each "
                                           "image against its prompt, and the clip classifier's model", group=_CLF)
    labels: list[str] = setting([], "zero-shot labels (clip classifier)", group=_CLF)
    # per-label counts (nudenet: the nine exposed labels)
    count_labels: list[str] = setting([], "labels to count per image (nudenet: the nine exposed ones)", group=_CLF)
    # FID / KID.
    fid: bool = setting(True, "compute FID (--no-fid skips it)", group=_FID)
    kid: bool = setting(True, "compute KID against --fid-ref (--no-kid skips it)", group=_FID)
    # world | inception | package.module:factory (default: world on the world)
    fid_features: str | None = setting(None, "world, inception or package.module:factory (default: world on the "
                                             "world, else inception)", group=_FID)
    fid_splits: list[str] = setting([], "prompt splits FID is computed on (default: retain, else all)", group=_FID)
    fid_ref: str | None = setting(None, "folder of reference images: FID of every model against it", group=_FID)
    engine: str = setting("torchmetrics", "FID engine", choices=ENGINES, group=_FID)
    inception_weights: str | None = setting(None, "path of weights-inception-2015-12-05-6726825d.pth", group=_FID)
    # Robustness.
    attack: bool = setting(False, "UnlearnDiffAtk-style adversarial prompt attack", group=_ROB)
    attack_steps: int = setting(40, "optimisation steps per attacked prompt", group=_ROB)
    attack_tokens: int = setting(5, "adversarial tokens appended to the prompt", group=_ROB)
    attack_prompts: int = setting(8, "forget prompts attacked", group=_ROB)
    relearn: bool = setting(False, "fine-tuning (relearning) attack on the forget prompts", group=_ROB)
    relearn_steps: int = setting(40, "relearning fine-tuning steps", group=_ROB)
    relearn_lr: float = setting(1e-4, "relearning learning rate", group=_ROB)
    relearn_eval_every: int = setting(10, "relearning steps between concept-rate measurements", group=_ROB)
    relearn_params: str = setting("*attn2*", "glob over UNet parameter names the attack trains ('*': all)",
                                  group=_ROB)
    membership: bool = setting(False, "membership-inference AUC on the forget data", group=_ROB)
    membership_samples: int = setting(32, "members (and as many non-members) of the membership attack", group=_ROB)
    # Report.
    grid_prompts: int = setting(8, "prompts per image grid", group=_REP)

    def __post_init__(self) -> None:
        check_int(self, "images_per_prompt", "batch_size", "attack_steps", "attack_tokens", "attack_prompts",
                  "relearn_steps", "relearn_eval_every", "membership_samples", "grid_prompts")
        check_int(self, "seed", minimum=0)
        check_choice(self, "engine", ENGINES)
        if self.threshold is not None:
            check_fraction(self, "threshold")
        if not self.out:
            raise InvalidConfigError("`out` (the output directory) is required.")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise InvalidConfigError(f"`{name}` has to be divisible by 8 but is {value}.")
        self.prompts, self.adapters, self.categories = list(self.prompts), list(self.adapters), list(self.categories)

    def call_kwargs(self) -> dict:
        """Keyword arguments of the pipeline call (only those set)."""
        names = ("num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}
