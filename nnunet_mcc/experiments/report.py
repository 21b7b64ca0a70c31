"""Tables (Markdown, CSV, LaTeX) and plots of a comparison. Pure formatting: numbers come from compare.py."""

import csv
import math
from typing import Dict, List, Optional, Sequence

import numpy as np


def fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_p(p: Optional[float]) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def write_csv(path: str, rows: List[Dict], columns: Optional[Sequence[str]] = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def score_cell(entry: Dict, bold: str = "**") -> str:
    """``mean ± sd over cases (± sd over fold means)``, the best of its row in bold."""
    text = f"{fmt(entry['mean'])} ± {fmt(entry['std_cases'])} (± {fmt(entry['std_folds'])})"
    return f"{bold}{text}{bold}" if entry.get("best") else text


def summary_markdown(table: List[Dict], metric: str, trainers: Sequence[str], classes: Sequence[str]) -> str:
    cells = {(e["class_or_region"], e["trainer"]): e for e in table if e["metric"] == metric}
    rows = [[c] + [score_cell(cells[(c, t)]) if (c, t) in cells else "n/a" for t in trainers] for c in classes]
    return markdown_table(["class / region"] + list(trainers), rows)


def summary_latex(table: List[Dict], metrics: Sequence[str], trainers: Sequence[str], classes: Sequence[str],
                  caption: str) -> str:
    cells = {(e["metric"], e["class_or_region"], e["trainer"]): e for e in table}
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(caption) + "}",
             r"\begin{tabular}{ll" + "c" * len(trainers) + "}", r"\hline",
             "Metric & Class/region & " + " & ".join(latex_escape(t) for t in trainers) + r" \\", r"\hline"]
    for metric in metrics:
        for c in classes:
            row = []
            for t in trainers:
                e = cells.get((metric, c, t))
                if e is None:
                    row.append("n/a")
                    continue
                text = f"{fmt(e['mean'])} $\\pm$ {fmt(e['std_cases'])}"
                row.append(r"\textbf{" + text + "}" if e.get("best") else text)
            lines.append(f"{metric} & {latex_escape(c)} & " + " & ".join(row) + r" \\")
        lines.append(r"\hline")
    lines += [r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(path: str, per_case: Dict[str, Dict[str, List[float]]], trainers: Sequence[str],
                       classes: Sequence[str], metric: str) -> None:
    """One panel per class/region (stacked), one box (with the cases as dots) per trainer."""
    plt = _pyplot()
    n = len(classes)
    fig, axes = plt.subplots(n, 1, figsize=(max(5.0, 0.7 * len(trainers) + 2), 3.2 * n), squeeze=False)
    for ax, c in zip(axes[:, 0], classes):
        data = [[v for v in per_case.get(c, {}).get(t, []) if math.isfinite(v)] for t in trainers]
        ax.boxplot([d if d else [float("nan")] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(d))
            ax.scatter(i + jitter, d, s=8, alpha=0.6, color="black")
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels(trainers, rotation=45, ha="right", fontsize=8)
        ax.set_title(c)
        ax.set_ylabel(f"{metric} per case")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_learning_curves(path: str, curves: Dict[str, List[Dict[str, List[float]]]]) -> None:
    """Per-epoch pseudo Dice and pseudo MCC of every trainer: mean over folds (thick), each fold (thin)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (key, label), ax in zip((("mean_fg_dice", "pseudo Dice (mean fg)"), ("mean_fg_mcc", "pseudo MCC (mean fg)")),
                                axes):
        for i, (trainer, folds) in enumerate(curves.items()):
            color = f"C{i % 10}"
            series = [np.asarray(f[key], dtype=float) for f in folds if f and len(f.get(key, []))]
            if not series:
                continue
            for s in series:
                ax.plot(range(1, len(s) + 1), s, color=color, alpha=0.25, linewidth=1)
            length = min(len(s) for s in series)
            with np.errstate(all="ignore"):
                mean = np.nanmean(np.stack([s[:length] for s in series]), axis=0)
            ax.plot(range(1, length + 1), mean, color=color, linewidth=2.5, label=trainer, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
