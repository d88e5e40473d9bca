"""concept-erase: erase concepts from text-to-image diffusion models with SEMU adapters.

>>> import concept_erase                      # adds the methods below to diffusers pipelines
>>> pipe = concept_erase.world.load_pipeline()
>>> pipe.load_unlearning_adapter("no-red")     # doctest: +SKIP

Importing the package attaches ``load_unlearning_adapter``, ``set_unlearning_scale``,
``fuse_unlearning_adapter``, ``unfuse_unlearning_adapter`` and ``unload_unlearning_adapter`` to
``diffusers.DiffusionPipeline``; nothing else happens at import time.
"""

__version__ = "0.1.0"

from . import errors, world  # noqa: E402
from .adapter import UnlearningAdapter, unet_fingerprint  # noqa: E402
from .concepts import Concept, list_presets, load_preset  # noqa: E402
from .errors import *  # noqa: E402,F401,F403
from .loading import UnlearningMixin, install_pipeline_methods, known_adapters, resolve_adapter  # noqa: E402
from .semu import SemuConfig  # noqa: E402
from .semu import erase  # noqa: E402

install_pipeline_methods()

__all__ = [
    "erase", "SemuConfig", "Concept", "load_preset", "list_presets", "UnlearningAdapter", "UnlearningMixin",
    "resolve_adapter", "known_adapters", "unet_fingerprint", "world", "errors", "__version__",
    *errors.__all__,
]
