"""Equal tuning: every method searches the same number of configurations on the dev concepts, and
one declared rule picks the configuration the test concepts then use.

Each grid is declared here, around its authors' published defaults, widened where the shapes world
needs it (its models are small and train in a few hundred steps): learning rates up to the
range the world's SEMU uses, and step counts around the world's budget. Every grid has exactly
:data:`SEARCH_SIZE` entries; a test checks it.

The strength knob of every trade-off curve is the adapter's scale at load time (the LoRA scale of
``pipe.load_unlearning_adapter(..., scale=s)``; for the codebook edit, its interpolation
weight): one knob for every method, applied to the configuration the search chose.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SEARCH_SIZE", "GRIDS", "CURVE_SCALES", "QUICK_SETTINGS", "RETAIN_TOLERANCE", "SELECTION_RULE", "select",
           "mean_over_concepts"]

SEARCH_SIZE = 4
CURVE_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5)

GRIDS: dict[str, list[dict]] = {
    # SEMU (arXiv 2502.07587): its world defaults are lr 3e-3 / 300 steps; the paper's SD setting is
    # Adam lr 1e-5, far too small for a model this size.
    "semu": [dict(learning_rate=lr, steps=n) for lr in (1e-3, 3e-3) for n in (100, 200)],
    # ESD (arXiv 2303.07345): esd_sd.py's lr 5e-5 / 200 iterations, and larger rates for the world.
    "esd-x": [dict(learning_rate=lr, iterations=n) for lr, n in ((5e-5, 200), (5e-4, 100), (2e-3, 100), (2e-3, 200))],
    "esd-u": [dict(learning_rate=lr, iterations=n) for lr, n in ((5e-5, 200), (5e-4, 100), (2e-3, 100), (2e-3, 200))],
    # UCE (arXiv 2308.14761): λ and the preserve weight around uce_sd_erase.py's 0.5 and 1.
    "uce": [dict(lamb=lamb, preserve_scale=p) for lamb in (0.1, 0.5) for p in (0.1, 1.0)],
    # Gradient difference: the recipe's lr 1e-5 for 3 epochs (12 steps of 8 over 32 images), and
    # 10x the rate / 2.5x the steps; the step count is the early stop, chosen here on dev concepts.
    "gradient-ascent": [dict(learning_rate=lr, steps=n) for lr in (1e-5, 1e-4) for n in (12, 30)],
    # Task vector (Ilharco et al., arXiv 2212.04089): the negation scale is chosen on validation data.
    "task-vector": [dict(scale=s) for s in (0.5, 1.0, 2.0, 4.0)],
    # SIMU ("SIMU: Selective Influence Machine Unlearning"): Sophia lr around its default 5e-4, and its steps.
    "simu": [dict(learning_rate=lr, steps=n) for lr in (5e-4, 2e-3) for n in (75, 150)],
    # CodeUnlearn (arXiv 2410.10866): how many codes are switched off, and how: the paper's deletion
    # ("zero") at 64 codes, and the redirect extension (substitutes fitted to the anchors) at 16 / 32 / 64.
    "codebook": [dict(deactivate="zero", num_codes=64)] + [dict(deactivate="redirect", num_codes=k)
                                                           for k in (16, 32, 64)],
}

# --quick: a CI smoke run. Short training, and only two configurations of each grid are tried.
QUICK_SETTINGS = {
    "semu": dict(steps=30, num_forget_images=8, num_retain_images=8, sample_steps=8),
    "esd-x": dict(iterations=15, sample_steps=8),
    "esd-u": dict(iterations=15, sample_steps=8),
    "uce": {},
    "gradient-ascent": dict(steps=8, num_forget_images=8, num_retain_images=8, sample_steps=8),
    "task-vector": dict(steps=8, num_forget_images=8, sample_steps=8),
    "simu": dict(steps=15, num_forget_images=8, num_retain_images=8, sample_steps=8, attribution_images=4),
    "codebook": {},
}

RETAIN_TOLERANCE = 0.02
SELECTION_RULE = (
    "Among the configurations whose retain accuracy on held-out prompts, averaged over the dev concepts, "
    f"is at most {RETAIN_TOLERANCE:.0%} below the base model's, the one with the lowest mean of forget rate + "
    "paraphrase rate (ties: higher retain accuracy, then less erase time). If none qualifies, the one with "
    "the highest retain accuracy, marked infeasible."
)


def mean_over_concepts(runs: list[dict]) -> dict:
    """One configuration's ``jobs.tune_job`` results on several concepts -> what :func:`select` compares:
    the mean ``forget`` and ``paraphrase`` concept rates, ``retain`` accuracy and erase ``seconds``."""
    return {"forget": float(np.mean([r["forget"]["concept_rate"] for r in runs])),
            "paraphrase": float(np.mean([r["paraphrase"]["concept_rate"] for r in runs])),
            "retain": float(np.mean([r["retain"]["accuracy"] for r in runs])),
            "seconds": float(np.mean([r["seconds"] for r in runs]))}


def select(results: list[dict], base_retain: float) -> tuple[int, bool]:
    """Index of the configuration ``results`` (each: mean ``forget``, ``paraphrase``, ``retain`` over
    the dev concepts, and ``seconds``) that :data:`SELECTION_RULE` picks, and whether it was feasible.

    >>> select([{"forget": .1, "paraphrase": .2, "retain": .99, "seconds": 5},
    ...         {"forget": 0., "paraphrase": 0., "retain": .90, "seconds": 5}], base_retain=1.0)
    (0, True)
    """
    feasible = [i for i, r in enumerate(results) if r["retain"] >= base_retain - RETAIN_TOLERANCE - 1e-9]
    if feasible:
        best = min(feasible, key=lambda i: (results[i]["forget"] + results[i]["paraphrase"], -results[i]["retain"],
                                            results[i]["seconds"]))
        return best, True
    best = max(range(len(results)), key=lambda i: (results[i]["retain"], -results[i]["seconds"]))
    return best, False

