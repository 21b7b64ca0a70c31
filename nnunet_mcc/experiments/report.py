"""The comparison's page, tables (Markdown, CSV, LaTeX from pandas) and plots. Pure formatting: the
numbers come from compare.py's DataFrames; files are written through ``nnunet_mcc.fileio``."""

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from nnunet_mcc.experiments import convergence
from nnunet_mcc.fileio import write_bytes, write_text

FOREGROUND_MEAN = "foreground mean"
CAVEAT_MARK = "†"


def fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_p(p: Optional[float]) -> str:
    if p is None or pd.isna(p) or not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _count(n, noun: str) -> str:
    return f"{int(n)} {noun}{'' if int(n) == 1 else 's'}"


def write_frame(path: str, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False), "CSV table")


def write_text_file(path: str, text: str) -> None:
    write_text(path, text, "report file")


def latex_escape(text: str) -> str:
    """Plain text (a trainer, class or dataset name) for LaTeX; never applied to LaTeX already written."""
    out = []
    for ch in str(text):
        out.append({"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}.get(ch, ch))
    return "".join(out)


def score_cell(entry, bold: str = "**") -> str:
    """``mean ± sd over cases (± sd over fold means)``, the best of its row in bold."""
    text = f"{fmt(entry['mean'])} ± {fmt(entry['std_cases'])} (± {fmt(entry['std_folds'])})"
    return f"{bold}{text}{bold}" if entry["best"] else text


def summary_markdown(table: pd.DataFrame, metric: str, trainers: Sequence[str], classes: Sequence[str]) -> str:
    sub = table[table["metric"] == metric]
    cells = sub.assign(cell=sub.apply(score_cell, axis=1)).pivot(index="class_or_region", columns="trainer",
                                                                   values="cell")
    cells = cells.reindex(index=[c for c in classes if c in cells.index], columns=list(trainers)).fillna("n/a")
    return cells.rename_axis("class / region").rename_axis(None, axis=1).to_markdown()


def summary_latex(table: pd.DataFrame, metrics: Sequence[str], trainers: Sequence[str], classes: Sequence[str],
                  caption: str) -> str:
    """``caption`` is LaTeX already (its plain-text parts escaped by the caller); cells are built here."""
    def cell(entry) -> str:
        text = f"{fmt(entry['mean'])} $\\pm$ {fmt(entry['std_cases'])}"
        return r"\textbf{" + text + "}" if entry["best"] else text

    sub = table[table["metric"].isin(metrics)]
    cells = sub.assign(cell=sub.apply(cell, axis=1)).pivot(index=["metric", "class_or_region"], columns="trainer",
                                                            values="cell")
    order = [(m, c) for m in metrics for c in classes if (m, c) in cells.index]
    cells = cells.reindex(index=pd.MultiIndex.from_tuples(order), columns=list(trainers)).fillna("n/a")
    cells.columns = [latex_escape(t) for t in cells.columns]
    cells.index = pd.MultiIndex.from_tuples([(m, latex_escape(c)) for m, c in cells.index],
                                            names=["Metric", "Class/region"])
    return cells.reset_index().to_latex(index=False, escape=False, caption=caption, position="t",
                                        column_format="ll" + "c" * len(trainers))


def condense(notes: Sequence[str]) -> List[str]:
    """``<trainer> fold <f>: <message>`` lines that share their message become one line listing the folds."""
    import re

    grouped, order = {}, []
    for note in notes:
        match = re.match(r"^(\S+) fold (\d+): (.*)$", note)
        key = match.group(3) if match else note
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        if match:
            grouped[key].append((match.group(1), match.group(2)))
    lines = []
    for key in order:
        runs = grouped[key]
        if len(runs) <= 1:
            lines.append(f"{runs[0][0]} fold {runs[0][1]}: {key}" if runs else key)
            continue
        by_trainer = {}
        for trainer, fold in runs:
            by_trainer.setdefault(trainer, []).append(fold)
        who = "; ".join(f"{t} fold{'s' if len(f) > 1 else ''} {' '.join(f)}" for t, f in by_trainer.items())
        lines.append(f"{who}: {key}")
    return lines


@dataclass
class Page:
    """The report page and the tables written beside it."""
    dataset_name: str
    configuration: str
    plans: str
    trainers: List[str]
    baseline: str
    classes: List[str]
    cases: List[str]
    folds: List[int]
    runs: pd.DataFrame
    per_trainer: pd.DataFrame
    table: pd.DataFrame
    tests: pd.DataFrame
    ranks: pd.DataFrame
    snapshots: pd.DataFrame
    notes: List[str]
    mixed_budgets_allowed: bool

    @property
    def headline(self) -> str:
        return FOREGROUND_MEAN if FOREGROUND_MEAN in self.classes else self.classes[0]

    def not_converged(self) -> pd.DataFrame:
        return self.runs[self.runs["converged"] != convergence.YES]

    def budget_lines(self) -> List[str]:
        budgets = list(dict.fromkeys(self.runs["budget"]))
        if len(budgets) == 1 and budgets[0] != "unknown":
            first = self.runs.iloc[0]
            return [f"**Budget of every run:** {int(first['num_epochs'])} epochs x "
                    f"{int(first['num_iterations_per_epoch'])} iterations = {int(first['iterations'])} training "
                    f"iterations, {_count(first['num_val_iterations_per_epoch'], 'validation iteration')} per "
                    f"epoch (as recorded in each fold)."]
        lines = ["**Mixed budgets (paired on request, --allow-mixed-budgets):** the runs were trained for different "
                 "lengths, so every difference below mixes the loss with the training budget.", ""]
        frame = self.per_trainer[["trainer", "budget", "iterations"]].rename(
            columns={"budget": "epochs x iterations (val)", "iterations": "training iterations"})
        return lines + [frame.to_markdown(index=False)]

    def banner(self) -> List[str]:
        bad = self.not_converged()
        if bad.empty:
            return [f"All {len(self.runs)} runs converged by the criterion below: the comparison is of trained "
                    f"networks at this budget."]
        return [f"> **Not converged: {len(bad)} of {len(self.runs)} runs had not plateaued when training ended** "
                f"(criterion below). This comparison measures how far each loss gets within the budget (training "
                f"speed), not the final quality of the losses; significance marks carry that caveat "
                f"({CAVEAT_MARK})."]

    def markdown(self, full: bool = True) -> str:
        """The report page; ``full=False`` (what is printed) keeps only the headline row of the tests."""
        parts = [f"# Loss comparison: {self.dataset_name}, {self.configuration} ({self.plans})", ""]
        parts += self.banner() + [""] + self.budget_lines() + [""]
        parts.append(f"{len(self.cases)} cross-validation cases (folds {' '.join(map(str, self.folds))}) that every "
                     f"trainer has. Cells: mean ± std over cases (± std of the fold means); best in bold.")
        parts += ["", "## Runs", "", self._runs_markdown()]
        for metric in ("Dice", "MCC"):
            parts += ["", f"## {metric}", "", summary_markdown(self.table, metric, self.trainers, self.classes)]
        if len(self.trainers) > 1 and len(self.tests):
            parts += self._tests_markdown(full)
            parts += ["", f"## Rank stability ({self.headline}, bootstrap over cases)", ""]
            ranks = self.ranks[self.ranks["class_or_region"] == self.headline]
            shown = pd.DataFrame({"metric": ranks["metric"], "trainer": ranks["trainer"], "rank": ranks["rank"],
                                  "mean bootstrap rank": ranks["mean_bootstrap_rank"].map(lambda v: fmt(v, 2)),
                                  "P(rank 1)": ranks["p_rank_1"].map(lambda v: fmt(v, 2))})
            parts.append(shown.to_markdown(index=False))
        if len(self.snapshots):
            parts += self._snapshots_markdown()
        parts += ["", "## Convergence", "", f"Criterion: {convergence.CRITERION}."]
        if full:
            parts += ["", self._convergence_markdown(), "", "## Loss settings of each run", ""]
            parts += self._settings_lines()
        if self.notes:
            parts += ["", "## Missing or left out", ""] + [f"- {n}" for n in condense(self.notes)]
        return "\n".join(parts)

    def _runs_markdown(self) -> str:
        frame = self.per_trainer[["trainer", "folds", "budget", "loss", "settings", "converged"]].rename(
            columns={"budget": "epochs x iterations (val)"})
        return frame.to_markdown(index=False)

    def _tests_markdown(self, full: bool) -> List[str]:
        caveat = "caveat_not_converged" in self.tests and self.tests["caveat_not_converged"].any()
        parts = ["", f"## Paired Wilcoxon signed-rank tests against {self.baseline} (Holm-corrected per metric over "
                     f"trainers x classes; * p < 0.05"
                 + (f"; {CAVEAT_MARK} a run of the pair had not converged: a difference in training speed at this "
                    f"budget, not in final quality" if caveat else "") + ")", ""]
        shown = self.tests if full else self.tests[self.tests["class_or_region"] == self.headline]

        def mark(row) -> str:
            text = fmt_p(row["p_holm"])
            if row["significant_0.05"]:
                text += " *" + (CAVEAT_MARK if row.get("caveat_not_converged", False) else "")
            return text

        frame = pd.DataFrame({"metric": shown["metric"], "class/region": shown["class_or_region"],
                              "trainer": shown["trainer"], "pairs": shown["n_pairs"],
                              "median diff": shown["median_difference"].map(fmt), "p": shown["p"].map(fmt_p),
                              "p (Holm)": shown.apply(mark, axis=1) if len(shown) else []})
        parts.append(frame.to_markdown(index=False))
        if not full:
            parts.append(f"\n(only '{self.headline}' shown; every class and region: report.md, wilcoxon.csv)")
        return parts

    def _snapshots_markdown(self) -> List[str]:
        parts = ["", f"## Score after N iterations ({self.headline}, validation cases, network validated during "
                     f"training at each snapshot and at the end)", ""]
        snap = self.snapshots.copy()
        snap["after"] = snap["iterations"].map(lambda v: f"{int(v)} it." if pd.notna(v) else "n/a")
        order = list(dict.fromkeys(snap.sort_values("iterations")["after"]))
        for metric in ("Dice", "MCC"):
            if metric not in snap:
                continue
            wide = snap.pivot_table(index="trainer", columns="after", values=metric, aggfunc="first")
            wide = wide.reindex(index=[t for t in self.trainers if t in wide.index],
                                columns=[c for c in order if c in wide.columns])
            parts += [f"{metric}:", "", wide.map(fmt).rename_axis(None, axis=1).to_markdown(), ""]
        return parts

    def _settings_lines(self) -> List[str]:
        """Every trainer's loss and its full settings (matrices included), per group of folds that share them."""
        lines = []
        for trainer in self.trainers:
            own = self.runs[self.runs["trainer"] == trainer]
            for (loss, settings), group in own.groupby(["loss", "loss_settings"], sort=False):
                folds = " ".join(str(f) for f in group["fold"])
                lines.append(f"- {trainer} (folds {folds}): {loss}; settings `{settings}`")
        return lines

    def _convergence_markdown(self) -> str:
        frame = self.runs[["trainer", "fold", "epochs_logged", "converged", "convergence", "log_source"]].copy()
        frame["log_source"] = frame["log_source"].fillna("none")
        return frame.rename(columns={"epochs_logged": "epochs logged", "log_source": "curve from"}).to_markdown(
            index=False)

    def summary_markdown_all(self, metrics: Sequence[str]) -> str:
        return "\n\n".join(f"## {m}\n\n" + summary_markdown(self.table, m, self.trainers, self.classes)
                           for m in metrics) + "\n"

    def summary_latex(self, metrics: Sequence[str]) -> str:
        caption = (f"{latex_escape(self.dataset_name)} {latex_escape(self.configuration)}: mean $\\pm$ std over "
                   f"{len(self.cases)} cross-validation cases")
        budgets = list(dict.fromkeys(self.runs["budget"]))
        if len(budgets) == 1 and budgets[0] != "unknown":
            caption += f", {int(self.runs.iloc[0]['iterations'])} training iterations per run"
        if not self.not_converged().empty:
            caption += " (not all runs converged: scores at this budget, not final quality)"
        return summary_latex(self.table, metrics, self.trainers, self.classes, caption)


# ---- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes(path, buffer.getvalue(), "plot")


def plot_distributions(path: str, scores: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                       metric: str) -> None:
    """One panel per class/region (stacked), one box per trainer with the cases as dots (seaborn)."""
    import seaborn as sns

    plt = _pyplot()
    present = [c for c in classes if c in set(scores["class_or_region"])]
    fig, axes = plt.subplots(len(present), 1, figsize=(max(5.0, 0.9 * len(trainers) + 2), 3.2 * len(present)),
                             squeeze=False)
    random_state = np.random.get_state()  # seaborn jitters with numpy's global generator: same plot every time
    np.random.seed(0)
    for ax, c in zip(axes[:, 0], present):
        sub = scores[(scores["class_or_region"] == c) & scores["value"].notna()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seaborn passes matplotlib's deprecated boxplot arguments
            sns.boxplot(data=sub, x="trainer", y="value", order=list(trainers), ax=ax, showfliers=False,
                        color="0.85")
            sns.stripplot(data=sub, x="trainer", y="value", order=list(trainers), ax=ax, color="black", size=3,
                          alpha=0.6, jitter=0.15)
        ax.set_title(c)
        ax.set_xlabel("")
        ax.set_ylabel(f"{metric} per case")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    np.random.set_state(random_state)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_learning_curves(path: str, curves: pd.DataFrame, trainers: Sequence[str]) -> None:
    """Per-epoch validation pseudo Dice and pseudo MCC against training iterations (epochs x iterations per
    epoch, so trainers with different epoch lengths line up): each fold thin, the mean over folds thick."""
    plt = _pyplot()
    x = "iterations" if curves["iterations"].notna().all() else "epoch"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (series, label), ax in zip((("mean_fg_dice", "pseudo Dice (mean fg)"),
                                    ("mean_fg_mcc", "pseudo MCC (mean fg)")), axes):
        sub = curves[(curves["series"] == series) & curves["value"].notna()]
        for i, trainer in enumerate(trainers):
            own = sub[sub["trainer"] == trainer]
            if own.empty:
                continue
            color = f"C{i % 10}"
            for _, fold in own.groupby("fold"):
                ax.plot(fold[x], fold["value"], color=color, alpha=0.25, linewidth=1)
            mean = own.groupby(x)["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.5, label=trainer, marker="o", markersize=3)
        ax.set_xlabel("training iterations" if x == "iterations" else "epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)

