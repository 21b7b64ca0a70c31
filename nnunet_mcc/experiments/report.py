"""The comparison's page and tables (Markdown, CSV, LaTeX from pandas; the plots are in ``plots.py``). Pure
formatting: the numbers come from compare.py's DataFrames; files are written through ``nnunet_mcc.fileio``."""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import pandas as pd

from nnunet_mcc.experiments import collect_collapse, convergence
from nnunet_mcc.fileio import write_text
from nnunet_mcc.metrics import higher_is_better, metric_heading
from nnunet_mcc.metrics import CALIBRATION_METRICS

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
    """``mean ± sd over cases (± sd over fold means)``, with several seeds ``(± sd folds, ± sd seeds)``; the
    best of its row in bold."""
    n_seeds = entry.get("n_seeds", 1)
    if pd.notna(n_seeds) and n_seeds > 1:
        text = (f"{fmt(entry['mean'])} ± {fmt(entry['std_cases'])} (± {fmt(entry['std_folds'])} folds, "
                f"± {fmt(entry['std_seeds'])} seeds)")
    else:
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
    cost: pd.DataFrame = field(default_factory=pd.DataFrame)
    collapsed: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_loss: pd.DataFrame = field(default_factory=pd.DataFrame)
    projections: pd.DataFrame = field(default_factory=pd.DataFrame)  # compare.projected_gains
    auto_budget: List[str] = field(default_factory=list)  # auto_budget.first_lines: the budget of each trainer
    metrics: List[str] = field(default_factory=lambda: ["Dice", "MCC"])  # the tested metrics (compare.tested_metrics)
    boundary: dict = field(default_factory=dict)  # collect_boundary.boundary_record: what HD95 and NSD rest on
    calibration: dict = field(default_factory=dict)  # collect_calibration.calibration_record: what ECE and Brier rest on
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)  # compare.reliability_table
    reliability_plots: dict = field(default_factory=dict)  # trainer -> its reliability diagram (relative path)
    pictures: List[dict] = field(default_factory=list)  # compare.disagreement_pictures
    pictures_asked: int = 0  # cases per class asked for (0: no pictures, no section)
    pictures_not_drawn: List[str] = field(default_factory=list)  # chosen cases that could not be drawn, and why
    ensembles: List[str] = field(default_factory=list)  # ensemble.describe: what each ensemble contestant rests on

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
        if self.auto_budget:
            return self.auto_budget_table()
        lines = ["**Mixed budgets (paired on request, --allow-mixed-budgets):** the runs were trained for different "
                 "lengths, so every difference below mixes the loss with the training budget.", ""]
        frame = self.per_trainer[["trainer", "budget", "iterations"]].rename(
            columns={"budget": "epochs x iterations (val)", "iterations": "training iterations"})
        return lines + [frame.to_markdown(index=False)]

    def auto_budget_table(self) -> List[str]:
        """The budget of each trainer when they differ by ``compare --auto-budget``'s choice (said first)."""
        frame = self.per_trainer[["trainer", "budget", "iterations"]].rename(
            columns={"budget": "epochs x iterations (val)", "iterations": "training iterations"})
        return ["**Budgets differ between trainers** (chosen by `crossval --auto-budget`, first lines): every "
                "difference below compares losses trained for different lengths.", "", frame.to_markdown(index=False)]

    def trained_runs(self) -> pd.DataFrame:
        """The runs that trained (an ensemble's folds are built from its members' runs, which are counted)."""
        if "ensemble_of" not in self.runs:
            return self.runs
        return self.runs[self.runs["ensemble_of"].fillna("").astype(str) == ""]

    def banner(self) -> List[str]:
        trained = self.trained_runs()
        bad = trained[trained["converged"] != convergence.YES]
        if bad.empty:
            return [f"All {len(trained)} runs converged by the criterion below: the comparison is of trained "
                    f"networks at this budget. A converged curve can still gain from a longer schedule (the judge "
                    f"was {convergence.CALIBRATION})."]
        return [f"> **Not converged: {len(bad)} of {len(trained)} runs had not plateaued when training ended** "
                f"(criterion below). This comparison measures how far each loss gets within the budget (training "
                f"speed), not the final quality of the losses; significance marks carry that caveat "
                f"({CAVEAT_MARK})."] + self.longer_budget_lines()

    def longer_budget_lines(self) -> List[str]:
        """What a longer budget would change, per trainer that has runs the judge found still rising (the median
        and range of their projected gains, said to be a projection and what it rests on) or runs with a class at
        zero (no gain projected)."""
        frame = self.projections
        if frame is None or not len(frame):
            return []
        lines = []
        rising = frame[frame["rising_runs"] > 0]
        if len(rising):
            lines.append(">")
            lines.append("> **What a schedule twice as long would add** (a projection, not a measurement: each "
                         "still-rising run's Theil-Sen slope against log(iterations) over the last half of its "
                         f"epochs, times log 2, the judge's rule; {convergence.CALIBRATION}):")
            for _, row in rising.iterrows():
                gains = []
                for name, label in convergence.SERIES.items():
                    median = row.get(f"gain_{name}_median")
                    if median is None or pd.isna(median):
                        continue
                    low, high = row[f"gain_{name}_min"], row[f"gain_{name}_max"]
                    spread = f"; {low:+.3f} to {high:+.3f}" if row["rising_runs"] > 1 else ""
                    gains.append(f"{label} {median:+.3f} (median{spread})")
                lines.append(f"> - {row['trainer']}, {int(row['rising_runs'])} of {_count(row['runs'], 'run')} still "
                             f"rising: " + (", ".join(gains) or "no projected gain recorded"))
        at_zero = frame[frame["runs_with_class_at_zero"] > 0]
        for _, row in at_zero.iterrows():
            lines.append(f"> - {row['trainer']}, {int(row['runs_with_class_at_zero'])} of "
                         f"{_count(row['runs'], 'run')} with a class at zero ({row['classes_at_zero']}): flat curves "
                         f"that project no gain; only training longer tells whether the class is learned later")
        if len(at_zero) and not len(rising):
            lines.insert(0, ">")
        return lines

    @property
    def seed_counts(self) -> List[int]:
        if "n_seeds" not in self.per_trainer:
            return [1]
        return sorted({int(n) for n in self.per_trainer["n_seeds"]})

    def noise_lines(self) -> List[str]:
        """Whether training noise was measured, the rule, and per trainer against the baseline (headline class)
        whether its difference is above it."""
        counts = self.seed_counts
        if counts == [1]:
            lines = ["**Training noise not measured:** every trainer was trained with one seed, so no difference "
                     "below can be told from seed-to-seed variation (train each trainer with several seeds, "
                     "result folders `<trainer>_seed<S>`, to measure it)."]
        else:
            seeds = " / ".join(map(str, counts))
            lines = [f"**Training noise** measured over {seeds} seeds per trainer"
                     + (" (two seeds: the spread is a rough estimate)" if min(counts) == 2 else "")
                     + ". Each case's score is averaged over a trainer's seeds before the tests. A difference is "
                       "**above training noise** when the Holm-corrected Wilcoxon test passes (p < 0.05) and "
                       "|mean_A - mean_B| > 2 sqrt((s_A^2 + s_B^2) / n_seeds), s = std over seeds of a trainer's "
                       "mean score over all cases."]
            if min(counts) == 1:
                lines.append("Some trainers have one seed only: their pairs are not judged against training noise.")
        tests = self.tests[self.tests["class_or_region"] == self.headline] if len(self.tests) else self.tests
        for _, t in tests.iterrows() if len(tests) else []:
            lines.append(f"- {t['trainer']} vs {t['baseline']} ({self.headline} {t['metric']}): "
                         + self.pair_verdict(t) + self.lost_class_note(t))
        return lines

    @staticmethod
    def pair_verdict(t) -> str:
        diff = t.get("mean_difference", float("nan"))
        direction = "" if higher_is_better(t["metric"]) else " (lower is better)"
        text = f"difference {diff:+.3f}{direction}, p (Holm) {fmt_p(t['p_holm'])}" if pd.notna(diff) else \
            f"p (Holm) {fmt_p(t['p_holm'])}"
        above = t.get("above_training_noise")
        if above is None or (isinstance(above, float) and math.isnan(above)):
            verdict = "significant" if t["significant_0.05"] else "not significant"
            return f"{text}: {verdict}; training noise not measured"
        threshold = fmt(t["noise_threshold"])
        if above:
            return f"{text}, noise threshold {threshold}: **above training noise**"
        if t["significant_0.05"]:
            return f"{text}, noise threshold {threshold}: significant but within training noise"
        return f"{text}, noise threshold {threshold}: not significant"

    def class_loss_lines(self) -> List[str]:
        """Every trainer's class-loss rate (``compare.class_loss_table``), 0 of N included."""
        if self.class_loss is None or not len(self.class_loss):
            return []
        parts = []
        for _, c in self.class_loss.iterrows():
            text = f"{c['trainer']} lost a class in {int(c['runs_with_lost_class'])} of {_count(c['runs'], 'run')}"
            details = [c["lost_classes"]] if c["lost_classes"] else []
            if c.get("runs_with_flood"):
                details.append(f"{int(c['runs_with_flood'])} of them flooded: a class predicted over much of the image")
            causes = [(c["runs_lost_in_training"], "in training"), (c["runs_lost_by_mirroring"], "by mirroring only"),
                      (c["runs_lost_cause_unknown"], "cause unknown")]
            if c["runs_lost_in_training"] or c["runs_lost_by_mirroring"]:
                details.append(", ".join(f"{int(n)} {what}" for n, what in causes if n))
            parts.append(text + (f" ({'; '.join(details)})" if details else ""))
        return ["**Class-loss rate** (runs that lost a class: Dice 0 on every validation case that has it, or a "
                f"flood: mean Dice below {collect_collapse.FLOOD_DICE} with {collect_collapse.FLOOD_FACTOR:g} times the reference's voxels "
                "predicted or more; a run is one fold and seed): " + "; ".join(parts) + "."]

    def lost_class_note(self, t) -> str:
        """For a pair where either trainer lost a class in some run: how much of the difference goes with the runs
        that lost one (``compare.lost_class_split``); empty otherwise."""
        if self.class_loss is None or not len(self.class_loss) or pd.isna(t.get("n_cases_without_lost_runs")):
            return ""
        rates = self.class_loss.set_index("trainer")
        if t["trainer"] not in rates.index or t["baseline"] not in rates.index:
            return ""
        own, base = rates.loc[t["trainer"]], rates.loc[t["baseline"]]
        who = (f"{t['trainer']} lost a class in {int(own['runs_with_lost_class'])} of {int(own['runs'])} runs, "
               f"{t['baseline']} in {int(base['runs_with_lost_class'])} of {int(base['runs'])}")
        if not t["n_cases_without_lost_runs"]:
            return (f"; lost classes: {who}, and every compared case has such a run in one of the two, so the "
                    f"difference cannot be told from them")
        total, due = t.get("mean_difference", float("nan")), t["difference_due_to_lost_runs"]
        text = (f"; **of which {due:+.3f} is due to the runs that lost a class** ({who}; without those runs the "
                f"difference is {t['mean_difference_without_lost_runs']:+.3f} on "
                f"{int(t['n_cases_without_lost_runs'])} of {int(t['n_pairs'])} cases, not tested)")
        if pd.notna(total) and total * due > 0 and abs(due) > abs(total) / 2:
            text += ": driven by lost classes, not a uniform gain"
        return text

    def collapsed_lines(self) -> List[str]:
        if self.collapsed is None or not len(self.collapsed):
            return []

        def cause(c) -> str:
            lost_in = c.get("lost_in")
            return f", lost by {lost_in}" if lost_in == "mirroring" else f", lost in {lost_in}" \
                if lost_in == "training" else ""

        shown = "; ".join(f"{c['run']} fold {c['fold']}: {c['class_or_region']} ({c['when']}{cause(c)})"
                          for _, c in self.collapsed.head(8).iterrows())
        more = f" and {len(self.collapsed) - 8} more (collapsed.csv)" if len(self.collapsed) > 8 else ""
        return [f"**Collapsed classes** (lost: Dice 0 on every validation case that has the class; or flooded): "
                f"{shown}{more}."]

    def markdown(self, full: bool = True) -> str:
        """The report page; ``full=False`` (what is printed) keeps only the headline row of the tests."""
        parts = [f"# Loss comparison: {self.dataset_name}, {self.configuration} ({self.plans})", ""]
        parts += self.auto_budget + ([""] if self.auto_budget else [])
        parts += self.banner() + [""]
        class_loss = self.class_loss_lines()
        parts += class_loss + ([""] if class_loss else [])
        parts += self.noise_lines() + [""]
        collapsed = self.collapsed_lines()
        parts += collapsed + ([""] if collapsed else [])
        parts += self.budget_lines() + [""]
        spread = "(± std of the fold means" + (", ± std over seeds of the mean" if self.seed_counts != [1] else "")
        parts.append(f"{len(self.cases)} cross-validation cases (folds {' '.join(map(str, self.folds))}) that every "
                     f"trainer has. Cells: mean ± std over cases {spread}); best in bold.")
        parts += ["", "## Runs", "", self._runs_markdown()]
        parts += [""] + self.ensembles if self.ensembles else []
        if self.cost is not None and len(self.cost):
            parts += ["", "## Cost", ""] + self._cost_markdown()
        for metric in self.metrics:
            if metric in CALIBRATION_METRICS:
                continue  # their own section, below
            parts += ["", f"## {metric_heading(metric)}", ""] + self.boundary_lines(metric)
            parts.append(summary_markdown(self.table, metric, self.trainers, self.classes))
        parts += self.calibration_lines()
        if len(self.trainers) > 1 and len(self.tests):
            parts += self._tests_markdown(full)
            over = "cases" if self.seed_counts == [1] else "cases and each trainer's seeds"
            parts += ["", f"## Rank stability ({self.headline}, bootstrap over {over})", ""]
            ranks = self.ranks[self.ranks["class_or_region"] == self.headline]
            shown = pd.DataFrame({"metric": ranks["metric"].map(metric_heading), "trainer": ranks["trainer"],
                                  "rank": ranks["rank"],
                                  "mean bootstrap rank": ranks["mean_bootstrap_rank"].map(lambda v: fmt(v, 2)),
                                  "P(rank 1)": ranks["p_rank_1"].map(lambda v: fmt(v, 2))})
            parts.append(shown.to_markdown(index=False))
        if len(self.snapshots):
            parts += self._snapshots_markdown()
        parts += self.disagreement_lines()
        if full and self.collapsed is not None and len(self.collapsed):
            parts += ["", "## Collapsed classes", "", "Dice 0 on every validation case where the class or region is "
                      "present; when: the epoch after which the per-epoch pseudo Dice of that class stayed at or "
                      f"below {convergence.COLLAPSE_THRESHOLD:g} to the end, or never learned (never above it). Lost "
                      "in: training when the class is lost too in the fold's validation without test-time mirroring "
                      "(`validation_nomirror/summary.json`), mirroring when it is found there (Dice without "
                      "mirroring: its mean over the cases that have it).", ""]
            columns = [c for c in ("trainer", "seed", "fold", "class_or_region", "cases_present", "when", "lost_in",
                                   "dice_unmirrored") if c in self.collapsed]
            frame = self.collapsed[columns].copy()
            if "dice_unmirrored" in frame:
                frame["dice_unmirrored"] = frame["dice_unmirrored"].map(fmt)
            parts.append(frame.rename(columns={"class_or_region": "class / region", "cases_present": "cases with it",
                                               "lost_in": "lost in", "dice_unmirrored": "Dice without mirroring"}
                                      ).to_markdown(index=False))
        parts += ["", "## Convergence", "", f"Criterion: {convergence.CRITERION}."]
        if full:
            parts += ["", self._convergence_markdown(), "", "## Loss settings of each run", ""]
            parts += self._settings_lines()
        if self.notes:
            parts += ["", "## Missing or left out", ""] + [f"- {n}" for n in condense(self.notes)]
        return "\n".join(parts)

    def boundary_lines(self, metric: str) -> List[str]:
        """What a boundary metric rests on, above its table: implementation, units, tolerance, empty cases."""
        b = self.boundary or {}
        if metric == "HD95":
            return [f"95th-percentile Hausdorff distance in mm, from the exported validation predictions and nnU-Net's "
                    f"gt_segmentations in the image spacing ({b.get('implementation', 'MONAI')}: "
                    f"compute_hausdorff_distance, percentile 95). Class in neither mask: undefined, left out of the "
                    f"means; in only one of them: the image diagonal in mm (worst case).", ""]
        if metric == "NSD":
            return [f"Normalised surface Dice at a tolerance of {b.get('nsd_tolerance_mm', float('nan')):g} mm "
                    f"(share of both boundaries within the tolerance of the other, image spacing; "
                    f"{b.get('implementation', 'MONAI')}: compute_surface_dice). Class in neither mask: undefined, "
                    f"left out of the means; in only one of them: 0.", ""]
        return []

    def calibration_lines(self) -> List[str]:
        """The section "Calibration": what ECE and Brier rest on (probabilities, population, bins), their tables and
        the links to the reliability diagrams; one line when no run saved probabilities; nothing when switched off."""
        c = self.calibration or {}
        if not c:
            return []
        parts = ["", "## Calibration", ""]
        shown = [m for m in CALIBRATION_METRICS if m in self.metrics]
        if not shown:
            return parts + ["No run saved its validation probabilities (`validation/<case>.npz`): ECE and Brier not "
                            "computed (train or validate with `crossval --npz`, nnU-Net's `--npz`)."]
        runs = int(c.get("runs_with_probabilities", 0)) + int(c.get("runs_without", 0))
        parts.append(
            f"Expected calibration error (ECE) and Brier score per case and class/region, one-vs-rest: the probability "
            f"nnU-Net's final validation saved for the class (`validation/<case>.npz`, `--npz`; an evaluation region "
            f"sums its labels' probabilities, a region-trained dataset's region has its own channel) against \"the "
            f"reference voxel is the class\". **Population**: "
            f"{c['population']} (sample seed: {c['sample_seed']}). **ECE**: {c['bins']} bins, {c['binning']}; the sum "
            f"over bins of the bin's share of the population times |mean probability - observed frequency|. **Brier**: "
            f"the mean squared difference between probability and outcome. Both are probabilities (no unit, 0 to 1; "
            f"lower is better); a class in neither mask has no population and is left out of the means. From "
            f"{int(c.get('runs_with_probabilities', 0))} of {_count(runs, 'run')}"
            + (" (the others saved no probabilities). " if c.get("runs_without") else ". ") +
            "Cells as in the tables above; the best (lowest) in bold.")
        for metric in shown:
            parts += ["", f"### {metric_heading(metric)}", "",
                      summary_markdown(self.table, metric, self.trainers, self.classes)]
        if self.reliability_plots:
            links = ", ".join(f"[{t}]({f})" for t, f in self.reliability_plots.items())
            parts += ["", f"Reliability diagrams (observed frequency against mean predicted probability per equal-mass "
                          f"bin, pooled over each trainer's compared cases and seeds, one line per class; the diagonal "
                          f"is a calibrated prediction; bins in `reliability.csv`): {links}."]
            parts += [""] + [f"![reliability, {t}]({f})" for t, f in self.reliability_plots.items()]
        return parts

    def disagreement_lines(self) -> List[str]:
        """The section "Where the trainers disagree": how the cases and slices were chosen, and per class its pictures
        with each trainer's Dice on the case."""
        if not self.pictures_asked:
            return []
        parts = ["", "## Where the trainers disagree", ""]
        seeded = self.seed_counts != [1]
        parts.append(
            f"Per class/region, the {_count(self.pictures_asked, 'case')} with the largest spread (max - min) of the "
            f"per-case Dice between the trainers (a Dice undefined because the class is in neither mask counts as 1; "
            f"cases without spread are not drawn)"
            + (", each trainer on its runs of one seed, its lowest" if seeded else "")
            + ". Each picture shows the slice along the first axis with the most voxels where the trainers' masks of "
              "the class are not all equal (a 2D image: the image itself), the raw image (`imagesTr`, first channel), "
              "the reference contour (thick solid line) and each trainer's contour (Okabe-Ito colours, distinct line "
              "styles and widths), with each trainer's Dice on that case.")
        if self.pictures_not_drawn:
            shown = "; ".join(self.pictures_not_drawn[:6])
            more = f" and {len(self.pictures_not_drawn) - 6} more" if len(self.pictures_not_drawn) > 6 else ""
            parts += ["", f"Not drawn: {shown}{more}."]
        if not self.pictures:
            return parts + ([] if self.pictures_not_drawn else ["", "No case on which the trainers' Dice differ."])
        for c in [c for c in self.classes if any(p["class_or_region"] == c for p in self.pictures)]:
            parts += ["", f"### {c}", ""]
            for p in (p for p in self.pictures if p["class_or_region"] == c):
                dice = ", ".join(f"{t} {fmt(p['dice'].get(t))}" for t in self.trainers)
                where = f"slice index {p['slice']} of {p['slices']} (first axis)" if p["slices"] > 1 else "2D"
                seeds = (", seeds " + ", ".join(f"{t} {p['seeds'][t]}" for t in self.trainers)) if seeded else ""
                notes = []
                if p["image_missing"]:
                    notes.append(f"{p['image_missing']}: drawn on the reference alone")
                if p["predictions_missing"]:
                    notes.append(f"no exported prediction of {', '.join(p['predictions_missing'])}")
                parts.append(f"- {p['case']} (Dice spread {fmt(p['spread'])}; {where}{seeds}): Dice {dice}"
                             + (f" ({'; '.join(notes)})" if notes else "") + f"  \n  ![{c}, {p['case']}]({p['file']})")
        return parts

    def _runs_markdown(self) -> str:
        columns = [c for c in ("trainer", "seeds", "folds", "budget", "loss", "settings", "converged", "collapsed")
                   if c in self.per_trainer]
        frame = self.per_trainer[columns].rename(columns={"budget": "epochs x iterations (val)",
                                                          "converged": "converged (criterion below)"})
        if "collapsed" in frame:
            frame["collapsed"] = frame["collapsed"].replace("", "none")
        return frame.to_markdown(index=False)

    def _cost_markdown(self) -> List[str]:
        """Per trainer, mean over its runs of the recorded cost; n/a where not recorded."""
        c = self.cost

        def ratio(v) -> str:
            return f"{v:.2f}x" if pd.notna(v) and math.isfinite(v) else "n/a"

        def present(v) -> bool:  # an ensemble's runs record no cost: None, or NaN once in the table
            return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""

        def _or_na(v) -> str:
            return str(v) if present(v) else "n/a"

        frame = pd.DataFrame({
            "trainer": c["trainer"], "device": c["device"].fillna("n/a"),
            "wall time (s)": c["wall_seconds"].map(lambda v: fmt(v, 0)),
            f"vs {self.baseline}": c["wall_seconds_vs_baseline"].map(ratio),
            "iterations/s": c["iterations_per_second"].map(lambda v: fmt(v, 2)),
            "it/s vs baseline": c["iterations_per_second_vs_baseline"].map(ratio),
            "peak memory (MB)": [f"{fmt(v, 0)}" + (f" ({k})" if k and fmt(v, 0) != "n/a" else "")
                                 for v, k in zip(c["peak_memory_mb"], c["peak_memory_kind"])],
            "memory vs baseline": c["peak_memory_mb_vs_baseline"].map(ratio),
            "jobs x threads": [f"{_or_na(j)} x {_or_na(t)}" if present(j) or present(t) else "n/a"
                               for j, t in zip(c["jobs"], c["torch_threads"])],
        })
        return ["Mean over each trainer's runs (folds and seeds) of the cost recorded in `nnunet_mcc_log.json`; "
                "wall time depends on how many runs shared the machine (jobs x threads).", "",
                frame.to_markdown(index=False)]

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

        frame = pd.DataFrame({"metric": shown["metric"].map(metric_heading), "class/region": shown["class_or_region"],
                              "trainer": shown["trainer"], "pairs": shown["n_pairs"],
                              "median diff": shown["median_difference"].map(fmt), "p": shown["p"].map(fmt_p),
                              "p (Holm)": shown.apply(mark, axis=1) if len(shown) else []})
        if "above_training_noise" in shown:
            frame["mean diff"] = shown["mean_difference"].map(fmt)
            frame["noise threshold"] = shown["noise_threshold"].map(fmt)
            frame["above training noise"] = [("not measured" if v is None or (isinstance(v, float) and math.isnan(v))
                                              else "yes" if v else "no") for v in shown["above_training_noise"]]
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
                folds = " ".join(str(f) for f in sorted(set(group["fold"])))
                runs = list(dict.fromkeys(group["run"])) if "run" in group else [trainer]
                who = trainer if runs == [trainer] else ", ".join(runs)
                lines.append(f"- {who} (folds {folds}): {loss}; settings `{settings}`")
        return lines

    def _convergence_markdown(self) -> str:
        columns = [c for c in ("trainer", "seed", "fold", "epochs_logged", "converged", "convergence", "log_source")
                   if c in self.runs]
        frame = self.runs[columns].copy()
        if "seed" in frame:
            frame["seed"] = frame["seed"].map(lambda v: "unrecorded" if v is None or pd.isna(v) else str(int(v)))
        frame["log_source"] = frame["log_source"].fillna("none")
        if "epochs_logged" in frame:  # none for an ensemble
            frame["epochs_logged"] = frame["epochs_logged"].map(lambda v: "" if v is None or pd.isna(v) else str(int(v)))
        return frame.rename(columns={"epochs_logged": "epochs logged", "log_source": "curve from"}).to_markdown(
            index=False)

    def summary_markdown_all(self, metrics: Sequence[str]) -> str:
        return "\n\n".join(f"## {metric_heading(m)}\n\n" + summary_markdown(self.table, m, self.trainers, self.classes)
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
