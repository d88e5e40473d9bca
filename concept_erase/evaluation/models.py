"""The models an evaluation compares: the base pipeline and the same pipeline with each adapter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter import UnlearningAdapter
from ..loading import resolve_adapter
from ..errors import InvalidConfigError
from .._io import safe_filename
from .generate import file_sha256
from .prompts import target_name

__all__ = ["EvalModel", "resolve_models", "use_model"]


@dataclass
class EvalModel:
    """``adapter=None`` is the base model."""

    name: str
    adapter: Path | None = None
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def target(self) -> str | None:
        concept = self.metadata.get("concept") or {}
        return target_name(concept.get("target")) if isinstance(concept, dict) else None

    def describe(self) -> dict:
        concept = self.metadata.get("concept") or {}
        return {"adapter": str(self.adapter) if self.adapter else None, "sha256": self.sha256,
                "method": self.metadata.get("method"), "concept": concept.get("name") if isinstance(concept, dict) else None,
                "target": self.target}


def resolve_models(adapters: list[str]) -> list[EvalModel]:
    """``[base, adapter 1, ...]``; adapter names come from their file names, made unique."""
    models = [EvalModel("base")]
    for spec in adapters:
        path = resolve_adapter(spec)
        name = safe_filename(path.stem, "model")
        taken = {m.name for m in models}
        if name in taken:
            i = 2
            while f"{name}-{i}" in taken:
                i += 1
            name = f"{name}-{i}"
        metadata = UnlearningAdapter.load(path).metadata  # validates the file before anything is generated
        models.append(EvalModel(name, path, file_sha256(path), metadata))
    return models


@contextlib.contextmanager
def use_model(pipe, model: EvalModel, *, scale: float = 1.0, fuse: bool = True):
    """Within the block ``pipe`` is ``model``: the adapter loaded (and fused, for speed), then removed,
    restoring the base weights exactly."""
    loaded = getattr(pipe, "unlearning_adapters", {})
    if loaded:
        raise InvalidConfigError(
            f"The pipeline already has unlearning adapters loaded ({', '.join(loaded)}); evaluate needs the plain "
            "base model. Call `pipe.unload_unlearning_adapter()` first."
        )
    if model.adapter is None:
        yield pipe
        return
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "No LoRA keys associated to CLIPTextModel": expected, UNet-only adapters
    try:
        name = pipe.load_unlearning_adapter(model.adapter, adapter_name=model.name, scale=scale)
    finally:
        diffusers_logging.set_verbosity(level)
    try:
        if fuse:
            pipe.fuse_unlearning_adapter()
        yield pipe
    finally:
        pipe.unload_unlearning_adapter(name)
