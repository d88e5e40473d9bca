"""Which UNet layers an erasure adapts: glob patterns over module names, linear and conv only."""

from __future__ import annotations

import fnmatch

from torch import nn

from ..errors import InvalidConfigError

__all__ = ["find_targets"]


def find_targets(unet: nn.Module, patterns: tuple[str, ...] | list[str]) -> dict[str, nn.Module]:
    """Modules of ``unet`` whose name matches any pattern (``"*attn2.to_k"``), in module order.

    >>> list(find_targets(unet, ["*attn2.to_k"]))[:1]  # doctest: +SKIP
    ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k']
    """
    found = {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
    if not found:
        examples = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:4]
        raise InvalidConfigError(
            f"No nn.Linear or nn.Conv2d layer of the UNet matches `target_modules` {list(patterns)}. "
            f"Module names look like {examples}; patterns are shell globs such as '*attn2.to_k'."
        )
    return found
