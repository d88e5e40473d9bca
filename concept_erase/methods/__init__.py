"""Every erasure method behind one call, each producing the same kind of adapter file.

``METHODS`` is the single list of methods: the command line's ``--method`` choices, ``bench`` and
the docs read it. An entry pairs a config class (a :class:`~concept_erase.config.Config` dataclass)
with ``erase(pipe, concept, config, *, progress) -> UnlearningAdapter``. A new method is one file
(its config and erase function) plus one line below.

- ``semu``: U_r R V_rᵀ in the forget gradient's subspace, only R trained (:class:`SemuConfig`);
- ``esd-x`` / ``esd-u``: ESD negative guidance on every attn2 weight / every other weight (:class:`EsdConfig`);
- ``uce``: closed-form edit of attn2 to_k/to_v, no training (:class:`UceConfig`);
- ``gradient-ascent``: every weight, ascent on forget images, descent on retain images
  (:class:`GradientAscentConfig`);
- ``task-vector``: every weight, θ − s·(θ_ft − θ) after a fine-tune on forget images
  (:class:`TaskVectorConfig`);
- ``simu``: SIMU's critical neurons (attribution mask on feed-forward and attention rows), only those
  rows fine-tuned with Sophia on GradDiff or relabelling (:class:`SimuConfig`);
- ``codebook``: CodeUnlearn's codebook bottleneck on the text embeddings, codes of the concept
  switched off (by default redirected to substitutes fitted in closed form to the anchors), no
  training per concept (:class:`CodebookConfig`). Its result is a
  :class:`~concept_erase.codebook.CodebookEdit` file, not LoRA factors; ``pipe.load_unlearning_adapter``
  loads both.

Methods that change dense weights are exported as LoRA factors by truncated SVD (``dense.py``);
their metadata reports the compression error. Every adapter's metadata is built by
:func:`~concept_erase.methods.common.adapter_metadata`.

>>> from concept_erase.methods import erase_with
>>> adapter = erase_with("esd-x", pipe, "no-red", iterations=50)  # doctest: +SKIP
>>> pipe.load_unlearning_adapter(adapter)                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..adapter import UnlearningAdapter
from ..concepts import Concept
from ..errors import InvalidConfigError
from .codebook import CodebookConfig, erase_codebook
from .esd import EsdConfig, erase_esd
from .gradient_ascent import GradientAscentConfig, erase_gradient_ascent
from .semu import SemuConfig, erase as erase_semu
from .simu import SimuConfig, erase as erase_simu
from .task_vector import TaskVectorConfig, erase_task_vector
from .uce import UceConfig, erase_uce

__all__ = [
    "METHODS", "Method", "erase_with", "method_config", "get_method", "EsdConfig", "UceConfig",
    "GradientAscentConfig", "TaskVectorConfig", "SemuConfig", "SimuConfig", "CodebookConfig",
]


@dataclass(frozen=True)
class Method:
    """A named erasure method: its config class, its erase function, and config values its name implies."""

    name: str
    config_class: type
    erase: Callable[..., UnlearningAdapter]
    defaults: tuple[tuple[str, object], ...] = ()  # config values the name implies (esd-u: train_method)
    summary: str = ""

    def config(self, config=None, **overrides):
        """The validated config: ``config`` (or the defaults) with ``overrides`` applied."""
        self.config_class.check_names(overrides, what=f" (method {self.name!r})")
        if config is None:
            return self.config_class(**{**dict(self.defaults), **overrides})
        if not isinstance(config, self.config_class):
            raise InvalidConfigError(
                f"Method {self.name!r} takes a {self.config_class.__name__}, but `config` is a {type(config).__name__}."
            )
        return config.with_overrides(**overrides)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("semu", SemuConfig, erase_semu, summary="SVD gradient subspace of the target layers, train R only"),
        Method("esd-x", EsdConfig, erase_esd, (("train_method", "esd-x"),), "ESD on cross-attention"),
        Method("esd-u", EsdConfig, erase_esd, (("train_method", "esd-u"),), "ESD on everything but cross-attention"),
        Method("uce", UceConfig, erase_uce, summary="closed-form edit of attn2 K/V"),
        Method("gradient-ascent", GradientAscentConfig, erase_gradient_ascent,
               summary="ascent on forget images, descent on retain images"),
        Method("task-vector", TaskVectorConfig, erase_task_vector, summary="negated fine-tune on forget images"),
        Method("simu", SimuConfig, erase_simu, summary="critical-neuron mask, masked Sophia fine-tuning"),
        Method("codebook", CodebookConfig, erase_codebook,
               summary="switch off codebook codes of the text embeddings, redirect them to the anchors (zero-shot, "
                       "not a LoRA)"),
    )
}


def get_method(name: str) -> Method:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    if name not in METHODS:
        raise InvalidConfigError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def method_config(method: str, config=None, **overrides):
    """The validated config of ``method``: its defaults (or ``config``) with ``overrides`` applied.

    >>> method_config("esd-u", iterations=10).train_method
    'esd-u'
    """
    return get_method(method).config(config, **overrides)


def erase_with(method: str, pipe, concept: Concept | str | dict, *, progress: bool = True, config=None,
               **overrides) -> UnlearningAdapter:
    """Erase ``concept`` from ``pipe`` with ``method`` and return the adapter; the pipeline is unchanged.

    ``overrides`` are fields of the method's config class (``iterations=50`` for ESD, ``lamb=0.1``
    for UCE, ``steps=100`` for SEMU); ``config`` is a whole config object to start from.

    >>> adapter = erase_with("uce", pipe, "no-red", lamb=0.1)  # doctest: +SKIP
    >>> adapter.metadata["method"], adapter.metadata["compression_error"] < 1e-3  # doctest: +SKIP
    ('uce', True)
    """
    m = get_method(method)
    return m.erase(pipe, concept, m.config(config, **overrides), progress=progress)
