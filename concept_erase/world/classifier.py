"""The shipped concept classifier of the shapes world: ``load_classifier()`` and ``classify(...)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import WeightsNotFoundError
from ..images import to_tensor
from .models import WorldClassifier
from .pipeline import WEIGHTS_DIR

__all__ = ["load_classifier", "to_tensor", "WorldClassifier"]


def load_classifier(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> WorldClassifier:
    """Load the world's concept classifier (eval mode, fp32).

    >>> clf = load_classifier()
    >>> images, scenes = render_batch(8, seed=0)  # doctest: +SKIP
    >>> clf.predict(to_tensor(images))["colour"]  # doctest: +SKIP
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_DIR / "classifier.safetensors"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"World classifier weights not found at {str(path)!r}. Reinstall concept-erase, or retrain with "
            "`concept-erase world train --out DIR` and pass the new file."
        )
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("concept_erase", "{}"))
    model = WorldClassifier(feature_dim=meta.get("feature_dim", 128))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)


def _predict(model: WorldClassifier, images, batch_size: int = 256) -> dict[str, np.ndarray]:
    x = to_tensor(images)
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {k: [] for k in model.heads}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(device))
            for k in model.heads:
                out[k].append(logits[k].softmax(-1).cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0, len(model.heads[k]))) for k, v in out.items()}


def _names(model: WorldClassifier, images, batch_size: int = 256) -> list[dict[str, str]]:
    probs = _predict(model, images, batch_size)
    n = len(next(iter(probs.values())))
    return [{k: model.heads[k][int(probs[k][i].argmax())] for k in model.heads} for i in range(n)]


# Convenience methods on the model itself: probabilities per head, and names of the argmax.
WorldClassifier.predict_proba = _predict
WorldClassifier.predict = _names


def accuracy(model: WorldClassifier, images, scenes: Sequence) -> dict[str, float]:
    """Share of images whose colour, shape and background the classifier reads correctly."""
    preds = model.predict(images)
    result = {k: float(np.mean([p[k] == getattr(s, k) for p, s in zip(preds, scenes)])) for k in model.heads}
    result["joint"] = float(np.mean([all(p[k] == getattr(s, k) for k in model.heads) for p, s in zip(preds, scenes)]))
    return result
