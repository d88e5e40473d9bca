"""Deterministic procedural renderer of the shapes world.

``render_batch(n, seed=...)`` draws ``n`` images of one coloured shape on a background, with the
size, position and rotation jittered, and returns them with their ground-truth labels. The same
seed always gives the same pixels (numpy's PCG64 generator, no global state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidPromptError
from .vocab import ALLOWED_BACKGROUNDS, BACKGROUND_RGB, BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES

__all__ = ["Scene", "render", "render_batch", "random_scene", "IMAGE_SIZE"]

IMAGE_SIZE = 64
_SUPERSAMPLE = 3  # anti-aliasing: coverage is averaged over 3x3 sub-pixels


@dataclass(frozen=True)
class Scene:
    """One image's ground truth: what is drawn, where, and how big."""

    colour: str
    shape: str
    background: str
    cx: float = 0.0  # centre, in [-1, 1] image coordinates (y up)
    cy: float = 0.0
    radius: float = 0.5  # circumradius, fraction of the half-width
    angle: float = 0.0  # degrees, counter-clockwise
    phase: float = 0.0  # stripe phase, in stripe periods
    tint: tuple[int, int, int] = (0, 0, 0)  # small colour jitter added to the shape colour

    def __post_init__(self) -> None:
        for kind, value, known in (
            ("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES), ("background", self.background, BACKGROUNDS)
        ):
            if value not in known:
                raise InvalidPromptError(f"Unknown {kind} {value!r}; the shapes world knows {', '.join(known)}.")
        if self.background not in ALLOWED_BACKGROUNDS[self.colour]:
            raise InvalidPromptError(
                f"A {self.colour} shape cannot be told from a {self.background} background; "
                f"use one of {', '.join(ALLOWED_BACKGROUNDS[self.colour])}."
            )

    @property
    def labels(self) -> tuple[int, int, int]:
        return COLOURS.index(self.colour), SHAPES.index(self.shape), BACKGROUNDS.index(self.background)


def _polygon_mask(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x2 - x1) * (v - y1) / (y2 - y1) + x1
        inside ^= crosses & (u < x_at)
    return inside


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_ARM = 0.34
_POLYGONS = {
    "square": np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]]),
    "triangle": np.array([[0.0, 1.0], [-0.92, -0.62], [0.92, -0.62]]),
    "star": _star(),
    "cross": np.array([
        [-_ARM, 0.9], [_ARM, 0.9], [_ARM, _ARM], [0.9, _ARM], [0.9, -_ARM], [_ARM, -_ARM],
        [_ARM, -0.9], [-_ARM, -0.9], [-_ARM, -_ARM], [-0.9, -_ARM], [-0.9, _ARM], [-_ARM, _ARM],
    ]),
}


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's own unit frame (circumradius about 1)."""
    if shape == "circle":
        return u * u + v * v <= 0.85
    if shape == "heart":  # (x² + y² − 1)³ − x² y³ ≤ 0, scaled to fit the unit disc
        x, y = u * 1.25, v * 1.25 + 0.2
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    return _polygon_mask(u, v, _POLYGONS[shape])


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(coords, -coords)  # y up
    return x, y


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one scene as a ``(size, size, 3)`` uint8 array."""
    x, y = _grid(size)
    n = size * _SUPERSAMPLE
    # background
    pixels = np.array(BACKGROUND_RGB[scene.background], dtype=np.float32)
    if len(pixels) == 1:
        bg = np.broadcast_to(pixels[0], (n, n, 3)).copy()
    else:
        period = 2 * 10 * _SUPERSAMPLE  # two stripes of 10 pixels, diagonal
        rows, cols = np.indices((n, n))
        band = (((rows + cols) + scene.phase * period) // (period // 2)).astype(int) % 2
        bg = pixels[band]
    # shape, in its own rotated and scaled frame
    theta = math.radians(scene.angle)
    dx, dy = (x - scene.cx) / scene.radius, (y - scene.cy) / scene.radius
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = -math.sin(theta) * dx + math.cos(theta) * dy
    mask = _shape_mask(scene.shape, u, v)[..., None]
    colour = np.clip(np.array(COLOUR_RGB[scene.colour], dtype=np.float32) + np.array(scene.tint), 0, 255)
    image = np.where(mask, colour, bg)
    image = image.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


def random_scene(
    rng: np.random.Generator,
    *,
    colour: str | None = None,
    shape: str | None = None,
    background: str | None = None,
) -> Scene:
    """Sample a scene; any attribute given is fixed, the others are drawn uniformly."""
    colour = colour or COLOURS[rng.integers(len(COLOURS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    if background is None:
        allowed = ALLOWED_BACKGROUNDS.get(colour, BACKGROUNDS)
        background = allowed[rng.integers(len(allowed))]
    radius = float(rng.uniform(0.42, 0.66))
    margin = 0.95 - radius
    return Scene(
        colour=colour,
        shape=shape,
        background=background,
        cx=float(rng.uniform(-margin, margin)),
        cy=float(rng.uniform(-margin, margin)),
        radius=radius,
        angle=float(rng.uniform(-12, 12)),
        phase=float(rng.uniform(0, 1)),
        tint=tuple(int(t) for t in rng.integers(-10, 11, size=3)),
    )


def render_batch(n: int, *, seed: int, size: int = IMAGE_SIZE, **fixed) -> tuple[np.ndarray, list[Scene]]:
    """Render ``n`` random scenes: returns ``(images (n, size, size, 3) uint8, scenes)``.

    >>> images, scenes = render_batch(4, seed=0, colour="red")
    >>> images.shape, scenes[0].colour
    ((4, 64, 64, 3), 'red')
    """
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, **fixed) for _ in range(n)]
    return np.stack([render(s, size) for s in scenes]), scenes
