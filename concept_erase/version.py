"""The package version and the versions of the libraries a result depends on (no heavy imports)."""

from __future__ import annotations

import platform
from importlib import metadata as importlib_metadata

__all__ = ["__version__", "library_versions", "TRAINING_LIBRARIES", "EVALUATION_LIBRARIES"]

__version__ = "0.1.0"

# What an adapter file records, and what an evaluation report records.
TRAINING_LIBRARIES = ("concept-erase", "torch", "diffusers", "transformers", "peft", "safetensors")
EVALUATION_LIBRARIES = (*TRAINING_LIBRARIES[:5], "accelerate", "torchmetrics", "torch-fidelity", "nudenet",
                        "onnxruntime", "safetensors", "numpy")


def library_versions(packages=TRAINING_LIBRARIES, *, python: bool = False) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out), and Python's if asked.

    >>> sorted(library_versions(("concept-erase",)))
    ['concept-erase']
    """
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    if python:
        out["python"] = platform.python_version()
    return out
