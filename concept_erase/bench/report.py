"""The benchmark's ``bench.json``, its Markdown tables and its trade-off figures.

``bench.json`` (``schema`` 1):

- ``protocol``: dev and test concepts, seeds, evaluation sizes, curve scales, robustness budgets,
  the tuning's selection rule;
- ``tuning``: per method, the configuration used (chosen on the dev concepts) and whether it met
  the rule's retain constraint;
- ``base``: per test concept, the held-out prompt sets and the base model's metrics per seed;
- ``results``: one row per method and test concept: ``config``, ``per_seed`` (erase time, file size,
  trainable parameters, metrics, specificity), ``summary`` (``forget``, ``paraphrase``, ``kept``,
  ``retain``, ``specificity``: mean and 95% interval ``lo``/``hi`` over seeds and images), ``fid``
  and ``kid`` on the pooled retain images (with their count ``n``), ``seconds`` (mean erase time),
  ``time_ratio_to_semu``, ``peak_memory_mib``, ``curve`` (adapter scale -> rates, seed 0),
  ``robustness`` (attack success rate, relearning steps to recover, membership-inference AUC);
- ``ablations``: rows of the same shape for SEMU variants (``variant``), seed 0 only;
- ``timing``: total wall time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .._io import atomic_path
from . import search
from .jobs import fid_kid
from .protocol import DEV_CONCEPTS, PROTOCOL_SEED
from .stats import summarize

__all__ = ["SCHEMA", "pct", "protocol_summary", "summarize_row", "add_ratios", "markdown", "plot_curves",
           "jsonable", "FORGET_TARGET", "render"]
logger = logging.getLogger(__name__)

SCHEMA = 1
FORGET_TARGET = 0.10  # the matched operating point: concept rate on held-out forget prompts at most this
RATES = {"forget": ("forget", "concept_rate"), "paraphrase": ("paraphrase", "concept_rate"),
         "kept": ("forget", "kept"), "retain": ("retain", "accuracy")}


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def protocol_summary(concepts, seeds, sizes, curve_sizes, scales, budget) -> dict:
    return {"dev_concepts": list(DEV_CONCEPTS), "test_concepts": list(concepts), "seeds": list(seeds),
            "eval_sizes_per_seed": sizes, "curve_sizes": curve_sizes, "curve_scales": list(scales),
            "prompt_draw_seed": PROTOCOL_SEED, "selection_rule": search.SELECTION_RULE,
            "search_size": search.SEARCH_SIZE, "matched_forget_rate": FORGET_TARGET, "robustness_budget": budget,
            "intervals": "95%: the wider of the Student-t interval over seeds and the Wilson interval of the pooled "
                         "images", "fid_features": "world classifier, 128-d"}


def summarize_row(row: dict, base: dict) -> dict:
    """Intervals for the row's rates and FID/KID against the base model's retain images (same seeds)."""
    seeds = list(row["per_seed"])
    summary = {}
    for name, (split, key) in RATES.items():
        rates = [row["per_seed"][s]["metrics"][split][key] for s in seeds]
        counts = [row["per_seed"][s]["metrics"][split]["n"] for s in seeds]
        summary[name] = summarize(rates, counts)
    spec = [row["per_seed"][s]["specificity"] for s in seeds]
    if all(s["rate"] is not None for s in spec):
        summary["specificity"] = summarize([s["rate"] for s in spec], [s["n"] for s in spec])
    base_summary = {}
    for name, (split, key) in RATES.items():
        rates = [base["per_seed"][s]["metrics"][split][key] for s in seeds]
        counts = [base["per_seed"][s]["metrics"][split]["n"] for s in seeds]
        base_summary[name] = summarize(rates, counts)
    real = np.concatenate([base["per_seed"][s]["retain_features"] for s in seeds])
    row["fid_kid"] = fid_kid(real, row.pop("retain_features"))
    row["summary"], row["base_summary"] = summary, base_summary
    row["seconds"] = float(np.mean([row["per_seed"][s]["seconds"] for s in seeds]))
    first = row["per_seed"][seeds[0]]
    row.update(trainable_parameters=first["trainable_parameters"], trainable_fraction=first["trainable_fraction"],
               file_bytes=first["file_bytes"])
    return row


def add_ratios(data: dict) -> None:
    """Erase time of every row as a ratio to SEMU's on the same concept (same run, same machine)."""
    semu = {r["concept"]: r["seconds"] for r in data["results"] if r["method"] == "semu"}
    for r in data["results"] + data["ablations"]:
        r["time_ratio_to_semu"] = r["seconds"] / semu[r["concept"]] if semu.get(r["concept"]) else None


def matched_point(curve: list[dict], target: float = FORGET_TARGET) -> dict | None:
    """The weakest curve point (lowest scale) whose forget rate is at most ``target``; ``None`` if none."""
    for p in sorted(curve, key=lambda p: p["scale"]):
        if p["forget"]["concept_rate"] <= target + 1e-9:
            return p
    return None


# ---------------------------------------------------------------- Markdown
def pct(s: dict) -> str:
    """A summarized rate as ``mean [lo, hi]`` in percent (``stats.summarize``'s output)."""
    return f"{100 * s['mean']:.1f} [{100 * s['lo']:.0f}, {100 * s['hi']:.0f}]"


def _mib(x) -> str:
    return f"{x:.0f}" if x is not None else "–"


def markdown(data: dict) -> str:
    concepts = data["protocol"]["test_concepts"]
    seeds = data["protocol"]["seeds"]
    lines = [f"Seeds {seeds}; rates in %, mean [95% interval] over seeds and images; forget/paraphrase ↓, "
             "kept/retain/specificity ↑. Time = mean erase wall time (ratio to SEMU), memory = peak RSS of the "
             "run's process.", ""]
    head = ("| concept | method | forget ↓ | paraphrase ↓ | kept ↑ | retain acc ↑ | specificity ↑ | FID ↓ | KID ↓ "
            "| time s (×SEMU) | peak MiB | trainable |")
    for c in concepts:
        rows = [r for r in data["results"] if r["concept"] == c]
        if not rows:
            continue
        b = rows[0]["base_summary"]
        lines += [f"**{c}** (base model: forget {pct(b['forget'])}, paraphrase {pct(b['paraphrase'])}, "
                  f"retain {pct(b['retain'])})", "", head, "|" + "---|" * 12]
        for r in rows:
            s, fk = r["summary"], r["fid_kid"]
            ratio = f" (×{r['time_ratio_to_semu']:.2f})" if r.get("time_ratio_to_semu") is not None else ""
            spec = pct(s["specificity"]) if "specificity" in s else "–"
            lines.append(f"| {c} | {r['method']} | {pct(s['forget'])} | {pct(s['paraphrase'])} | {pct(s['kept'])} | "
                         f"{pct(s['retain'])} | {spec} | {fk['fid']:.2f} | {fk['kid']:.2f} | "
                         f"{r['seconds']:.1f}{ratio} | {_mib(r['peak_memory_mib'])} | "
                         f"{r['trainable_parameters']:,} ({r['trainable_fraction']:.2%}) |")
        lines.append("")
        lines.append(f"FID/KID: world-classifier features ({rows[0]['fid_kid']['feature_dim']}-d) on "
                     f"{rows[0]['fid_kid']['n']} retain images per model (pooled over seeds); KID on 100 subsets "
                     "of half the images (KID is unbiased: values at or below 0 mean no measurable difference)." + (" **Warning: not above the feature dimension.**"
                                              if "warning" in rows[0]["fid_kid"] else ""))
        lines.append("")
    # matched operating point
    lines += [f"**At a matched forget rate** (adapter scale swept {data['protocol']['curve_scales']}, seed 0; the "
              f"weakest scale whose forget rate is ≤ {FORGET_TARGET:.0%}):", "",
              "| concept | method | scale | forget | paraphrase | retain acc | KID (FID) | time s | peak MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        p = matched_point(r.get("curve", []))
        if p is None:
            best = min(r.get("curve", []), key=lambda q: q["forget"]["concept_rate"], default=None)
            note = (f"cannot reach it (best {100 * best['forget']['concept_rate']:.0f}% at scale {best['scale']})"
                    if best else "no curve")
            lines.append(f"| {r['concept']} | {r['method']} | {note} | | | | | {r['seconds']:.1f} | "
                         f"{_mib(r['peak_memory_mib'])} |")
        else:
            fk = p["fid_kid"]
            lines.append(f"| {r['concept']} | {r['method']} | {p['scale']} | {100 * p['forget']['concept_rate']:.0f} | "
                         f"{100 * p['paraphrase']['concept_rate']:.0f} | {100 * p['retain']['accuracy']:.0f} | "
                         f"{fk['kid']:.2f} ({fk['fid']:.1f}) | {r['seconds']:.1f} | {_mib(r['peak_memory_mib'])} |")
    n_curve = next((r["curve"][0]["fid_kid"]["n"] for r in data["results"] if r.get("curve")), None)
    if n_curve:
        lines.append(f"\nRates here are single-seed, on {data['protocol']['curve_sizes']} held-out prompts; KID/FID on "
                     f"{n_curve} retain images against the base model's at the same seeds (FID below the feature "
                     "dimension is unreliable; KID is not).")
    lines.append("")
    # robustness
    rob = [r for r in data["results"] if "robustness" in r]
    if rob:
        lines += ["**Robustness** (seed 0, at the tuned configuration; fixed budgets in `bench.json`):", "",
                  "| concept | method | paraphrase ↓ | attack success ↓ (no attack) | relearn steps to 50% ↑ "
                  "| membership AUC (base) |", "|---|---|---|---|---|---|"]
        for r in rob:
            x = r["robustness"]
            steps = x["relearn_steps_to_recover"]
            steps = f"{steps}" if steps is not None else f"> {x['relearn_max_steps']}"
            lines.append(f"| {r['concept']} | {r['method']} | {pct(r['summary']['paraphrase'])} | "
                         f"{100 * x['attack_success_rate']:.0f}% ({100 * x['attack_success_no_attack']:.0f}%) of "
                         f"{x['attack_prompts']} | {steps} | {x['membership_auc']:.2f} ({x['membership_auc_base']:.2f}) |")
        lines.append("")
    if data["ablations"]:
        lines += ["**SEMU ablations** (seed 0; SEMU's tuned configuration with one change):", "",
                  "| concept | variant | forget ↓ | paraphrase ↓ | retain acc ↑ | FID ↓ | time s | trainable |",
                  "|---|---|---|---|---|---|---|---|"]
        semu = {r["concept"]: r for r in data["results"] if r["method"] == "semu"}
        for c in sorted({a["concept"] for a in data["ablations"]}, key=concepts.index):
            rows = ([("semu (γ = 1, tuned)", semu[c])] if c in semu else []) + \
                [(a["variant"], a) for a in data["ablations"] if a["concept"] == c]
            for name, r in rows:
                s = _seed0(r) if r is semu.get(c) else r["summary"]
                lines.append(f"| {c} | {name} | {pct(s['forget'])} | {pct(s['paraphrase'])} | {pct(s['retain'])} | "
                             f"{r['fid_kid']['fid']:.2f} | {r['seconds']:.1f} | {r['trainable_parameters']:,} |")
        lines.append("")
    lines.append(f"Total wall time: {data['timing'].get('total_seconds', 0) / 60:.1f} min.")
    return "\n".join(lines)


def _seed0(row: dict) -> dict:
    """SEMU's row restricted to its first seed, comparable with the seed-0 ablations."""
    s0 = next(iter(row["per_seed"]))
    m = row["per_seed"][s0]["metrics"]
    return {name: summarize([m[split][key]], [m[split]["n"]]) for name, (split, key) in RATES.items()}


# ---------------------------------------------------------------- figures
def plot_curves(data: dict, concept: str, path: Path) -> None:
    """Forget rate vs retain accuracy along each method's scale sweep, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["results"] if r["concept"] == concept and r.get("curve")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8.5, 5))
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        pts = sorted(r["curve"], key=lambda p: p["scale"])
        x = [100 * p["forget"]["concept_rate"] for p in pts]
        y = [100 * p["retain"]["accuracy"] for p in pts]
        ax.plot(x, y, "-o", color=colours(i % 10), label=r["method"], markersize=4, linewidth=1.4, alpha=0.85)
        ax.plot(x[-1], y[-1], marker="s", color=colours(i % 10), markersize=7)  # the strongest scale
    base = rows[0]["base_summary"]
    ax.plot(100 * base["forget"]["mean"], 100 * base["retain"]["mean"], "k*", markersize=12, label="base model")
    ax.axvline(100 * FORGET_TARGET, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("concept rate on held-out forget prompts (%) — lower is better")
    ax.set_ylabel("accuracy on held-out retain prompts (%) — higher is better")
    ax.set_title(f"{concept}: forgetting vs retention, adapter scale {data['protocol']['curve_scales'][0]}"
                 f"–{data['protocol']['curve_scales'][-1]} (square: strongest)", fontsize=10)
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the data
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def render(out_dir: str | Path) -> str:
    """(Re)write ``bench.md`` and the curve figures from ``out_dir/bench.json``; returns the Markdown.

    ``python -m concept_erase.bench.report DIR`` does the same from the command line.
    """
    import json

    from .._io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    data = json.loads((out_dir / "bench.json").read_text(encoding="utf-8"))
    add_ratios(data)
    atomic_write_json(out_dir / "bench.json", data)
    text = markdown(data)
    atomic_write_text(out_dir / "bench.md", text + "\n")
    for c in data["protocol"]["test_concepts"]:
        plot_curves(data, c, out_dir / f"curve-{c}.png")
    return text


if __name__ == "__main__":
    import sys

    print(render(sys.argv[1] if len(sys.argv) > 1 else "bench"))
