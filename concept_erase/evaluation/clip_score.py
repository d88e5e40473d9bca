"""CLIP score: how well each image matches its prompt, through torchmetrics' ``CLIPScore``.

The usual utility metric of concept-erasure papers (Hessel et al., "CLIPScore", arXiv:2104.08718;
the tables report it on COCO prompts with ``openai/clip-vit-large-patch14``): 100 x the cosine
between the CLIP image embedding and the CLIP text embedding of the prompt, averaged over images.
torchmetrics clips the *average* at 0 (not each image). On retain prompts it should stay where the
base model is; on forget prompts a lower score means the images no longer show what was erased.

The checkpoint is always local (``--clip-model DIR``); nothing is downloaded. Without one, the
evaluation reports CLIP score as not computed.

>>> model, processor = load_clip("clip-vit-large-patch14")  # doctest: +SKIP
>>> stats = ClipScoreStats(model, processor, splits=["retain"])  # doctest: +SKIP
>>> stats.update(images, ["a blue circle"] * len(images), ["retain"] * len(images))  # doctest: +SKIP
>>> stats.compute()  # doctest: +SKIP
{'retain': {'clip_score': 27.1, 'n': 16}}
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidConfigError, WeightsNotFoundError

__all__ = ["CLIP_DOWNLOAD", "check_clip_checkpoint", "load_clip", "ClipScoreStats"]

CLIP_DOWNLOAD = "hf download openai/clip-vit-large-patch14 --local-dir clip-vit-large-patch14"
_EXPECTED = ("config.json (a CLIP model config), model.safetensors (the weights; concept-erase loads no pickled "
             "weights), the tokenizer (tokenizer.json, or vocab.json + merges.txt, with tokenizer_config.json) and "
             "the image processor (preprocessor_config.json or processor_config.json)")
_HINT = (f"A CLIP checkpoint directory holds {_EXPECTED}. Get one on a machine with network access with "
         f"`{CLIP_DOWNLOAD}` (the model of published CLIP scores), copy the directory here and pass it with "
         "--clip-model DIR.")


def check_clip_checkpoint(path: str | Path | None) -> Path:
    """``path`` as a CLIP checkpoint directory, checked before anything is loaded; raises
    :class:`WeightsNotFoundError` naming what is missing, the files expected and how to get them."""
    if not path:
        raise WeightsNotFoundError(f"No CLIP checkpoint given. {_HINT}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise WeightsNotFoundError(f"No CLIP checkpoint directory at {str(path)!r}. {_HINT}")
    names = {p.name for p in directory.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        missing.append("model.safetensors" + (f" (found only pickled weights {', '.join(pickled)}; convert them "
                                              "to safetensors or download the safetensors file)" if pickled else ""))
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not names & {"preprocessor_config.json", "processor_config.json"}:
        missing.append("preprocessor_config.json")
    if missing:
        raise WeightsNotFoundError(f"{str(path)!r} is not a complete CLIP checkpoint: missing {'; '.join(missing)}. "
                                   f"{_HINT}")
    try:
        model_type = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise WeightsNotFoundError(f"{str(directory / 'config.json')!r} is not a readable JSON config ({e}). "
                                   f"{_HINT}") from None
    if model_type != "clip":
        raise WeightsNotFoundError(f"{str(path)!r} holds a {model_type!r} model, not CLIP (config.json's model_type "
                                   f"must be 'clip'). {_HINT}")
    return directory


def load_clip(path: str | Path | None, device: str | torch.device = "cpu"):
    """``(CLIPModel, CLIPProcessor)`` from a local checkpoint directory, in eval mode on ``device``."""
    from transformers import CLIPModel, CLIPProcessor

    directory = check_clip_checkpoint(path)
    try:
        model = CLIPModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsNotFoundError(f"Could not load a CLIP checkpoint from {str(path)!r}: {e}. {_HINT}") from None
    return model.to(device).eval().requires_grad_(False), processor


class _Embeddings(nn.Module):
    """A CLIPModel whose ``get_image_features`` / ``get_text_features`` return the projected embedding
    tensors. torchmetrics 1.9's ``CLIPScore`` takes their result as a tensor; transformers 5 returns a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` is that tensor (fixed in torchmetrics after 1.9)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # CLIPScore reads text_config.max_position_embeddings to truncate long prompts

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:  # (B, projection_dim)
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:  # (B, projection_dim)
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class ClipScoreStats:
    """CLIP score of images against their prompts, one torchmetrics ``CLIPScore`` per prompt split.

    Each keeps a sum and a count (reduced by summing across processes), on ``device``: under
    several processes that must be the process's own device (``Dist.device``), which the process
    group can gather from. ``compute`` must then be called by every process.
    """

    def __init__(self, model: nn.Module, processor, splits: Sequence[str], *, device: str | torch.device = "cpu"):
        from torchmetrics.multimodal import CLIPScore

        if not splits:
            raise InvalidConfigError("CLIP score needs at least one prompt split to report on, got none.")
        wrapped = _Embeddings(model)
        self.device = torch.device(device)
        self.metrics = {s: CLIPScore(model_name_or_path=lambda: (wrapped, processor)).to(self.device)
                        for s in dict.fromkeys(splits)}

    def update(self, images: torch.Tensor, prompts: Sequence[str], splits: Sequence[str]) -> None:
        """``images``: ``(B, 3, H, W)`` floats in [0, 1]; ``prompts[i]`` and ``splits[i]`` belong to image ``i``."""
        if not len(images) == len(prompts) == len(splits):
            raise InvalidConfigError(f"CLIP score got {len(images)} images, {len(prompts)} prompts and {len(splits)} "
                                     "splits; it needs one prompt and one split per image.")
        unknown = set(splits) - set(self.metrics)
        if unknown:
            raise InvalidConfigError(f"CLIP score got images of split(s) {sorted(unknown)}, not among "
                                     f"{list(self.metrics)}.")
        # the CLIP processor rescales by 1/255: it expects 0..255 pixels, as read from an image file
        pixels = images.detach().clamp(0, 1).mul(255).round().to(self.device, torch.uint8)
        for split, metric in self.metrics.items():
            sel = [i for i, s in enumerate(splits) if s == split]
            if sel:
                with torch.no_grad():
                    metric.update(pixels[sel], [prompts[i] for i in sel])

    def compute(self) -> dict[str, dict]:
        """``{split: {"clip_score": mean over images (clipped at 0), "n": images}}`` over every process."""
        out = {}
        for split, metric in self.metrics.items():
            with metric.sync_context():  # the count of every process (a no-op in a single process)
                n = int(metric.n_samples)
            with warnings.catch_warnings():  # a process may have had no image of this split: its share is 0
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                out[split] = {"clip_score": float(metric.compute()) if n else None, "n": n}
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
