"""FID and KID through torchmetrics (or torch-fidelity), with three kinds of features.

- ``"inception"``: Inception-v3 pool features (2048), the standard of published tables. Its weights
  file is torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``; offline, put it in
  ``$TORCH_HOME/hub/checkpoints/`` or pass ``inception_weights=PATH``.
- ``"world"``: the shapes-world classifier's penultimate features (128), offline and fast.
- any ``nn.Module`` mapping ``(B, 3, H, W)`` floats in [0, 1] to ``(B, D)`` features.

Features are computed once per image and fed to torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance`` through a pass-through module, so FID keeps only sums and covariance
sums (memory flat in the number of images; multi-process reduction is a sum) and KID keeps the
``(N, D)`` features, never images. ``folder_metrics(..., engine="torch-fidelity")`` computes the same
numbers with torch-fidelity's ``calculate_metrics`` and a registered feature extractor.

Both engines draw KID's subsets by one rule (:func:`kid_subset_plan`: 100 subsets of at most half the
smaller set, so ``kid_std`` measures something) and warn, and record in the result, when a side has
no more images than the features have dimensions (:func:`sample_size_warning`).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import InvalidConfigError, WeightsNotFoundError
from ..images import image_files, iter_image_batches, to_tensor
from ..world import load_classifier as load_world_classifier
from .classifiers import import_object

__all__ = ["feature_extractor", "feature_dim", "features_of", "InceptionFeatures", "WorldFeatures", "FeatureStats",
           "kid_subset_plan", "sample_size_warning", "KID_SUBSETS", "KID_SUBSET_SIZE", "folder_metrics",
           "fid_of_images", "module_device", "INCEPTION_FILE", "INCEPTION_URL", "inception_weights_path"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
_INCEPTION_SHA256_PREFIX = "6726825d"


# ----------------------------------------------------------------------------- features
def inception_weights_path(path: str | Path | None = None) -> Path:
    """The Inception-v3 weights file to use, checked; raises :class:`WeightsNotFoundError` saying
    exactly which file to put where when it is missing."""
    default = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    candidate = Path(path).expanduser() if path else default
    if not candidate.is_file():
        raise WeightsNotFoundError(
            f"FID with Inception-v3 features needs the file {INCEPTION_FILE} (about 91 MB), which is not at "
            f"{str(candidate)!r}. Download it from {INCEPTION_URL} and put it at {str(default)!r} "
            f"(the directory is $TORCH_HOME/hub/checkpoints), or pass --inception-weights PATH. On the shapes world, "
            "`--fid-features world` needs no download; `--no-fid` skips FID."
        )
    # The file is a pickle: load only the official one, recognised by its SHA-256 (torch.hub's naming).
    digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
    if not digest.startswith(_INCEPTION_SHA256_PREFIX):
        raise WeightsNotFoundError(
            f"{str(candidate)!r} is not torch-fidelity's {INCEPTION_FILE} (SHA-256 {digest[:8]}..., expected "
            f"{_INCEPTION_SHA256_PREFIX}...). Download it again from {INCEPTION_URL}; concept-erase loads no other "
            "pickled weights."
        )
    return candidate


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (torch-fidelity's TF-ported weights) on float images in [0, 1]."""

    def __init__(self, weights: str | Path | None = None, feature: int = 2048):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = inception_weights_path(weights)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                                      feature_extractor_weights_path=str(path))
        self.num_features = feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, 2048)
        return self.net((images.clamp(0, 1) * 255).round().to(torch.uint8))


class WorldFeatures(nn.Module):
    """The world classifier's penultimate features (128) as a feature module."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_features = model.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


def feature_extractor(kind: str | nn.Module = "world", *, inception_weights: str | Path | None = None,
                      world_weights: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """``"world"``, ``"inception"``, ``"pkg.module:factory"`` or an ``nn.Module`` -> feature module in eval mode."""
    if isinstance(kind, nn.Module):
        module = kind
    elif kind == "world":
        module = WorldFeatures(load_world_classifier(world_weights))
    elif kind in ("inception", "inception-2048"):
        module = InceptionFeatures(inception_weights)
    elif ":" in kind:
        obj = import_object(kind)
        module = obj() if not isinstance(obj, nn.Module) else obj
        if not isinstance(module, nn.Module):
            raise InvalidConfigError(f"{kind!r} gave a {type(module).__name__}, not a torch.nn.Module.")
    else:
        raise InvalidConfigError(f"Unknown FID features {kind!r}; use world, inception, or `package.module:factory`.")
    return module.eval().requires_grad_(False).to(device)


def module_device(module: nn.Module) -> torch.device:
    """Where a feature module's parameters live (the CPU for a module without parameters)."""
    return next(iter(module.parameters()), torch.empty(0)).device


def feature_dim(module: nn.Module) -> int:
    """Output width of a feature module (its ``num_features``, or measured on a random batch)."""
    dim = getattr(module, "num_features", None)
    if isinstance(dim, int):
        return dim
    with torch.no_grad():
        device = module_device(module)
        return int(module(torch.rand(2, 3, 64, 64, device=device)).shape[-1])


class _PassThrough(nn.Module):
    """Lets torchmetrics accumulate features computed elsewhere: forward(features) = features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ----------------------------------------------------------------------------- metrics
KID_SUBSETS = 100  # torchmetrics' and torch-fidelity's default
KID_SUBSET_SIZE = 1000  # the cap of both libraries (Binkowski et al., "Demystifying MMD GANs", arXiv:1801.01401)


def kid_subset_plan(n_real: int, n_fake: int, *, subsets: int = KID_SUBSETS,
                subset_size: int = KID_SUBSET_SIZE) -> tuple[int, int]:
    """``(subsets, subset_size)`` of KID on ``n_real`` and ``n_fake`` feature vectors.

    Subsets hold at most half the smaller set (and at most ``subset_size``), so they differ from one
    another and their spread (``kid_std``) says how much KID moves with the sample: subsets as large as
    the set would all be the set itself, with a spread of 0. Below 4 images a side no two different
    subsets of at least 2 exist: KID is then computed once on the whole sets (no spread).

    >>> kid_subset_plan(5000, 5000), kid_subset_plan(40, 64), kid_subset_plan(3, 10)
    ((100, 1000), (100, 20), (1, 3))
    """
    n = min(n_real, n_fake)
    if n < 4:
        return 1, n
    return subsets, min(subset_size, n // 2)


def sample_size_warning(n_real: int, n_fake: int, dim: int, *, what: str = "FID") -> str | None:
    """The warning for FID/KID on no more images than feature dimensions (``None`` when there are more).

    The covariance of ``n`` feature vectors has rank at most ``n - 1``: with ``n <= dim`` it is singular,
    and FID (its matrix square root) is biased and not comparable with FID on more images. The warning
    is issued once (a :class:`UserWarning`, by the main process) and returned, for the report."""
    n = min(n_real, n_fake)
    if n > dim:
        return None
    message = (f"{what} on {n_real} reference and {n_fake} generated images with {dim}-dimensional features: "
               f"no more images than feature dimensions, so the covariance is singular and FID is unreliable "
               f"(KID is unbiased at any size). Use more than {dim} images a side (published tables use 10k-30k), "
               "or features of lower dimension.")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        warnings.warn(message, UserWarning, stacklevel=3)
    return message


class FeatureStats:
    """FID (and KID) between a fixed "real" set and any number of "fake" sets, fed with features.

    ``update(features, real=True)`` once for the reference, then for each model ``update(..., real=False)``,
    ``compute()`` and ``reset_fake()``. The reference statistics are kept across resets. The states
    live on ``device``: under several processes that must be the process's own device
    (``Dist.device``), the one its process group gathers from (NCCL cannot gather CPU tensors).
    KID's subsets follow :func:`kid_subset_plan`.

    >>> stats = FeatureStats(128)
    >>> stats.update(torch.randn(50, 128), real=True); stats.update(torch.randn(50, 128), real=False)
    >>> sorted(stats.compute())  # doctest: +SKIP
    ['feature_dim', 'fid', 'kid_mean', 'kid_std', 'kid_subset_size', 'kid_subsets', 'n_fake', 'n_real', 'warning']
    """

    def __init__(self, num_features: int, *, kid: bool = True, kid_subsets: int = KID_SUBSETS,
                 kid_subset_size: int = KID_SUBSET_SIZE, device: str | torch.device = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.num_features = num_features
        self.device = torch.device(device)
        self.fid = FrechetInceptionDistance(feature=_PassThrough(num_features),
                                            reset_real_features=False).to(self.device)
        with warnings.catch_warnings():  # "KID will save all extracted features": features, never images
            warnings.simplefilter("ignore", UserWarning)
            self.kid = (KernelInceptionDistance(feature=_PassThrough(num_features), subsets=kid_subsets,
                                                subset_size=kid_subset_size, reset_real_features=False).to(self.device)
                        if kid else None)
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size

    def update(self, features: torch.Tensor, *, real: bool) -> None:
        features = features.detach().to(self.device, torch.float64)
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features, real=real)

    def compute(self) -> dict[str, float]:
        """``fid``, ``n_real``, ``n_fake``, ``feature_dim``, and ``warning`` when FID is unreliable
        (:func:`sample_size_warning`); with KID also ``kid_mean``, ``kid_std`` (``None`` without
        subsets), ``kid_subsets`` and ``kid_subset_size``. Every process must call it."""
        with self.fid.sync_context():  # the counts of every process (a no-op in a single process)
            n_real, n_fake = int(self.fid.real_features_num_samples), int(self.fid.fake_features_num_samples)
        if n_real < 2 or n_fake < 2:
            raise InvalidConfigError(f"FID needs at least 2 images a side, got {n_real} and {n_fake}; "
                                     "raise --images-per-prompt or add prompts.")
        out = {"fid": float(self.fid.compute()), "n_real": n_real, "n_fake": n_fake, "feature_dim": self.num_features}
        warning = sample_size_warning(n_real, n_fake, self.num_features)
        if self.kid is not None:
            subsets, size = kid_subset_plan(n_real, n_fake, subsets=self.kid_subsets, subset_size=self.kid_subset_size)
            self.kid.subsets, self.kid.subset_size = subsets, size
            self._pack_kid_features()
            with torch.random.fork_rng(devices=[]):  # KID's random subsets, seeded: reruns report the same number
                torch.random.default_generator.manual_seed(0)
                mean, std = self.kid.compute()
            out.update(kid_mean=float(mean), kid_std=float(std) if subsets > 1 else None, kid_subsets=subsets,
                       kid_subset_size=size)
        if warning:
            out["warning"] = warning
        return out

    def _pack_kid_features(self) -> None:
        """One ``(n, D)`` tensor per KID feature list, also when this process saw no image.

        torchmetrics' KID keeps a list per side, synced one list element per collective call: processes
        holding lists of different lengths (unequal shares) would wait on each other for ever. With one
        tensor each, every process makes the same calls, and the gathered features keep the order of a
        single process (process 0's first)."""
        for name in ("real_features", "fake_features"):
            parts = getattr(self.kid, name)
            empty = torch.empty(0, self.num_features, dtype=torch.float64, device=self.device)
            setattr(self.kid, name, [torch.cat(parts) if parts else empty])

    def reset_fake(self) -> None:
        self.fid.reset()
        if self.kid is not None:
            self.kid.reset()


def features_of(module: nn.Module, paths: Sequence[str | Path], *, batch_size: int = 64) -> Iterable[torch.Tensor]:
    device = module_device(module)
    with torch.no_grad():
        for _, images in iter_image_batches(paths, batch_size):
            yield module(images.to(device)).float()


# ----------------------------------------------------------------------------- folders
def folder_metrics(real: str | Path | Sequence, fake: str | Path | Sequence, *, features: str | nn.Module = "world",
                   engine: str = "torchmetrics", kid: bool = True, batch_size: int = 64,
                   inception_weights: str | Path | None = None, world_weights: str | Path | None = None,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """FID/KID between two image folders (or two lists of files).

    >>> folder_metrics("out/images/base/retain", "coco-ref", features="inception")  # doctest: +SKIP
    {'fid': 14.2, 'kid_mean': 0.003, ...}
    """
    real_files = image_files(real) if isinstance(real, (str, Path)) else list(real)
    fake_files = image_files(fake) if isinstance(fake, (str, Path)) else list(fake)
    if engine == "torch-fidelity":
        return torch_fidelity_metrics(real_files, fake_files, features=features, kid=kid, batch_size=batch_size,
                                      inception_weights=inception_weights, world_weights=world_weights, device=device)
    if engine != "torchmetrics":
        raise InvalidConfigError(f"Unknown FID engine {engine!r}; use torchmetrics or torch-fidelity.")
    module = feature_extractor(features, inception_weights=inception_weights, world_weights=world_weights,
                               device=device)
    stats = FeatureStats(feature_dim(module), kid=kid, device=module_device(module))
    for f in features_of(module, real_files, batch_size=batch_size):
        stats.update(f, real=True)
    for f in features_of(module, fake_files, batch_size=batch_size):
        stats.update(f, real=False)
    return stats.compute()


# ----------------------------------------------------------------------------- torch-fidelity engine
_TORCH_FIDELITY_NAME = "concept-erase-features"


def _register_with_torch_fidelity() -> str:
    """Register (once) a torch-fidelity feature extractor that runs the module passed to
    ``calculate_metrics`` as the extra keyword ``concept_erase_module``."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if _TORCH_FIDELITY_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return _TORCH_FIDELITY_NAME

    class ConceptEraseFeatures(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.module = kwargs["concept_erase_module"]

        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, x):  # torch-fidelity passes uint8 (B, 3, H, W)
            device = module_device(self.module)
            return (self.module(x.to(device).float() / 255).float(),)

    register_feature_extractor(_TORCH_FIDELITY_NAME, ConceptEraseFeatures)
    return _TORCH_FIDELITY_NAME


def torch_fidelity_metrics(real_files: Sequence, fake_files: Sequence, *, features: str | nn.Module = "world",
                           kid: bool = True, batch_size: int = 64, inception_weights=None, world_weights=None,
                           device: str | torch.device = "cpu") -> dict[str, float]:
    """The same FID/KID with torch-fidelity's ``calculate_metrics`` on exactly these files."""
    import torch_fidelity
    from torch_fidelity.datasets import ImagesPathDataset

    n_real, n_fake = len(real_files), len(fake_files)
    if min(n_real, n_fake) < 2:
        raise InvalidConfigError(f"FID needs at least 2 images a side, got {n_real} and {n_fake}.")
    cuda = torch.device(device).type == "cuda"
    subsets, subset_size = kid_subset_plan(n_real, n_fake)
    kwargs: dict = dict(fid=True, kid=kid, cuda=cuda, batch_size=batch_size, cache=False, verbose=False,
                        save_cpu_ram=True, kid_subsets=subsets, kid_subset_size=subset_size)
    if features in ("inception", "inception-2048"):
        kwargs.update(feature_extractor="inception-v3-compat", feature_layer_fid="2048", feature_layer_kid="2048",
                      feature_extractor_weights_path=str(inception_weights_path(inception_weights)))
    else:
        module = feature_extractor(features, world_weights=world_weights, device=device)
        kwargs.update(feature_extractor=_register_with_torch_fidelity(), concept_erase_module=module)
    result = torch_fidelity.calculate_metrics(input1=ImagesPathDataset([str(p) for p in fake_files]),
                                              input2=ImagesPathDataset([str(p) for p in real_files]), **kwargs)
    dim = feature_dim(kwargs["concept_erase_module"]) if "concept_erase_module" in kwargs else 2048
    out = {"fid": float(result["frechet_inception_distance"]), "n_real": n_real, "n_fake": n_fake, "feature_dim": dim}
    if kid:
        out.update(kid_mean=float(result["kernel_inception_distance_mean"]),
                   kid_std=float(result["kernel_inception_distance_std"]) if subsets > 1 else None,
                   kid_subsets=subsets, kid_subset_size=subset_size)
    warning = sample_size_warning(n_real, n_fake, dim)
    if warning:
        out["warning"] = warning
    return out


# ----------------------------------------------------------------------------- images in memory
def fid_of_images(module: nn.Module, real, fake) -> float:
    """FID between two image sets held in memory (``(N, H, W, 3)`` arrays or ``(N, 3, H, W)`` tensors
    in [0, 1]), with the feature module ``module`` — the same statistics as every other FID here."""
    device = module_device(module)
    stats = FeatureStats(feature_dim(module), kid=False, device=device)
    with torch.no_grad():
        stats.update(module(to_tensor(real).to(device)).float(), real=True)
        stats.update(module(to_tensor(fake).to(device)).float(), real=False)
    return stats.compute()["fid"]
