"""Intervals for the benchmark's rates: across seeds, and across the images those seeds produced."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["t_interval", "wilson", "summarize"]

# Student-t 0.975 quantiles for 1..10 degrees of freedom (two-sided 95%); the normal's above.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_interval(values) -> tuple[float, float]:
    """Student-t 95% interval of the mean of ``values`` (one per seed); a single value gives ``(v, v)``.

    >>> [round(v, 3) for v in t_interval([0.1, 0.2, 0.3])]
    [-0.048, 0.448]
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    df = len(x) - 1
    q = _T975[df - 1] if df <= len(_T975) else NormalDist().inv_cdf(0.975)
    half = q * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion of ``n`` images (sensible at 0% and 100% too).

    >>> [round(v, 3) for v in wilson(0, 48)]
    [0.0, 0.074]
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(rates: list[float], counts: list[int]) -> dict:
    """Mean over seeds of per-seed ``rates`` (each over ``counts`` images) and a 95% interval: the wider
    of the t-interval over seeds (training and image variation) and the Wilson interval of all the
    images pooled (finite-sample uncertainty, which seeds that agree would hide), clipped to [0, 1]."""
    mean = float(np.mean(rates))
    lo_t, hi_t = t_interval(rates)
    n = int(sum(counts))
    lo_w, hi_w = wilson(sum(r * c for r, c in zip(rates, counts)), n)
    return {"mean": mean, "lo": max(0.0, min(lo_t, lo_w)), "hi": min(1.0, max(hi_t, hi_w)), "seeds": len(rates),
            "n_images": n, "per_seed": [float(r) for r in rates]}
