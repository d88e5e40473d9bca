"""Pictures people would rather look at than read: labelled image grids."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .images import to_pil

__all__ = ["image_grid"]


def image_grid(rows: Sequence[Sequence], *, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
               cell: int = 128, label_width: int = 260) -> Image.Image:
    """Lay images out in a grid (``rows[i][j]``), with labels on the left and on top.

    >>> grid = image_grid([[a, b]], row_labels=["a red circle"], col_labels=["base", "no-red"])  # doctest: +SKIP
    """
    font = ImageFont.load_default()
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    left = label_width if row_labels else 0
    top = 24 if col_labels else 0
    canvas = Image.new("RGB", (left + n_cols * (cell + 4) + 4, top + n_rows * (cell + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels):
        draw.text((left + 4 + j * (cell + 4) + 4, 6), str(label), fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + 4 + i * (cell + 4)
        if i < len(row_labels):
            text = str(row_labels[i])
            lines = [text[k : k + 40] for k in range(0, len(text), 40)] or [""]
            for k, line in enumerate(lines[:6]):
                draw.text((6, y + cell // 2 - 7 * len(lines) + 14 * k), line, fill="black", font=font)
        for j, img in enumerate(row):
            canvas.paste(to_pil(img).resize((cell, cell), Image.NEAREST), (left + 4 + j * (cell + 4), y))
    return canvas
