"""The comparison's report folder written: the tables (CSV, Markdown, LaTeX), the plots, the reliability diagrams,
the pictures and ``report.md``, into a fresh folder that replaces the old one only when complete."""

import os
from typing import Sequence

import pandas as pd

from nnunet_mcc.experiments import ensemble as ensemble_module
from nnunet_mcc.experiments import report, results
from nnunet_mcc.experiments.collect import Collected
from nnunet_mcc.experiments.collect_dataset import FINAL, metric_columns
from nnunet_mcc.experiments.compare_stats import seed_average
from nnunet_mcc.experiments.plots import (plot_disagreement, plot_distributions, plot_learning_curves,
                                          plot_reliability)
from nnunet_mcc.fileio import atomic_folder


def write_report(output: str, data: Collected, tidy: pd.DataFrame, page: "report.Page", markdown: str,
                 plots: bool, ensembles: Sequence["ensemble_module.EnsembleRun"] = ()) -> None:
    """Everything into a fresh folder that replaces ``output`` only when complete (``fileio.atomic_folder``), with
    the ensemble folds this comparison used carried over (``ensemble.carry``)."""
    with atomic_folder(output, "comparison report") as tmp:
        ensemble_module.carry(output, tmp, ensembles)
        per_case = data.counts.copy()
        per_case["epoch"] = per_case["epoch"].astype("Int64")
        columns = ["trainer", "run", "seed", "fold", "stage", "epoch", "iterations", "case", "class_or_region", "key",
                   "kind",
                   *results.COUNTS, *metric_columns(data.counts)]
        report.write_frame(os.path.join(tmp, "per_case.csv"), per_case[columns])
        report.write_frame(os.path.join(tmp, "summary_table.csv"), page.table)
        tabled = metric_columns(data.counts)
        report.write_text_file(os.path.join(tmp, "summary_table.md"), page.summary_markdown_all(tabled))
        report.write_text_file(os.path.join(tmp, "summary_table.tex"), page.summary_latex(tabled))
        if len(page.tests):
            report.write_frame(os.path.join(tmp, "wilcoxon.csv"), page.tests)
        report.write_frame(os.path.join(tmp, "bootstrap_ranks.csv"), page.ranks)
        report.write_frame(os.path.join(tmp, "runs.csv"), data.runs)
        if len(page.cost):
            report.write_frame(os.path.join(tmp, "cost.csv"), page.cost)
        if len(page.collapsed):
            report.write_frame(os.path.join(tmp, "collapsed.csv"), page.collapsed)
        report.write_frame(os.path.join(tmp, "class_loss.csv"), page.class_loss)
        if len(data.curves):
            report.write_frame(os.path.join(tmp, "learning_curves.csv"), data.curves)
        if len(page.snapshots):
            report.write_frame(os.path.join(tmp, "snapshots.csv"), page.snapshots)
        if len(page.reliability):
            report.write_frame(os.path.join(tmp, "reliability.csv"), page.reliability)
        write_pictures(tmp, page)
        if plots:
            os.makedirs(os.path.join(tmp, "plots"))
            final = seed_average(tidy[(tidy["stage"] == FINAL) & tidy["case"].isin(page.cases)])
            for metric in page.metrics:
                plot_distributions(os.path.join(tmp, "plots", f"per_case_{metric.lower()}.png"),
                                          final[final["metric"] == metric], page.trainers, page.classes, metric)
            if len(data.curves):
                plot_learning_curves(os.path.join(tmp, "plots", "learning_curves.png"), data.curves,
                                            page.trainers)
            markdown += "\n\n## Plots\n\n" + "\n".join(
                f"![{n}](plots/{n})" for n in sorted(os.listdir(os.path.join(tmp, "plots"))))
        report.write_text_file(os.path.join(tmp, "report.md"), markdown + "\n")


def write_pictures(folder: str, page: "report.Page") -> None:
    """The reliability diagrams and the pictures of the cases where the trainers disagree, at the paths the page
    links them from."""
    for trainer, file in page.reliability_plots.items():
        os.makedirs(os.path.dirname(os.path.join(folder, file)), exist_ok=True)
        plot_reliability(os.path.join(folder, file), page.reliability[page.reliability["trainer"] == trainer],
                         trainer, page.classes, page.calibration.get("bins"))
    for picture in page.pictures:
        os.makedirs(os.path.dirname(os.path.join(folder, picture["file"])), exist_ok=True)
        plot_disagreement(os.path.join(folder, picture["file"]), picture, page.trainers)
