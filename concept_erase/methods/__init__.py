"""Every erasure method behind one call, each producing the same kind of adapter file.

- ``semu``: U_r R V_rᵀ on attn2 to_k/to_v, only R trained (:class:`~concept_erase.SemuConfig`);
- ``esd-x`` / ``esd-u``: ESD negative guidance on every attn2 weight / every other weight (:class:`EsdConfig`);
- ``uce``: closed-form edit of attn2 to_k/to_v, no training (:class:`UceConfig`);
- ``gradient-ascent``: every weight, ascent on forget images, descent on retain images
  (:class:`GradientAscentConfig`);
- ``task-vector``: every weight, θ − s·(θ_ft − θ) after a fine-tune on forget images
  (:class:`TaskVectorConfig`).

Methods that change dense weights are exported as LoRA factors by truncated SVD (``dense.py``);
their metadata reports the compression error. Every adapter's metadata holds ``method``,
``concept``, ``config``, ``trainable_parameters``, ``unet_parameters``, ``trainable_fraction``,
``base_fingerprint``, ``seconds`` and ``compression_error``.

>>> from concept_erase.methods import erase_with
>>> adapter = erase_with("esd-x", pipe, "no-red", iterations=50)  # doctest: +SKIP
>>> pipe.load_unlearning_adapter(adapter)                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

from ..adapter import UnlearningAdapter
from ..concepts import Concept
from ..errors import InvalidConfigError
from ..semu import SemuConfig
from ..semu import erase as _semu_erase
from .esd import EsdConfig, erase_esd
from .gradient_ascent import GradientAscentConfig, erase_gradient_ascent
from .task_vector import TaskVectorConfig, erase_task_vector
from .uce import UceConfig, erase_uce

__all__ = [
    "METHODS", "Method", "erase_with", "method_config", "EsdConfig", "UceConfig", "GradientAscentConfig",
    "TaskVectorConfig", "SemuConfig",
]


def _erase_semu(pipe, concept, config: SemuConfig, *, progress: bool = True) -> UnlearningAdapter:
    adapter = _semu_erase(pipe, concept, config, progress=progress)
    adapter.metadata.setdefault("compression_error", 0.0)  # natively low-rank: the file is exact
    return adapter


@dataclass(frozen=True)
class Method:
    name: str
    config_class: type
    erase: Callable[..., UnlearningAdapter]
    defaults: tuple[tuple[str, object], ...] = ()  # config values the name implies (esd-u: train_method)
    summary: str = ""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("semu", SemuConfig, _erase_semu, summary="SVD gradient subspace of attn2 K/V, train R only"),
        Method("esd-x", EsdConfig, erase_esd, (("train_method", "esd-x"),), "ESD on cross-attention"),
        Method("esd-u", EsdConfig, erase_esd, (("train_method", "esd-u"),), "ESD on everything but cross-attention"),
        Method("uce", UceConfig, erase_uce, summary="closed-form edit of attn2 K/V"),
        Method("gradient-ascent", GradientAscentConfig, erase_gradient_ascent,
               summary="ascent on forget images, descent on retain images"),
        Method("task-vector", TaskVectorConfig, erase_task_vector, summary="negated fine-tune on forget images"),
    )
}


def _method(name: str) -> Method:
    if name not in METHODS:
        raise InvalidConfigError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def method_config(method: str, config=None, **overrides):
    """The validated config of ``method``: its defaults (or ``config``) with ``overrides`` applied.

    >>> method_config("esd-u", iterations=10).train_method
    'esd-u'
    """
    m = _method(method)
    names = [f.name for f in fields(m.config_class)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InvalidConfigError(
            f"{m.config_class.__name__} has no setting {', '.join(map(repr, unknown))} (method {method!r}); "
            f"valid settings: {', '.join(names)}."
        )
    if config is None:
        return m.config_class(**{**dict(m.defaults), **overrides})
    if not isinstance(config, m.config_class):
        raise InvalidConfigError(
            f"Method {method!r} takes a {m.config_class.__name__}, but `config` is a {type(config).__name__}."
        )
    return replace(config, **overrides)


def erase_with(method: str, pipe, concept: Concept | str | dict, *, progress: bool = True, config=None,
               **overrides) -> UnlearningAdapter:
    """Erase ``concept`` from ``pipe`` with ``method`` and return the adapter; the pipeline is unchanged.

    ``overrides`` are fields of the method's config class (``iterations=50`` for ESD, ``lamb=0.1``
    for UCE, ``steps=100`` for SEMU); ``config`` is a whole config object to start from.

    >>> adapter = erase_with("uce", pipe, "no-red", lamb=0.1)  # doctest: +SKIP
    >>> adapter.metadata["method"], adapter.metadata["compression_error"] < 1e-3  # doctest: +SKIP
    ('uce', True)
    """
    m = _method(method)
    return m.erase(pipe, concept, method_config(method, config, **overrides), progress=progress)
