"""Images in and out: conversions between PIL, arrays and tensors, and image folders on disk.

Conventions: a *batch* is a ``(B, 3, H, W)`` float tensor in [0, 1] (what classifiers and FID
feature extractors take); diffusers' ``output_type="np"`` gives ``(B, H, W, 3)`` floats in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import InvalidConfigError

__all__ = ["to_pil", "to_tensor", "to_uint8_hwc", "load_images", "iter_image_batches", "image_files",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image, an ``(H, W, 3)`` uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def to_tensor(images) -> torch.Tensor:
    """PIL images, a list of arrays or an ``(N, H, W, 3)`` uint8 array -> ``(N, 3, H, W)`` floats in [0, 1].

    A float tensor ``(N, 3, H, W)`` is returned unchanged (assumed in [0, 1])."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            return images.permute(0, 3, 1, 2).float() / 255 if images.shape[-1] == 3 else images.float() / 255
        return images
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if arr.dtype != np.uint8:  # float arrays in [0, 1], as diffusers' output_type="np" gives
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` floats in [0, 1] -> ``(B, H, W, 3)`` uint8 RGB."""
    return (images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def load_images(paths: Sequence[str | Path]) -> torch.Tensor:
    """PNG/JPEG files -> ``(B, 3, H, W)`` floats in [0, 1] (all must have one size)."""
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, empty, not an image
            raise InvalidConfigError(f"Image {str(p)!r} cannot be read ({type(e).__name__}: {e}); it is not an image "
                                     "or is truncated. Remove or replace it.") from None
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise InvalidConfigError(f"Images of different sizes {sorted(sizes)} in one batch (e.g. {str(paths[0])!r}); "
                                 "resize the reference folder to the generated size first.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def iter_image_batches(paths: Sequence[str | Path], batch_size: int = 64) -> Iterable[tuple[list, torch.Tensor]]:
    """Yield ``(paths, images)`` batches, reading only one batch into memory at a time."""
    for i in range(0, len(paths), batch_size):
        chunk = list(paths[i : i + batch_size])
        yield chunk, load_images(chunk)


def image_files(folder: str | Path, *, minimum: int = 2) -> list[Path]:
    """The images under ``folder`` (recursively, sorted); at least ``minimum`` of them (FID needs 2)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidConfigError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*")  # ".name.xxxx.png": an unfinished atomic write, not an image
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(files) < minimum:
        raise InvalidConfigError(f"Image folder {str(folder)!r} holds {len(files)} images; FID needs at least 2.")
    return files
