"""concept-erase: erase concepts from text-to-image diffusion models with SEMU adapters.

>>> import concept_erase                      # adds the methods below to diffusers pipelines
>>> pipe = concept_erase.world.load_pipeline()
>>> pipe.load_unlearning_adapter("no-red")     # doctest: +SKIP

Importing the package attaches ``load_unlearning_adapter``, ``set_unlearning_scale``,
``fuse_unlearning_adapter``, ``unfuse_unlearning_adapter`` and ``unload_unlearning_adapter`` to
``diffusers.DiffusionPipeline`` — at once when diffusers is already imported, otherwise the
moment it is. Nothing heavy is imported until it is used: the names below load on first access,
so ``concept-erase --help`` starts without torch.
"""

from __future__ import annotations

import importlib
import sys

from . import errors
from .errors import *  # noqa: F401,F403
from .version import __version__

# name -> module that defines it (loaded on first access)
_LAZY = {
    "erase": ".methods.semu",
    "SemuConfig": ".methods.semu",
    "Concept": ".concepts",
    "load_preset": ".concepts",
    "list_presets": ".concepts",
    "UnlearningAdapter": ".adapter",
    "unet_fingerprint": ".adapter",
    "UnlearningMixin": ".loading",
    "install_pipeline_methods": ".loading",
    "known_adapters": ".loading",
    "resolve_adapter": ".loading",
    "load_base": ".loading",
}
_SUBMODULES = ("world", "methods", "evaluation", "demo", "diffusion", "loading", "adapter", "concepts", "config")

__all__ = [
    "erase", "SemuConfig", "Concept", "load_preset", "list_presets", "UnlearningAdapter", "UnlearningMixin",
    "resolve_adapter", "known_adapters", "unet_fingerprint", "load_base", "world", "errors", "__version__",
    *errors.__all__,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


# ---------------------------------------------------------------- the pipeline methods
_PIPELINE_MODULE = "diffusers.pipelines.pipeline_utils"  # where DiffusionPipeline is defined


def _install(pipeline_class=None) -> None:
    from .loading import install_pipeline_methods

    install_pipeline_methods(pipeline_class)


class _AttachWhenImported:
    """A meta-path finder that runs :func:`_install` right after ``diffusers.pipelines.pipeline_utils``
    executes, so ``import concept_erase`` works before or after ``import diffusers``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _PIPELINE_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _remove_finder()
        _install(getattr(module, "DiffusionPipeline", None))

    def __getattr__(self, name):  # everything else (get_source, is_package, ...) from the real loader
        return getattr(self.loader, name)


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AttachWhenImported)]


if _PIPELINE_MODULE in sys.modules:
    _install()
elif not any(isinstance(f, _AttachWhenImported) for f in sys.meta_path):
    sys.meta_path.insert(0, _AttachWhenImported())
