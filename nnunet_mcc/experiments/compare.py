"""``nnunet-mcc compare``: compare trainers from their cross-validation results.

Reads each fold's ``validation/summary.json`` (nnU-Net's own evaluation of the fold's validation cases)
and writes into the report folder:

* ``per_case.csv``: one row per trainer, case and class/region: TP/FP/FN/TN, Dice, IoU, MCC (from counts);
* ``summary_table.{md,csv,tex}``: mean ± std over cases (± std of the fold means) per class/region and
  trainer, best in bold;
* ``wilcoxon.csv``: paired two-sided Wilcoxon signed-rank tests of every trainer against the baseline on
  the same cases, Holm-corrected over all comparisons of a metric;
* ``bootstrap_ranks.csv``: rank stability (rank by mean on bootstrap samples of the cases);
* ``snapshots.csv``: Dice/MCC after several training lengths, from ``checkpoint_epoch_<N>.pth`` snapshots
  validated with nnU-Net's own ``nnUNetv2_train --val`` (results cached next to the snapshot);
* ``plots/``: per-case distributions and learning curves; ``report.md``: everything above in one page.

Only cases that every compared trainer has are compared (tables and tests alike); what is missing is said.
"""

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import report, results, stats

METRICS = ("Dice", "IoU", "MCC")
TESTED_METRICS = ("Dice", "MCC")
FOREGROUND_MEAN = "foreground mean"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("--baseline", help="trainer the others are tested against (default: the first of -tr)")
    parser.add_argument("-o", "--output", help="report folder (default: $nnUNet_results/<dataset>/"
                                               "nnunet_mcc_comparison_<plans>_<configuration>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="do not validate checkpoint_epoch_<N>.pth snapshots (no 'score after N epochs' table)")
    parser.add_argument("-device", "--device", default=None,
                        help="device for validating snapshots (default: cuda if available, else cpu)")


def run(args) -> int:
    comparison = compare(args.dataset, args.configuration, args.trainers, plans=args.plans, folds=args.folds,
                         baseline=args.baseline, output=args.output, bootstrap=args.bootstrap,
                         plots=not args.no_plots, snapshots=not args.no_snapshots, device=args.device)
    print(comparison["markdown"])
    print(f"\nReport folder: {comparison['output']}")
    return 0


# ---- collecting -------------------------------------------------------------------------------
def _check_trainer_folders(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                           configuration: str) -> None:
    dataset_results = os.path.join(results_root, dataset_name)
    if not os.path.isdir(dataset_results):
        raise UserError(f"dataset {dataset_name} has no results in {results_root} (train it first, e.g. with "
                        f"nnunet-mcc crossval)")
    for trainer in trainers:
        folder = results.trainer_folder(results_root, dataset_name, trainer, plans, configuration)
        if not os.path.isdir(folder):
            suffix = f"__{plans}__{configuration}"
            present = sorted(n[: -len(suffix)] for n in os.listdir(dataset_results) if n.endswith(suffix))
            raise UserError(f"trainer {trainer!r} has no results folder {folder} (trainers with results for "
                            f"{plans}/{configuration}: {', '.join(present) or 'none'})")


def _rows_of_fold(state: results.FoldState, summary_path: str, context: dict,
                  snapshot_epoch: Optional[int] = None) -> List[results.CaseMetrics]:
    rows = results.read_summary(summary_path, state.trainer, state.fold, context["file_ending"], context["names"],
                                snapshot_epoch)
    if context["regions"]:
        rows += results.region_rows(os.path.dirname(summary_path), context["gt_folder"], context["regions"],
                                    state.trainer, state.fold, context["file_ending"], context["reader_writer"],
                                    context["ignore_label"], snapshot_epoch)
    return rows


def validate_snapshot(dataset_name: str, configuration: str, plans: str, state: results.FoldState, epoch: int,
                      checkpoint: str, device: str) -> Optional[str]:
    """Validate a snapshot checkpoint with nnU-Net's own ``--val`` in a results root of its own, where the
    snapshot stands in as ``checkpoint_final.pth``. Returns the summary.json path, None if it failed."""
    from nnunet_mcc.experiments.crossval import train_executable

    root = os.path.join(state.folder, "snapshot_validation", f"epoch_{epoch}")
    target = results.fold_folder(root, dataset_name, state.trainer, plans, configuration, state.fold)
    summary = os.path.join(target, "validation", "summary.json")
    if os.path.isfile(summary):
        return summary
    os.makedirs(target, exist_ok=True)
    final = os.path.join(target, "checkpoint_final.pth")
    if not os.path.exists(final):
        try:
            os.symlink(os.path.abspath(checkpoint), final)
        except OSError:
            shutil.copyfile(checkpoint, final)
    env = dict(os.environ, nnUNet_results=root)
    cmd = train_executable() + [dataset_name, configuration, str(state.fold), "-tr", state.trainer, "-p", plans,
                                "--val", "-device", device]
    log = os.path.join(target, "validation_log.txt")
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not os.path.isfile(summary):
        print(f"  snapshot epoch {epoch} of {state.trainer} fold {state.fold}: validation failed (see {log})",
              file=sys.stderr)
        return None
    return summary


def collect(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), snapshots: bool = True, device: Optional[str] = None) -> dict:
    """Read every finished fold (and validate snapshots); raise UserError for unusable input."""
    if len(set(trainers)) != len(trainers):
        raise UserError(f"-tr lists a trainer twice: {' '.join(trainers)}")
    dataset_name = results.resolve_dataset(dataset)
    results_root = results.nnunet_folder("results")
    results.load_plans_checked(dataset_name, plans, configuration)
    _check_trainer_folders(results_root, dataset_name, trainers, plans, configuration)
    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    dataset_json = results.read_json(os.path.join(preprocessed, "dataset.json"), "dataset.json")
    labels = dataset_json.get("labels", {})
    label_mode = not any(isinstance(v, (list, tuple)) for v in labels.values())
    regions = results.evaluation_regions(dataset_json) if label_mode else {}
    context = {"file_ending": dataset_json.get("file_ending", ".nii.gz"), "names": results.label_names(dataset_json),
               "regions": regions, "gt_folder": os.path.join(preprocessed, "gt_segmentations"),
               "ignore_label": labels.get("ignore"), "reader_writer": None}
    states = results.survey(results_root, dataset_name, trainers, plans, configuration, folds)
    finished = [s for s in states if s.status == results.FINISHED]
    if not finished:
        raise UserError(f"no finished fold (checkpoint_final.pth + validation/summary.json) for {', '.join(trainers)} "
                        f"on {dataset_name} {configuration} folds {' '.join(map(str, folds))}")
    if regions:
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

        example = next((os.path.join(context["gt_folder"], f) for f in sorted(os.listdir(context["gt_folder"]))
                        if f.endswith(context["file_ending"])), None) if os.path.isdir(context["gt_folder"]) else None
        if example is None:
            raise UserError(f"evaluation regions need the reference segmentations in {context['gt_folder']}, "
                            f"which has none")
        context["reader_writer"] = determine_reader_writer_from_dataset_json(dataset_json, example)()
    rows, snapshot_rows, curves, iterations = [], [], defaultdict(list), {}
    device = device or ("cuda" if _cuda_available() else "cpu")
    for state in finished:
        rows += _rows_of_fold(state, os.path.join(state.folder, "validation", "summary.json"), context)
        curves[state.trainer].append(results.training_curves(state.folder))
        iterations.setdefault(state.trainer, results.iterations_per_epoch(state.folder))
        if snapshots:
            for epoch, checkpoint in state.snapshots.items():
                summary = validate_snapshot(dataset_name, configuration, plans, state, epoch, checkpoint, device)
                if summary:
                    snapshot_rows += _rows_of_fold(state, summary, context, epoch)
    return {"dataset_name": dataset_name, "results_root": results_root, "states": states, "rows": rows,
            "snapshot_rows": snapshot_rows, "curves": dict(curves), "iterations": iterations,
            "regions": regions, "trainers": list(trainers), "configuration": configuration, "plans": plans}


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# ---- analysis ---------------------------------------------------------------------------------
def class_order(rows: Sequence[results.CaseMetrics]) -> List[str]:
    labels = list(dict.fromkeys(r.name for r in rows if r.kind == "label"))
    regions = list(dict.fromkeys(r.name for r in rows if r.kind == "region"))
    return labels + ([FOREGROUND_MEAN] if len(labels) > 1 else []) + regions


def score_matrix(rows: Sequence[results.CaseMetrics], trainers: Sequence[str]) -> Dict:
    """{metric: {class: {trainer: {case: value}}}} plus the per-case foreground mean over the labels
    (nnU-Net's own labels or regions, NaN-aware), and the fold of each (trainer, case)."""
    scores = {m: defaultdict(lambda: defaultdict(dict)) for m in METRICS}
    fold_of = {}
    per_case_labels = {m: defaultdict(list) for m in METRICS}
    for r in rows:
        fold_of[(r.trainer, r.case)] = r.fold
        for m in METRICS:
            value = r.metric(m)
            scores[m][r.name][r.trainer][r.case] = value
            if r.kind == "label":
                per_case_labels[m][(r.trainer, r.case)].append(value)
    n_labels = len({r.name for r in rows if r.kind == "label"})
    if n_labels > 1:
        for m in METRICS:
            for (trainer, case), values in per_case_labels[m].items():
                finite = [v for v in values if math.isfinite(v)]
                scores[m][FOREGROUND_MEAN][trainer][case] = float(np.mean(finite)) if finite else float("nan")
    return {"scores": scores, "fold_of": fold_of}


def common_cases(rows: Sequence[results.CaseMetrics], trainers: Sequence[str]) -> List[str]:
    cases = None
    for t in trainers:
        own = {r.case for r in rows if r.trainer == t}
        cases = own if cases is None else cases & own
    return sorted(cases or [])


def summary_table(matrix: Dict, trainers: Sequence[str], classes: Sequence[str], cases: Sequence[str]) -> List[Dict]:
    table = []
    for m in METRICS:
        for c in classes:
            entries = []
            for t in trainers:
                values = [matrix["scores"][m][c][t].get(case, float("nan")) for case in cases]
                over_cases = stats.mean_std(values)
                by_fold = defaultdict(list)
                for case, v in zip(cases, values):
                    by_fold[matrix["fold_of"].get((t, case))].append(v)
                fold_means = [stats.mean_std(v)["mean"] for _, v in sorted(by_fold.items(), key=lambda kv: str(kv[0]))]
                over_folds = stats.mean_std(fold_means)
                entries.append({"metric": m, "class_or_region": c, "trainer": t, "n_cases": over_cases["n"],
                                "mean": over_cases["mean"], "std_cases": over_cases["std"],
                                "n_folds": over_folds["n"], "mean_of_fold_means": over_folds["mean"],
                                "std_folds": over_folds["std"], "best": False})
            finite = [e["mean"] for e in entries if math.isfinite(e["mean"])]
            for e in entries:
                e["best"] = bool(finite) and math.isfinite(e["mean"]) and e["mean"] == max(finite)
            table += entries
    return table


def paired_tests(matrix: Dict, trainers: Sequence[str], baseline: str, classes: Sequence[str],
                 cases: Sequence[str]) -> List[Dict]:
    tests = []
    for m in TESTED_METRICS:
        block = []
        for t in trainers:
            if t == baseline:
                continue
            for c in classes:
                x = [matrix["scores"][m][c][t].get(case, float("nan")) for case in cases]
                y = [matrix["scores"][m][c][baseline].get(case, float("nan")) for case in cases]
                result = stats.wilcoxon_paired(x, y)
                block.append({"metric": m, "class_or_region": c, "trainer": t, "baseline": baseline,
                              "n_pairs": result["n"], "median_difference": result["median_difference"],
                              "p": result["p"]})
        for entry, adjusted in zip(block, stats.holm([e["p"] for e in block])):
            entry["p_holm"] = adjusted
            entry["significant_0.05"] = bool(math.isfinite(adjusted) and adjusted < 0.05)
        tests += block
    return tests


def rank_stability(matrix: Dict, trainers: Sequence[str], classes: Sequence[str], cases: Sequence[str],
                   n_samples: int) -> List[Dict]:
    out = []
    for m in TESTED_METRICS:
        for c in classes:
            scores = np.array([[matrix["scores"][m][c][t].get(case, float("nan")) for t in trainers]
                               for case in cases])
            if scores.size == 0:
                continue
            ranks = stats.bootstrap_ranks(scores, n_samples=n_samples)
            for i, t in enumerate(trainers):
                out.append({"metric": m, "class_or_region": c, "trainer": t, "rank": int(ranks["full_rank"][i]),
                            "mean_bootstrap_rank": float(ranks["mean_rank"][i]),
                            "p_rank_1": float(ranks["frequency"][i, 0]),
                            "rank_frequencies": " ".join(f"{f:.3f}" for f in ranks["frequency"][i]),
                            "kendall_tau_median": ranks["kendall_tau"]})
    return out


def snapshot_table(snapshot_rows: Sequence[results.CaseMetrics], final_rows: Sequence[results.CaseMetrics],
                   trainers: Sequence[str], curves: Dict, iterations: Dict) -> List[Dict]:
    """Mean foreground Dice/MCC (over labels, then cases) per trainer after each snapshot epoch and at the end."""
    if not snapshot_rows:
        return []
    out = []
    final_epochs = {t: max((len(c["mean_fg_dice"]) for c in curves.get(t, []) if c), default=None) for t in trainers}
    grouped = defaultdict(list)
    for r in snapshot_rows:
        grouped[(r.trainer, r.snapshot_epoch)].append(r)
    for r in final_rows:
        grouped[(r.trainer, final_epochs.get(r.trainer))].append(r)
    for (trainer, epoch), group in sorted(grouped.items(), key=lambda kv: (trainers.index(kv[0][0]), kv[0][1] or 0)):
        labels = [r for r in group if r.kind == "label"]
        entry = {"trainer": trainer, "epoch": epoch, "iterations": (epoch * iterations[trainer])
                 if epoch and iterations.get(trainer) else None, "n_cases": len({r.case for r in labels})}
        for m in TESTED_METRICS:
            per_case = defaultdict(list)
            for r in labels:
                per_case[r.case].append(r.metric(m))
            entry[m] = stats.mean_std([np.nanmean(v) if np.isfinite(v).any() else float("nan")
                                       for v in per_case.values()])["mean"]
        out.append(entry)
    return out


# ---- the whole comparison ---------------------------------------------------------------------
def compare(dataset: str, configuration: str, trainers: Sequence[str], plans: str = "nnUNetPlans",
            folds: Sequence[int] = (0, 1, 2, 3, 4), baseline: Optional[str] = None, output: Optional[str] = None,
            bootstrap: int = 1000, plots: bool = True, snapshots: bool = True, device: Optional[str] = None) -> dict:
    trainers = list(trainers)
    baseline = baseline or trainers[0]
    if baseline not in trainers:
        raise UserError(f"--baseline {baseline!r} is not one of the compared trainers ({' '.join(trainers)})")
    if bootstrap < 1:
        raise UserError(f"--bootstrap must be a positive number of samples, got {bootstrap}")
    data = collect(dataset, configuration, trainers, plans, folds, snapshots, device)
    output = os.path.abspath(output or os.path.join(data["results_root"], data["dataset_name"],
                                                    f"nnunet_mcc_comparison_{plans}_{configuration}"))
    rows = data["rows"]
    notes = [f"{s.trainer} fold {s.fold}: {s.status}" for s in data["states"] if s.status != results.FINISHED]
    with_results = [t for t in trainers if any(r.trainer == t for r in rows)]
    if len(with_results) < len(trainers):
        missing = [t for t in trainers if t not in with_results]
        raise UserError(f"no finished fold for {', '.join(missing)}: nothing to compare it on")
    cases = common_cases(rows, trainers)
    all_cases = sorted({r.case for r in rows})
    if len(cases) < len(all_cases):
        notes.append(f"{len(all_cases) - len(cases)} of {len(all_cases)} cases are left out because not every "
                     f"trainer has them: {' '.join(sorted(set(all_cases) - set(cases)))}")
    if not cases:
        raise UserError("no case has results from every compared trainer (their finished folds do not overlap)")
    classes = class_order(rows)
    matrix = score_matrix(rows, trainers)
    table = summary_table(matrix, trainers, classes, cases)
    tests = paired_tests(matrix, trainers, baseline, classes, cases)
    ranks = rank_stability(matrix, trainers, classes, cases, bootstrap)
    snap = snapshot_table(data["snapshot_rows"], rows, trainers, data["curves"], data["iterations"])
    markdown = _markdown(data, table, tests, ranks, snap, trainers, baseline, classes, cases, notes)
    _write_report(output, data, table, tests, ranks, snap, matrix, trainers, classes, cases, markdown, plots)
    printed = _markdown(data, table, tests, ranks, snap, trainers, baseline, classes, cases, notes, full=False)
    return {"output": output, "markdown": printed, "full_markdown": markdown, "table": table, "tests": tests, "ranks": ranks,
            "snapshots": snap, "cases": cases, "classes": classes, "notes": notes, "rows": rows}


def _markdown(data, table, tests, ranks, snap, trainers, baseline, classes, cases, notes, full=True) -> str:
    """The report page; ``full=False`` (what is printed) keeps only the headline row of the tests."""
    folds = sorted({s.fold for s in data["states"]})
    parts = [f"# Loss comparison: {data['dataset_name']}, {data['configuration']} ({data['plans']})", "",
             f"{len(cases)} cross-validation cases (folds {' '.join(map(str, folds))}) that every trainer has. "
             "Cells: mean ± std over cases (± std of the fold means); best in bold."]
    if notes:
        parts += ["", "**Missing or left out:**", ""] + [f"- {n}" for n in notes]
    for m in TESTED_METRICS:
        parts += ["", f"## {m}", "", report.summary_markdown(table, m, trainers, classes)]
    if len(trainers) > 1:
        headline = FOREGROUND_MEAN if FOREGROUND_MEAN in classes else classes[0]
        parts += ["", f"## Paired Wilcoxon signed-rank tests against {baseline} (Holm-corrected per metric over "
                      f"trainers x classes; * p < 0.05)", ""]
        shown = tests if full else [t for t in tests if t["class_or_region"] == headline]
        rows = [[t["metric"], t["class_or_region"], t["trainer"], t["n_pairs"], report.fmt(t["median_difference"]),
                 report.fmt_p(t["p"]), report.fmt_p(t["p_holm"]) + (" *" if t["significant_0.05"] else "")]
                for t in shown]
        parts.append(report.markdown_table(["metric", "class/region", "trainer", "pairs", "median diff", "p",
                                            "p (Holm)"], rows))
        if not full:
            parts.append(f"\n(only '{headline}' shown; every class and region: report.md, wilcoxon.csv)")
        parts += ["", f"## Rank stability ({headline}, bootstrap over cases)", ""]
        rows = [[r["metric"], r["trainer"], r["rank"], report.fmt(r["mean_bootstrap_rank"], 2),
                 report.fmt(r["p_rank_1"], 2)] for r in ranks if r["class_or_region"] == headline]
        parts.append(report.markdown_table(["metric", "trainer", "rank", "mean bootstrap rank", "P(rank 1)"], rows))
    if snap:
        parts += ["", "## Score after N epochs (validation of snapshot checkpoints, foreground mean)", ""]
        rows = [[s["trainer"], s["epoch"], s["iterations"] or "n/a", s["n_cases"], report.fmt(s["Dice"]),
                 report.fmt(s["MCC"])] for s in snap]
        parts.append(report.markdown_table(["trainer", "epoch", "iterations", "cases", "Dice", "MCC"], rows))
    return "\n".join(parts)


def _write_report(output, data, table, tests, ranks, snap, matrix, trainers, classes, cases, markdown, plots):
    """Write everything into a fresh folder beside ``output``, then swap it in: never a half-written report."""
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
    try:
        per_case = []
        for r in data["rows"] + data["snapshot_rows"]:
            per_case.append({"trainer": r.trainer, "fold": r.fold, "case": r.case, "class_or_region": r.name,
                             "key": r.key, "kind": r.kind,
                             "epoch": r.snapshot_epoch if r.snapshot_epoch is not None else "final",
                             "TP": r.tp, "FP": r.fp, "FN": r.fn, "TN": r.tn,
                             "Dice": r.dice, "IoU": r.iou, "MCC": r.mcc})
        report.write_csv(os.path.join(tmp, "per_case.csv"), per_case)
        report.write_csv(os.path.join(tmp, "summary_table.csv"), table)
        with open(os.path.join(tmp, "summary_table.md"), "w") as f:
            f.write("\n\n".join(f"## {m}\n\n" + report.summary_markdown(table, m, trainers, classes)
                                for m in METRICS) + "\n")
        with open(os.path.join(tmp, "summary_table.tex"), "w") as f:
            f.write(report.summary_latex(table, METRICS, trainers, classes,
                                         f"{data['dataset_name']} {data['configuration']}: mean $\\pm$ std over "
                                         f"{len(cases)} cross-validation cases"))
        if tests:
            report.write_csv(os.path.join(tmp, "wilcoxon.csv"), tests)
        report.write_csv(os.path.join(tmp, "bootstrap_ranks.csv"), ranks)
        if snap:
            report.write_csv(os.path.join(tmp, "snapshots.csv"), snap)
        if plots:
            os.makedirs(os.path.join(tmp, "plots"))
            for m in TESTED_METRICS:
                per_class = {c: {t: [matrix["scores"][m][c][t].get(case, float("nan")) for case in cases]
                                 for t in trainers} for c in classes}
                report.plot_distributions(os.path.join(tmp, "plots", f"per_case_{m.lower()}.png"), per_class,
                                          trainers, classes, m)
            curves = {t: [c for c in data["curves"].get(t, []) if c] for t in trainers}
            if any(curves.values()):
                report.plot_learning_curves(os.path.join(tmp, "plots", "learning_curves.png"), curves)
            markdown += "\n\n## Plots\n\n" + "\n".join(f"![{n}](plots/{n})" for n in sorted(os.listdir(
                os.path.join(tmp, "plots"))))
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(markdown + "\n")
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
