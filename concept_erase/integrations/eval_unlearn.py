"""concept-erase inside eval-unlearn: a technique, and an offline metric on the shapes world.

eval-unlearn (``pip install "concept-erase[eval-unlearn]"``; the "Unlearning Benchmark for Text-to-Image
Models") finds plugins through entry points, and concept-erase declares two:

- technique ``concept_erase`` (:class:`ConceptEraseTechnique`): a base pipeline with unlearning adapters;
- metric ``concept_erase_world`` (:class:`WorldConceptMetric`): how often the images of a shapes-world
  concept's prompts show the concept, read by the world's classifier. eval-unlearn's own metrics download
  CLIP, Inception, VQA models or prompt datasets; with this one, ``eval-unlearn run`` works offline.

How the harness uses a technique (``eval_unlearn/runners``): it builds it as
``Technique(**config["technique"]["config"])``, then calls ``generate(prompts=[...], seed=None)`` once per
batch of a metric's prompts and expects one PIL image per prompt, image ``i`` drawn from seed ``seed + i``.
It reports ``erase_concept`` from the config as the run's concept. The settings of ``concept_erase`` are
:class:`TechniqueConfig`; three ways to use it:

- ``{"adapter": "no-red", "erase_concept": "red"}``: load an adapter (a shipped or ``$CONCEPT_ERASE_HOME``
  name, a ``.safetensors`` file, a directory or a hub repo id; a list loads several) onto ``model_id``
  (default ``"world"``: the shipped shapes world). ``erase_concept`` is then only the label eval-unlearn reports.
- ``{"erase_concept": "red", "method": "uce"}``: no adapter, so the concept is erased on the fly by a method of
  :data:`concept_erase.methods.METHODS` (default ``"semu"``; ``method_config`` overrides its settings) before
  the first image, and the adapter is written to ``save_path`` if one is given. The concept is a preset name
  (``"no-red"``), a phrase with a preset ``no-<phrase>`` (``"red"``, ``"nudity"``) or a concept JSON file.
- ``{"method": "none"}``: the base model unchanged, sampled exactly like the others (the baseline row).

Neither eval-unlearn nor torch is imported when this module is imported.

>>> technique = ConceptEraseTechnique(adapter="no-red", erase_concept="red")  # doctest: +SKIP
>>> technique.generate(["a red circle", "a blue star"], seed=0)[0].size       # doctest: +SKIP
(64, 64)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, check_choice, check_int, check_number, setting
from ..errors import InvalidConfigError, InvalidPromptError, OutputPathError, UnknownConceptError

__all__ = ["TechniqueConfig", "ConceptEraseTechnique", "WorldMetricConfig", "WorldConceptMetric",
           "resolve_concept_name"]
logger = logging.getLogger(__name__)

NO_METHOD = "none"
# Sampler settings when the config gives none: the world model is measured at its own; for any other
# model eval-unlearn's (every built-in technique defaults to 50 steps at guidance 7.5).
HARNESS_SAMPLING = {"num_inference_steps": 50, "guidance_scale": 7.5}
SPLITS = ("forget", "paraphrase", "retain")
CONCEPT_SPLITS = ("forget", "paraphrase")  # the splits whose prompts ask for the concept


def _method_names() -> tuple[str, ...]:
    from ..methods import METHODS

    return (*METHODS, NO_METHOD)


def resolve_concept_name(value: str):
    """``erase_concept`` -> :class:`~concept_erase.Concept`: a preset name or JSON file as it is, else the
    preset ``no-<value>`` (``"red"`` -> ``no-red``, ``"nudity"`` -> ``no-nudity``).

    >>> resolve_concept_name("red").name
    'no-red'
    """
    from ..concepts import list_presets, load_preset

    if not isinstance(value, str) or not value.strip():
        raise InvalidConfigError(f"`erase_concept` must be a non-empty string, but is {value!r}.")
    if value in list_presets() or (value.endswith(".json") and Path(value).is_file()):
        return load_preset(value)
    slug = "no-" + "-".join(value.lower().split())
    if slug in list_presets():
        return load_preset(slug)
    raise UnknownConceptError(
        f"`erase_concept` {value!r} is neither a preset, nor a phrase with a preset {slug!r}, nor a concept JSON "
        f"file. Presets: {', '.join(list_presets())}. To erase another concept write its prompts to a JSON file "
        "(fields: name, forget, anchor, retain; see concept_erase/presets/) and pass its path."
    )


# ---------------------------------------------------------------- the technique
@dataclass
class TechniqueConfig(Config):
    """Settings of the ``concept_erase`` technique, as given in eval-unlearn's ``technique.config``.

    >>> TechniqueConfig(adapter="no-red").model_id
    'world'
    """

    model_id: str = setting("world", "the base: 'world' (shipped shapes world), a pipeline directory or a hub id")
    adapter: str | list[str] | None = setting(None, "adapter(s) to load: name, .safetensors file, directory, hub id")
    # With `adapter` a free label (eval-unlearn reports it); without, the concept to erase on the fly.
    erase_concept: str | None = setting(None, "the concept: a preset, a phrase with a preset no-<phrase>, a JSON file")
    method: str | None = setting(None, "without `adapter`: the method that erases (default semu), or 'none'")
    method_config: dict = setting({}, "without `adapter`: settings of `method`, e.g. {'steps': 100}")
    save_path: str | None = setting(None, "without `adapter`: write the erased adapter here (.safetensors)")
    scale: float = setting(1.0, "strength of the loaded adapters (the LoRA scale)")
    fuse: bool = setting(True, "merge the adapters into the UNet weights: same images, no per-step overhead")
    device: str | None = setting(None, "torch device; default: cuda when available")
    # None: the world model's own sampler settings (world.SAMPLING) on the world, eval-unlearn's otherwise
    num_inference_steps: int | None = setting(None, "sampler steps")
    guidance_scale: float | None = setting(None, "classifier-free guidance scale")
    batch_size: int = setting(8, "images per pipeline call")
    # The harness passes seed=None unless its runner was given one; images are then drawn from
    # seed + i, so a run is reproducible and the base and erased models start from the same noise.
    seed: int = setting(0, "seed of image i is seed + i when the harness gives none")

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise InvalidConfigError(f"`model_id` must be 'world', a pipeline directory or a hub id, but is "
                                     f"{self.model_id!r}.")
        if isinstance(self.adapter, str):
            self.adapter = [self.adapter]
        if self.adapter is not None and (not self.adapter or not all(isinstance(a, str) and a.strip()
                                                                     for a in self.adapter)):
            raise InvalidConfigError(f"`adapter` must be a name or path, or a non-empty list of them, but is "
                                     f"{self.adapter!r}.")
        concept = self.erase_concept
        if concept is not None and (not isinstance(concept, str) or not concept.strip()):
            raise InvalidConfigError(f"`erase_concept` must be a non-empty string, but is {self.erase_concept!r}.")
        if not isinstance(self.method_config, dict):
            raise InvalidConfigError(f"`method_config` must be an object of settings, but is {self.method_config!r}.")
        if self.adapter is not None:
            given = [n for n in ("method", "save_path") if getattr(self, n) is not None]
            if given or self.method_config:
                raise InvalidConfigError(
                    f"`{(given or ['method_config'])[0]}` is for erasing on the fly, but `adapter` "
                    f"{self.adapter!r} is given and is loaded as it is. Drop one of the two."
                )
        else:
            if self.method is not None:
                check_choice(self, "method", _method_names())
            if self.method != NO_METHOD and self.erase_concept is None:
                raise InvalidConfigError(
                    "Give `adapter` (an unlearning adapter to load), or `erase_concept` (a concept to erase on the "
                    "fly with `method`), or `method: 'none'` for the base model unchanged."
                )
            if self.method == NO_METHOD and (self.method_config or self.save_path is not None):
                raise InvalidConfigError("`method` is 'none' (the base model): `method_config` and `save_path` "
                                         "have nothing to apply to.")
        check_number(self, "scale", positive=False)
        check_number(self, "guidance_scale", allow_zero=True, optional=True)
        check_int(self, "batch_size")
        check_int(self, "seed", minimum=0)
        if self.num_inference_steps is not None:
            check_int(self, "num_inference_steps")
        if not isinstance(self.fuse, bool):
            raise InvalidConfigError(f"`fuse` must be true or false, but is {self.fuse!r}.")

    @property
    def erases_on_the_fly(self) -> bool:
        return self.adapter is None and self.method != NO_METHOD


class ConceptEraseTechnique:
    """The eval-unlearn technique ``concept_erase``: ``model_id`` with unlearning adapters (see the module).

    Everything that can be checked without the model (settings, adapter files, the concept, the method's
    settings, ``save_path``) is checked before the model loads.
    """

    def __init__(self, **kwargs) -> None:
        TechniqueConfig.check_names(kwargs, what=" (technique concept_erase)")
        self.config = cfg = TechniqueConfig(**kwargs)
        from ..loading import default_device, is_world, resolve_adapter

        adapters = [resolve_adapter(a) for a in cfg.adapter or ()]
        concept = method = settings = None
        if cfg.erases_on_the_fly:
            from ..methods import get_method

            concept = resolve_concept_name(cfg.erase_concept)
            method = get_method(cfg.method or "semu")
            settings = method.config(None, **cfg.method_config)
            if cfg.save_path is not None:
                self._check_save_path(cfg.save_path)
        self.device = cfg.device or default_device()
        self.pipe = self._load_base(cfg.model_id, self.device)
        if is_world(cfg.model_id):
            from ..world import SAMPLING

            sampling = dict(SAMPLING)
        else:
            sampling = dict(HARNESS_SAMPLING)
        for name in sampling:
            if getattr(cfg, name) is not None:
                sampling[name] = getattr(cfg, name)
        self.sampling = sampling
        if method is not None:
            logger.info("Erasing %s with %s before generating", concept.name, method.name)
            adapter = method.erase(self.pipe, concept, settings, progress=False)
            if cfg.save_path is not None:
                adapter.save(cfg.save_path)
                logger.info("Wrote the adapter to %s; pass it as `adapter` to reuse it", cfg.save_path)
            adapters = [adapter]
        self.adapter_names = [self._load_adapter(a) for a in adapters]
        if cfg.fuse and self.adapter_names:
            self.pipe.fuse_unlearning_adapter()

    @staticmethod
    def _check_save_path(path: str) -> None:
        from .._io import check_output_file

        if Path(path).expanduser().exists():
            raise OutputPathError(f"`save_path` {path!r} already exists: pass it as `adapter` to use it without "
                                  "erasing again, or choose another path.")
        check_output_file(path, flag="`save_path`", suffix=".safetensors")

    @staticmethod
    def _load_base(model_id: str, device: str):
        from ..errors import WeightsNotFoundError
        from ..loading import load_base

        try:
            return load_base(model_id, device)
        except WeightsNotFoundError as e:
            raise WeightsNotFoundError(f"technique concept_erase, `model_id`: {e}") from None

    def _load_adapter(self, adapter) -> str:
        # `pipe.load_unlearning_adapter` is there: importing this module imported concept_erase, which attaches it
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "No LoRA keys associated to CLIPTextModel": UNet-only adapters
        try:
            name = self.pipe.load_unlearning_adapter(adapter, scale=self.config.scale)
        finally:
            diffusers_logging.set_verbosity(level)
        logger.info("Loaded unlearning adapter %s at scale %s", name, self.config.scale)
        return name

    def generate(self, prompts: list[str], seed: int | None = None, **kwargs) -> list:
        """One PIL image per prompt, image ``i`` from seed ``seed + i`` (``seed`` None: the config's).
        ``kwargs`` go to the pipeline (``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ...)."""
        from ..diffusion import generate_images

        for name in ("generator", "output_type"):
            if name in kwargs:
                raise InvalidConfigError(f"`{name}` is set by the technique (seeds give the generators, images are "
                                         f"PIL), but was passed as {kwargs[name]!r}.")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        start = self.config.seed if seed is None else seed
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InvalidConfigError(f"`seed` must be a non-negative integer or None, but is {seed!r}.")
        images = generate_images(self.pipe, prompts, [start + i for i in range(len(prompts))],
                                 batch_size=self.config.batch_size, **{**self.sampling, **kwargs})
        return self.pipe.numpy_to_pil(images)


# ---------------------------------------------------------------- the offline metric
@dataclass
class WorldMetricConfig(Config):
    """Settings of the ``concept_erase_world`` metric, as given in eval-unlearn's ``metric.config``."""

    concept: str = setting("no-red", "a shapes-world concept: a preset (name or JSON file) or a phrase, e.g. 'red'")
    splits: list[str] = setting(list(SPLITS), "which prompt sets of the concept to generate and score")
    max_prompts: int | None = setting(None, "at most this many prompts per split, evenly subsampled")
    batch_size: int = setting(8, "prompts per generate call of the technique")
    device: str | None = setting(None, "device of the world classifier; default: cuda when available")

    def __post_init__(self) -> None:
        if isinstance(self.splits, str):
            self.splits = [self.splits]
        if not isinstance(self.splits, (list, tuple)) or not self.splits or any(s not in SPLITS for s in self.splits):
            raise InvalidConfigError(f"`splits` must be a non-empty list of {', '.join(SPLITS)}, but is "
                                     f"{self.splits!r}.")
        self.splits = list(dict.fromkeys(self.splits))
        check_int(self, "batch_size")
        if self.max_prompts is not None:
            check_int(self, "max_prompts")


class WorldConceptMetric:
    """The eval-unlearn metric ``concept_erase_world``, offline: generate the concept's forget, paraphrase and
    retain prompts (``concept_erase.evaluation.world.prompt_sets``) and score each image with the world's
    classifier (``erasure_metrics``, as ``concept-erase eval`` does).

    The value is the concept rate over the forget and paraphrase images (lower means erased; None when
    neither split is asked for). ``details`` gives, per split, the concept rate, the share of images that
    keep the prompt's other named attribute (``kept``), joint colour/shape accuracy and the image count.
    Only counts are kept between batches, never images.
    """

    def __init__(self, **kwargs) -> None:
        WorldMetricConfig.check_names(kwargs, what=" (metric concept_erase_world)")
        self.config = cfg = WorldMetricConfig(**kwargs)
        from ..evaluation.classifiers import WorldConceptClassifier
        from ..evaluation.prompts import target_name
        from ..evaluation.world import prompt_sets
        from ..loading import default_device

        self.concept = resolve_concept_name(cfg.concept)
        self.classifier = WorldConceptClassifier(device=cfg.device or default_device())
        target = self.concept.target if isinstance(self.concept.target, dict) else None
        if target is None or len(target) != 1 or not self.classifier.knows(target_name(target)):
            raise InvalidPromptError(
                f"Metric concept_erase_world scores shapes-world concepts (a colour, shape or background, e.g. "
                f"no-red, no-circle, no-striped); concept {self.concept.name!r} has target {self.concept.target!r}."
            )
        sets = prompt_sets(self.concept, max_prompts=cfg.max_prompts)
        self.prompts = {split: sets[split] for split in cfg.splits if sets[split]}
        self._reset()

    def _reset(self) -> None:
        self._counts = {split: {"concept": 0, "kept": 0, "accurate": 0, "n": 0} for split in self.prompts}

    def load_dataset(self) -> list:
        """Batches of one split each; ``categories`` names each image's split (eval-unlearn saves them by it)."""
        from eval_unlearn.types import Dataset

        self._reset()
        size = self.config.batch_size
        return [Dataset(prompts=prompts[i : i + size],
                        metadata={"source": f"concept-erase:{self.concept.name}",
                                  "categories": [split] * len(prompts[i : i + size])})
                for split, prompts in self.prompts.items() for i in range(0, len(prompts), size)]

    def update(self, images: list, prompts: list[str], metadata: dict | None = None) -> None:
        from ..evaluation.world import erasure_metrics

        splits = (metadata or {}).get("categories") or []
        if len(images) != len(prompts) or len(splits) != len(prompts) or len(set(splits)) != 1:
            raise InvalidPromptError(f"Expected one image per prompt of one split, got {len(images)} images, "
                                     f"{len(prompts)} prompts and splits {sorted(set(splits))}.")
        rates = erasure_metrics(self.classifier, images, list(prompts), self.concept.target)
        counts = self._counts[splits[0]]
        n = len(prompts)
        for key, rate in (("concept", "concept_rate"), ("kept", "kept"), ("accurate", "accuracy")):
            counts[key] += round(rates[rate] * n)
        counts["n"] += n

    def compute(self):
        from eval_unlearn.types import MetricResult

        per_split = {split: {"concept_rate": c["concept"] / c["n"], "kept": c["kept"] / c["n"],
                             "accuracy": c["accurate"] / c["n"], "n": c["n"]}
                     for split, c in self._counts.items() if c["n"]}
        asked = [self._counts[s] for s in CONCEPT_SPLITS if s in per_split]
        value = sum(c["concept"] for c in asked) / sum(c["n"] for c in asked) if asked else None
        return MetricResult(name="ConceptRate", value=value,
                            details={"concept": self.concept.name, "target": self.concept.target, "splits": per_split,
                                     "classifier": "concept-erase shapes-world classifier"})
