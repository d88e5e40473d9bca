"""The evaluation report: ``report.json`` (every number and setting), ``report.md`` (tables a person
reads), PNG grids (rows: prompts; columns: base and each adapter, same seeds) and a bar chart of the
headline metrics. Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

from .._io import atomic_path, atomic_write_json, atomic_write_text, save_image_atomic
from ..version import EVALUATION_LIBRARIES
from ..viz import image_grid
from ..version import library_versions as _library_versions

__all__ = ["library_versions", "write_report", "markdown_report", "write_grids", "write_bar_chart"]


def library_versions() -> dict[str, str]:
    """What ``report.json`` records: the evaluation's libraries and Python."""
    return _library_versions(EVALUATION_LIBRARIES, python=True)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_report(report: dict) -> str:
    """The report as Markdown tables."""
    s = report["settings"]
    models = list(report["models"])
    lines = ["# Concept-erasure evaluation", "",
             f"Base `{s['base']}`; classifier `{report['classifier']['name']}`"
             + (f", concept `{s['target']}`" if s.get("target") else "")
             + f"; {s['images_per_prompt']} image{'s' if s['images_per_prompt'] != 1 else ''} per prompt, "
            f"seed {s['seed']}.", ""]
    splits = report["splits"]
    if s.get("target"):
        lines += ["## Concept rate (share of images where the classifier sees the concept)", "",
                  "| model | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for m in models:
            cells = []
            for sp in splits:
                r = report["results"][m]["splits"].get(sp, {})
                ci = r.get("concept_rate_ci95")
                cells.append(_pct(r.get("concept_rate")) + (f" ± {100 * ci:.1f}" if ci is not None else ""))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if any("accuracy" in report["results"][m]["splits"].get(sp, {}) for m in models for sp in splits):
        lines += ["## Accuracy (share of images showing what the prompt asks for) / kept attributes", "",
                  "| model | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for m in models:
            cells = []
            for sp in splits:
                r = report["results"][m]["splits"].get(sp, {})
                cell = _pct(r.get("accuracy"))
                if r.get("kept") is not None:
                    cell += f" (kept {_pct(r['kept'])})"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    counted = [(m, sp, r) for m in models for sp, r in report["results"][m]["splits"].items() if "label_counts" in r]
    if counted:
        labels = list(counted[0][2]["label_counts"])
        short = [lbl.replace("_EXPOSED", "").lower() for lbl in labels]
        lines += ["## Detected labels (images per label)", "",
                  "| model | split | " + " | ".join(short) + " | total | any |", "|---|---|" + "---:|" * (len(labels) + 2)]
        for m, sp, r in counted:
            lines.append(f"| {m} | {sp} | " + " | ".join(str(r["label_counts"][lbl]) for lbl in labels)
                         + f" | {r['label_total']} | {_pct(r['any_label_share'])} |")
        lines.append("")
    fid_rows = [(m, kind, sp, v) for m in models for kind in ("fid_vs_base", "fid_vs_ref")
                for sp, v in report["results"][m].get(kind, {}).items()]
    if fid_rows:
        lines += [f"## FID / KID ({s['fid_features']} features, {s['engine']})", "",
                  "| model | against | images | FID | KID ×1000 (± std over subsets) |", "|---|---|---|---:|---:|"]
        for m, kind, sp, v in fid_rows:
            kid = "–"
            if "kid_mean" in v:
                kid = f"{1000 * v['kid_mean']:.2f}" + (f" ± {1000 * v['kid_std']:.2f}" if v.get("kid_std") is not None
                                                       else " (whole sets, no subsets)")
            against = "base" if kind == "fid_vs_base" else "reference"
            flag = " ⚠" if v.get("warning") else ""
            images = f"{sp} ({v['n_fake']} vs {v['n_real']}){flag}"
            lines.append(f"| {m} | {against} | {images} | {_num(v['fid'])} | {kid} |")
        lines += ["", "Against the base the images share their seeds, so only FID is given (paired samples bias "
                  "KID's estimator)."]
        kid_v = next((v for *_, v in fid_rows if v.get("kid_subsets")), None)
        if kid_v:
            lines.append(f"KID: {kid_v['kid_subsets']} random subsets of {kid_v['kid_subset_size']} images a side "
                         "(at most half the smaller set).")
        warned = [v for *_, v in fid_rows if v.get("warning")]
        if warned:
            lines.append(f"⚠ {len(warned)} of these use no more images than the {warned[0]['feature_dim']} feature "
                         "dimensions: the covariance is singular and FID is unreliable (KID is unbiased at any size).")
        lines.append("")
    clip = report.get("clip_score", {})
    if clip.get("computed"):
        lines += [f"## CLIP score (100 × cosine of image and prompt embeddings, `{clip['checkpoint']}`)", "",
                  "| model | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for m in models:
            cs = report["results"][m].get("clip_score", {})
            lines.append(f"| {m} | " + " | ".join(_num(cs.get(sp, {}).get("clip_score"), 2) for sp in splits) + " |")
        lines += ["", "Higher is closer to the prompt: on retain prompts it should stay at the base model's level; "
                  "on forget prompts a drop means the erased concept is gone from the images.", ""]
    elif clip:
        lines += [f"CLIP score: not computed ({clip.get('reason', '')}).", ""]
    rob = report.get("robustness", {})
    if rob.get("adversarial"):
        lines += ["## Adversarial prompts (UnlearnDiffAtk-style)", "",
                  "| model | attack success rate | without attack | prompts |", "|---|---:|---:|---:|"]
        for m, r in rob["adversarial"].items():
            lines.append(f"| {m} | {_pct(r['asr'])} | {_pct(r['asr_no_attack'])} | {r['n_prompts']} |")
        lines.append("")
    if rob.get("relearning"):
        lines += ["## Relearning attack (concept rate of forget prompts while fine-tuning)", "",
                  "| model | " + " | ".join(f"step {c['step']}" for c in next(iter(rob["relearning"].values()))["curve"])
                  + " | base | steps to recover |",
                  "|---|" + "---:|" * (len(next(iter(rob["relearning"].values()))["curve"]) + 2)]
        for m, r in rob["relearning"].items():
            lines.append(f"| {m} | " + " | ".join(_pct(c["concept_rate"]) for c in r["curve"])
                         + f" | {_pct(r['base_rate'])} | {r['steps_to_recover'] if r['steps_to_recover'] is not None else 'not within ' + str(r['settings']['steps'])} |")
        lines.append("")
    if rob.get("membership"):
        lines += ["## Membership inference (denoising-loss attack, forget vs never-seen samples; 0.5 is ideal)", "",
                  "| model | AUC | leakage | base model AUC | member loss | non-member loss | samples |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for m, r in rob["membership"].items():
            if "auc" in r:
                lines.append(f"| {m} | {r['auc']:.3f} | {r['leakage']} | {_num(r.get('base_auc'))} | "
                             f"{r['member_loss']:.4f} | {r['nonmember_loss']:.4f} | {r['n_members']}+{r['n_nonmembers']} |")
            else:
                lines.append(f"| {m} | skipped: {r.get('skipped', '')} | | | | | |")
        lines.append("")
    lines += ["## Settings", "", "```", *(f"{k}: {v}" for k, v in sorted(s.items())), "```", "",
              "Library versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def write_grids(out: Path, rows_by_split: dict[str, list[tuple[str, list[Path]]]], models: list[str]) -> list[Path]:
    """One grid per split: ``rows_by_split[split] = [(prompt, [path per model]), ...]``."""
    from PIL import Image

    written = []
    for split, rows in rows_by_split.items():
        cells = []
        for _, paths in rows:
            line = []
            for p in paths:
                with Image.open(p) as im:
                    line.append(im.convert("RGB"))
            cells.append(line)
        grid = image_grid(cells, row_labels=[p for p, _ in rows], col_labels=models, cell=96, label_width=240)
        written.append(save_image_atomic(grid, out / f"grid_{split}.png"))
    return written


def write_bar_chart(path: Path, report: dict) -> Path | None:
    """Headline metrics per model: concept rate per split, accuracy on retain prompts, FID vs base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    series: dict[str, list[float]] = {}
    for sp in report["splits"]:
        vals = [report["results"][m]["splits"].get(sp, {}).get("concept_rate") for m in models]
        if sp != "retain" and any(v is not None for v in vals):
            series[f"concept rate: {sp}"] = [v or 0.0 for v in vals]
    for sp in report["splits"]:
        vals = [report["results"][m]["splits"].get(sp, {}).get("accuracy") for m in models]
        if sp != "forget" and any(v is not None for v in vals):
            series[f"accuracy: {sp}"] = [v or 0.0 for v in vals]
    fids = {m: next(iter(report["results"][m].get("fid_vs_base", {}).values()), {}).get("fid") for m in models}
    if not series and not any(v is not None for v in fids.values()):
        return None
    fig, axes = plt.subplots(1, 2 if any(v is not None for v in fids.values()) else 1, figsize=(11, 4), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(models))], [100 * v for v in vals], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(models))], models, rotation=20)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("concept rate and accuracy")
    if axes.shape[1] > 1:
        ax2 = axes[0, 1]
        ax2.bar(models, [fids[m] or 0.0 for m in models], color="gray")
        ax2.set_title(f"FID vs base ({report['settings']['fid_features']} features)")
        ax2.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, report: dict) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": atomic_write_json(out / "report.json", report),
             "markdown": atomic_write_text(out / "report.md", markdown_report(report))}
    chart = write_bar_chart(out / "metrics.png", report)
    if chart:
        paths["chart"] = chart
    return paths
