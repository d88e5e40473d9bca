"""``concept-erase bench``: every erasure method on the shapes world under one declared protocol.

1. **Tune** (``concept-erase bench --tune``): each method searches the same number of configurations
   (:data:`~.search.GRIDS`) on the dev concepts; one rule (:data:`~.search.SELECTION_RULE`) picks
   one, frozen in ``tuning.json`` (the repository commits ``benchmarks/results/tuning.json``).
2. **Test** (``concept-erase bench``): the chosen configurations on the test concepts, each run in
   a fresh process, on held-out prompts (:mod:`.protocol`), with several seeds (training and
   image seeds) and 95% intervals, the base model's images at the same seeds as reference:
   concept rate on forget and paraphrase prompts, retain accuracy, specificity, FID/KID, erase time
   (and its ratio to SEMU) and peak memory; a trade-off curve per method (adapter scale); SEMU's
   ablations; and robustness (adversarial prompts, relearning, membership inference).

Outputs: ``bench.json`` (schema in :mod:`.report`), ``bench.md`` (the tables) and one figure per
test concept, ``curve-<concept>.png``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .._io import atomic_write_json, atomic_write_text, check_output_dir, check_output_file
from ..concepts import load_preset
from ..errors import InvalidConfigError
from ..methods import METHODS, get_method
from . import jobs, protocol, report, search
from .protocol import DEV_CONCEPTS, TEST_CONCEPTS

__all__ = ["run_bench", "run_tuning", "METHOD_ORDER", "CONCEPTS", "ABLATIONS", "DEFAULT_TUNING", "load_tuning"]
logger = logging.getLogger(__name__)

METHOD_ORDER = tuple(METHODS)  # every registered method, in registry order
CONCEPTS = TEST_CONCEPTS
SEEDS = (0, 1, 2)
# The repository's committed tuning (absent from an installed wheel: pass --tuning, or tune first).
DEFAULT_TUNING = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tuning.json"

# SEMU ablations, each applied on top of SEMU's tuned configuration (γ = 1 is SEMU itself).
ABLATIONS = {
    "lora-same-layers": dict(parametrization="lora"),
    "full-ft-same-layers": dict(parametrization="full"),
    "gamma-0.9": dict(gamma_cross_attention=0.9, gamma=0.9),
    "gamma-0.5": dict(gamma_cross_attention=0.5, gamma=0.5),
    "no-projection": dict(project=False),
    "random-subspace": dict(subspace="random"),
}
QUICK_ABLATIONS = ("random-subspace",)
ABLATION_CONCEPTS = TEST_CONCEPTS[:1]  # seed 0 on no-red: the ablations' budget within the 45-minute run


def _run(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh spawned process (its own peak memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _check(methods, concepts=()) -> None:
    for m in methods:
        get_method(m)
    for c in concepts:
        load_preset(c)


# ---------------------------------------------------------------- tuning on the dev concepts
def run_tuning(out: str | Path = DEFAULT_TUNING, *, quick: bool = False, methods=METHOD_ORDER,
               progress: bool = True, overwrite: bool = False) -> dict:
    """Search every method's grid on the dev concepts and write the chosen configurations to ``out``."""
    from tqdm.auto import tqdm

    out = check_output_file(out, overwrite=overwrite, flag="--overwrite", suffix=".json")
    _check(methods, DEV_CONCEPTS)
    concepts = DEV_CONCEPTS[:1] if quick else DEV_CONCEPTS
    sizes = (protocol.QUICK if quick else protocol.TUNING).to_dict()
    grids = {m: search.GRIDS[m][:2] if quick else search.GRIDS[m] for m in methods}
    start = time.perf_counter()
    base = {}
    for c in tqdm(concepts, desc="tune: base model", disable=not progress):
        base[c] = _run(jobs.base_job, c, [0], sizes)["per_seed"][0]["metrics"]
    found: dict = {m: [] for m in methods}
    for m, c in tqdm([(m, c) for m in methods for c in concepts], desc="tune", disable=not progress):
        extra = search.QUICK_SETTINGS.get(m, {}) if quick else {}
        found[m].append(_run(jobs.tune_job, m, c, grids[m], sizes, extra))
    base_retain = float(np.mean([base[c]["retain"]["accuracy"] for c in concepts]))
    result = {"schema": 1, "quick": quick, "dev_concepts": list(concepts), "sizes": sizes, "seed": 0,
              "search_size": {m: len(g) for m, g in grids.items()}, "rule": search.SELECTION_RULE,
              "base": {c: base[c] for c in concepts}, "base_retain": base_retain, "methods": {}}
    for m in methods:
        summary = []
        for i, config in enumerate(grids[m]):
            runs = [found[m][j][i] for j in range(len(concepts))]
            summary.append({"config": config, **search.mean_over_concepts(runs),
                            "per_concept": {c: {k: r[k] for k in ("forget", "paraphrase", "retain", "seconds")}
                                            for c, r in zip(concepts, runs)}})
        best, feasible = search.select(summary, base_retain)
        result["methods"][m] = {"chosen": {**grids[m][best], **(search.QUICK_SETTINGS.get(m, {}) if quick else {})},
                                "chosen_index": best, "feasible": feasible, "search": summary}
        logger.info("tuned %s: %s (%s)", m, grids[m][best], "feasible" if feasible else "none feasible")
    result["seconds"] = time.perf_counter() - start
    atomic_write_json(out, result)
    return result


def load_tuning(path: str | Path | None = None) -> dict:
    """A tuning file written by :func:`run_tuning`."""
    path = Path(path) if path is not None else DEFAULT_TUNING
    if not path.is_file():
        raise InvalidConfigError(f"No tuning file at {str(path)!r}. Run `concept-erase bench --tune --tuning-out "
                                 "FILE` first (it takes long: see the README), or pass --tuning FILE.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        methods = data["methods"]
        assert isinstance(methods, dict) and all(isinstance(v.get("chosen"), dict) for v in methods.values())
    except (ValueError, KeyError, AssertionError, AttributeError, TypeError) as e:
        raise InvalidConfigError(f"{str(path)!r} is not a tuning file of `concept-erase bench --tune` "
                                 f"({type(e).__name__}).") from None
    return data


# ---------------------------------------------------------------- the benchmark on the test concepts
def run_bench(out_dir: str | Path = "bench", *, quick: bool = False, methods=METHOD_ORDER, concepts=None,
              seeds=None, tuning: str | Path | dict | None = None, ablations: bool = True,
              robustness: bool = True, progress: bool = True, overwrite: bool = False) -> dict:
    """Run the benchmark and write ``bench.json``, ``bench.md`` and the curve figures to ``out_dir``.

    ``quick``: a smoke run of the whole path (one test concept, two seeds, the tuned configurations
    with short training, small evaluation sets); its numbers are not the README's.
    """
    from tqdm.auto import tqdm

    out_dir = check_output_dir(out_dir, overwrite=overwrite, owned=("bench.json",), what="a benchmark")
    methods = tuple(methods)
    concepts = tuple(concepts or (TEST_CONCEPTS[:1] if quick else TEST_CONCEPTS))
    leaked = sorted(set(concepts) & set(DEV_CONCEPTS))
    if leaked:
        raise InvalidConfigError(f"{leaked} are dev concepts: the configurations were tuned on them. "
                                 f"Test on {', '.join(TEST_CONCEPTS)}.")
    _check(methods, concepts)
    seeds = list(seeds if seeds is not None else (SEEDS[:2] if quick else SEEDS))
    if not seeds or len(set(seeds)) != len(seeds) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                         for s in seeds):
        raise InvalidConfigError(f"--seeds must be distinct non-negative integers, but are {seeds!r}.")
    start = time.perf_counter()
    if isinstance(tuning, dict):
        tuned = tuning
    elif tuning is None and quick and not DEFAULT_TUNING.is_file():  # an installed wheel: each grid's first entry
        logger.warning("No committed tuning file; --quick uses the first configuration of each method's grid.")
        tuned = {"methods": {m: {"chosen": search.GRIDS[m][0], "feasible": None} for m in methods}}
    else:
        tuned = load_tuning(tuning)
    missing = [m for m in methods if m not in tuned["methods"]]
    if missing:
        raise InvalidConfigError(f"The tuning file has no configuration for {missing}; tune them first.")
    # --quick: the tuned configurations with short training on top (a smoke run of the whole path)
    configs = {m: {**tuned["methods"][m]["chosen"], **(search.QUICK_SETTINGS.get(m, {}) if quick else {})}
               for m in methods}
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = (protocol.QUICK if quick else protocol.HEADLINE).to_dict()
    curve_sizes = (protocol.QUICK if quick else protocol.CURVE).to_dict()
    scales = search.CURVE_SCALES[1::2] if quick else search.CURVE_SCALES
    budget = jobs.QUICK_ROBUSTNESS if quick else jobs.ROBUSTNESS
    data: dict = {"schema": report.SCHEMA, "quick": quick,
                  "protocol": report.protocol_summary(concepts, seeds, sizes, curve_sizes, scales, budget),
                  "tuning": {m: {"config": configs[m], "feasible": tuned["methods"][m].get("feasible"),
                                 "search_size": tuned.get("search_size", {}).get(m)} for m in methods},
                  "base": {}, "results": [], "ablations": [], "timing": {}}

    def save():
        atomic_write_json(out_dir / "bench.json", report.jsonable(data))

    base = {}
    for c in tqdm(concepts, desc="bench: base model", disable=not progress):
        base[c] = _run(jobs.base_job, c, seeds, sizes, curve_sizes=curve_sizes, robustness=budget if robustness else None)
        data["base"][c] = {"sets": base[c]["sets"],
                           "per_seed": {s: v["metrics"] for s, v in base[c]["per_seed"].items()}}
    work = [("method", m, c, configs[m]) for c in concepts for m in methods]
    if ablations and "semu" in methods:
        names = QUICK_ABLATIONS if quick else tuple(ABLATIONS)
        where = [c for c in concepts if c in ABLATION_CONCEPTS] or list(concepts[:1])
        work += [("ablation", name, c, {**configs["semu"], **ABLATIONS[name]}) for c in where for name in names]
    for kind, name, c, config in tqdm(work, desc="bench", disable=not progress):
        method = "semu" if kind == "ablation" else name
        row = _run(jobs.method_job, method, c, config, seeds if kind == "method" else seeds[:1], sizes, base[c],
                   curve_scales=scales if kind == "method" else (), curve_sizes=curve_sizes,
                   robustness=budget if (kind == "method" and robustness) else None)
        row = report.summarize_row(row, base[c])
        if kind == "ablation":
            row["variant"] = name
            data["ablations"].append(row)
        else:
            data["results"].append(row)
            logger.info("%s on %s: forget %.1f%%, paraphrase %.1f%%, retain %.1f%%", name, c,
                        100 * row["summary"]["forget"]["mean"], 100 * row["summary"]["paraphrase"]["mean"],
                        100 * row["summary"]["retain"]["mean"])
        save()
    data["timing"]["total_seconds"] = time.perf_counter() - start
    save()
    print(report.render(out_dir))
    return data
