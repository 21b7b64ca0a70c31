"""``nnunet-mcc compare``: compare trainers from their cross-validation results, reading only.

Reads what nnU-Net's own tools read, each fold's ``validation/summary.json`` (checkpoints are not needed),
plus what says how the fold was trained: nnU-Net's ``debug.json`` (the budget, for any trainer), this
package's ``nnunet_mcc_provenance.json`` (loss settings), the per-epoch validation series
(``nnunet_mcc_log.json``, else the checkpoint's ``logging``) and the snapshot validations written during
training (``snapshots/epoch_<N>/summary.json``), and for a run with a collapsed class its validation without
test-time mirroring (``validation_nomirror/summary.json``, written by ``mirroring.validate_without_mirroring``)
when present. From the predictions the final validation exports (``validation/<case><file_ending>``) and the
dataset's ``gt_segmentations`` it also computes the boundary metrics HD95 (mm) and NSD (``--nsd-tolerance`` mm,
``nnunet_mcc.metrics``), tested and ranked as Dice and MCC in each metric's direction (``metrics.METRIC_INFO``);
folds without predictions get a note. From the class probabilities the final validation saves with ``--npz``
(``validation/<case>.npz``) it computes the calibration metrics ECE (``--calibration-bins`` equal-mass bins) and
Brier score the same way, with a reliability diagram per trainer (``--no-calibration`` skips them); and it draws,
per class, the cases on which the trainers' Dice differ most (``--pictures N``, ``disagreement_cases``). It never
starts a training or validation process.

Everything is built on one tidy table (trainer, fold, case, class or region, training stage, metric,
value): group-by and pivots give the tables, scipy the paired Wilcoxon tests, statsmodels the Holm
correction. Runs of different budgets are not paired unless asked for (``--allow-mixed-budgets``); every
run's convergence is judged from its logged curves (``convergence.py``) and a comparison with any
unconverged run says first that it measures training speed, not final quality.

Training seeds: a trainer's runs are its seed folders ``<trainer>_seed<S>`` when it has any (else its
unsuffixed folder); each case's score is averaged over the seeds before the paired tests, the spread over
seeds is reported beside the fold spread, and a pair is "above training noise" only when the Holm-corrected
test passes and the mean difference exceeds 2 sqrt((s_A^2 + s_B^2) / n_seeds). Different seed sets between
trainers (``--allow-mixed-seeds``) and different settings identities within a trainer
(``--allow-mixed-settings``) are refused like mixed budgets. Collapsed classes (Dice 0 on every validation
case that has them) and the recorded training cost are reported per run and trainer; the class-loss rate (runs that
lost a class / runs) of every trainer heads the report, and a pair's difference is split into the part that goes
with the runs that lost a class and the rest (``lost_class_split``).

The command line builds one ``compare_request.CompareRequest`` (checked once) and ``execute`` runs it: read
(``collect``), compute (``compare_stats``, ``compare_tables``, ``compare_figures``), lay out (``report``) and write
(``report_files``).

Written into the report folder (replaced as a whole, never half-written): ``per_case.csv``,
``summary_table.{md,csv,tex}``, ``wilcoxon.csv``, ``bootstrap_ranks.csv``, ``runs.csv`` (seed, budget,
settings, convergence, collapsed classes, cost per run), ``cost.csv``, ``collapsed.csv`` (with whether each class was
lost in training or by mirroring), ``class_loss.csv`` (each trainer's class-loss rate),
``learning_curves.csv``, ``snapshots.csv``, ``plots/`` and ``report.md``.

Ensembles (``--ensemble A+B``, ``all``): the members' saved validation probabilities averaged per fold and seed by
nnU-Net's ensembling and scored by its evaluation (``ensemble.py``), written under the report folder's
``ensembles/`` (never into the trainers' folders), then read as one more trainer.
"""


import argparse
import os
from typing import List, Optional, Sequence

from nnunet_mcc.errors import UserError
from nnunet_mcc.plans import add_planner_argument
from nnunet_mcc.experiments import auto_budget as auto_budget_module
from nnunet_mcc.experiments import report, results
from nnunet_mcc.experiments import ensemble as ensemble_module
from nnunet_mcc.experiments.collect import Collected, collect
from nnunet_mcc.experiments.collect_dataset import FINAL
from nnunet_mcc.experiments.compare_figures import (disagreement_cases, disagreement_pictures, reliability_plot_files,
                                                    reliability_table)
from nnunet_mcc.experiments.compare_request import DEFAULT_PICTURES, CompareRequest
from nnunet_mcc.experiments.compare_stats import (FOREGROUND_MEAN, class_order, common_cases, lost_class_split,
                                                  paired_tests, rank_stability, seed_average, snapshot_table,
                                                  summary_table, tested_metrics, tidy_scores)
from nnunet_mcc.experiments.compare_tables import class_loss_table, cost_table, projected_gains, trainer_runs
from nnunet_mcc.experiments.report_files import write_report
from nnunet_mcc.metrics import DEFAULT_CALIBRATION_BINS, DEFAULT_NSD_TOLERANCE_MM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    add_planner_argument(parser)
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("--baseline", help="trainer the others are tested against (default: the first of -tr)")
    parser.add_argument("--ensemble", action="append", metavar="A+B",
                        help="also compare the ensemble of these trainers of -tr (joined by '+'; repeatable; 'all': "
                             "every compared trainer): per fold and seed nnU-Net's validation probabilities (--npz) "
                             "averaged, exported and scored by nnU-Net's ensembling and evaluation, written under "
                             "the report folder's ensembles/ and reused while their inputs are unchanged")
    parser.add_argument("--ensemble-processes", type=int, default=ensemble_module.DEFAULT_PROCESSES, metavar="N",
                        help="worker processes of nnU-Net's ensembling and evaluation (default %(default)s; 0: in "
                             "this process, case after case)")
    parser.add_argument("-o", "--output", help="report folder (default: $nnUNet_results/<dataset>/"
                                               "nnunet_mcc_comparison_<plans>_<configuration>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")
    parser.add_argument("--allow-mixed-budgets", action="store_true",
                        help="pair runs trained with different budgets (epochs, iterations per epoch, validation "
                             "iterations) or an unknown one; the budgets are then shown first in the report")
    parser.add_argument("--allow-mixed-seeds", action="store_true",
                        help="pair trainers whose training seeds differ (their seed folders <trainer>_seed<S>, or "
                             "the seed an unsuffixed folder records); the seeds are then shown first in the report")
    parser.add_argument("--allow-mixed-settings", action="store_true",
                        help="pair the folds and seeds of a trainer although they were trained with different "
                             "loss settings (their recorded identity); the differences are listed in the report")
    parser.add_argument("--auto-budget", nargs="?", const="", metavar="RECORD",
                        help="compare each trainer at the budget crossval --auto-budget found its runs converged at "
                             "(its record, default $nnUNet_results/<dataset>/nnunet_mcc_auto_budget_<plans>_"
                             "<configuration>.json); the first lines say which budget each trainer is compared at")
    parser.add_argument("--same-budget", action="store_true",
                        help="with --auto-budget: compare every trainer at the largest budget tried (equal cost) "
                             "instead of each at the budget at which its runs converged")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help="tolerance of the normalised surface Dice in mm (default %(default)s)")
    parser.add_argument("--no-boundary", action="store_true",
                        help="skip the boundary metrics (HD95, NSD), which read every exported validation prediction")
    parser.add_argument("--calibration-bins", type=int, default=DEFAULT_CALIBRATION_BINS, metavar="N",
                        help="equal-mass bins of the expected calibration error (default %(default)s)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="skip the calibration metrics (ECE, Brier) and reliability diagrams, which read every "
                             "saved validation probability file (validation/<case>.npz, crossval --npz)")
    parser.add_argument("--pictures", type=int, default=DEFAULT_PICTURES, metavar="N",
                        help="draw, per class/region, the N cases on which the trainers' Dice differ most (default "
                             "%(default)s; 0: none)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the plots, the reliability diagrams and the pictures of --pictures")
    parser.add_argument("--no-snapshots", action="store_true",
                        help="leave out the 'score after N iterations' table of the snapshot validations")



def run(args) -> int:
    comparison = execute(CompareRequest.from_args(args))
    print(comparison["markdown"])
    print(f"\nReport folder: {comparison['output']}")
    return 0


def compare(dataset: str, configuration: str, trainers: Sequence[str], **options) -> dict:
    """``execute`` of the request these make (``CompareRequest``: its fields, by keyword)."""
    return execute(CompareRequest(dataset, configuration, tuple(trainers), **options))


def execute(request: CompareRequest) -> dict:
    """Read, compute, lay out and write the comparison of ``request``; raise UserError for unusable input (the
    report folder is then left as it was). Returns what the report shows, as records, and its DataFrames."""
    choice = auto_budget_choice(request)
    trainers, baseline = list(request.trainers), request.baseline
    specs = ensemble_module.parse(request.ensemble, trainers)
    if choice is not None:  # the runs of each trainer at the chosen budget: nnU-Net's <Trainer>_<N>epochs folders
        trainers, baseline = [choice.compared[t] for t in trainers], choice.compared[baseline]
        specs = ensemble_module.rename(specs, choice.compared)
    ensembles, ensemble_notes, output = build_ensembles(request, specs)
    data = collect(request, trainers, ensembles,
                   allow_mixed_budgets=request.allow_mixed_budgets or (choice is not None and choice.differ))
    trainers = list(data.trainers)  # and the ensembles, after them
    output = os.path.abspath(output or request.default_output(data.results_root, data.dataset_name))
    missing = [t for t in trainers if t not in set(data.runs["trainer"])]
    if missing:
        raise UserError(f"no finished fold for {', '.join(missing)}: nothing to compare it on")
    notes = ensemble_notes + list(data.notes)
    if choice is None:
        notes += auto_budget_module.superseded_notes(data.results_root, data.dataset_name, trainers, request.plans,
                                                     request.configuration)
    computed = statistics(request, data, trainers, baseline, notes)
    page = layout(request, data, computed, notes, choice, ensembles)
    markdown = page.markdown(full=True)
    write_report(output, data, computed["tidy"], page, markdown, request.plots, ensembles)
    return result(output, data, page, markdown, computed, choice, ensembles)


def statistics(request: CompareRequest, data: Collected, trainers: Sequence[str], baseline: str,
               notes: List[str]) -> dict:
    """Every table of the comparison, computed from what ``collect`` read (``notes`` gets the cases left out)."""
    tidy = tidy_scores(data.counts)
    final_all = tidy[tidy["stage"] == FINAL]
    cases = common_cases(final_all, trainers)
    all_cases = sorted(set(final_all["case"]))
    if len(cases) < len(all_cases):
        notes.append(f"{len(all_cases) - len(cases)} of {len(all_cases)} cases are left out because not every "
                     f"trainer (in every seed) has them: {' '.join(sorted(set(all_cases) - set(cases)))}")
    if not cases:
        raise UserError("no case has results from every compared trainer (their finished folds do not overlap)")
    final_runs = final_all[final_all["case"].isin(cases)]
    final = seed_average(final_runs)
    classes = class_order(data.counts)
    table = summary_table(final, trainers, classes, final_runs)
    tests = paired_tests(final, trainers, baseline, classes, table)
    ranks = rank_stability(final_runs, trainers, classes, request.bootstrap)
    snap = snapshot_table(tidy, cases, classes)
    per_trainer = trainer_runs(data.runs, trainers)
    costs = cost_table(data.runs, trainers, baseline)
    class_loss = class_loss_table(data.runs, data.collapsed, trainers, classes)
    tests = lost_class_split(tests, final_runs, data.collapsed)
    unconverged = set(per_trainer.loc[~per_trainer["all_converged"], "trainer"])
    if len(tests):
        tests["caveat_not_converged"] = tests["trainer"].isin(unconverged) | tests["baseline"].isin(unconverged)
    reliability = reliability_table(data.reliability, cases, trainers, classes, request.calibration_bins)
    return {"trainers": list(trainers), "baseline": baseline, "cases": cases, "classes": classes, "notes": notes,
            "tidy": tidy, "table": table, "tests": tests, "ranks": ranks, "snapshots": snap, "final": final,
            "final_runs": final_runs, "trainer_runs": per_trainer, "cost": costs, "class_loss": class_loss,
            "reliability": reliability}


def layout(request: CompareRequest, data: Collected, frames: dict, notes: List[str],
           choice: Optional["auto_budget_module.Choice"], ensembles: Sequence["ensemble_module.EnsembleRun"]
           ) -> "report.Page":
    """The report page of the comparison (``frames``: what ``statistics`` computed), with the pictures of the cases
    where the trainers disagree read."""
    trainers, baseline = frames["trainers"], frames["baseline"]
    classes, reliability = frames["classes"], frames["reliability"]
    chosen = disagreement_cases(frames["final_runs"], trainers, [c for c in classes if c != FOREGROUND_MEAN],
                                request.pictures_drawn)
    drawn, not_drawn = disagreement_pictures(chosen, data, trainers)
    page = report.Page(data.dataset_name, request.configuration, request.plans, trainers, baseline, classes,
                       frames["cases"], sorted({s.fold for s in data.states}), data.runs, frames["trainer_runs"],
                       frames["table"], frames["tests"], frames["ranks"], frames["snapshots"], notes,
                       request.allow_mixed_budgets, frames["cost"], data.collapsed, class_loss=frames["class_loss"],
                       projections=projected_gains(data.runs, trainers),
                       auto_budget=choice.lines if choice is not None else [],
                       metrics=tested_metrics(frames["final"]), boundary=data.boundary)
    page.calibration, page.reliability = data.calibration, reliability
    page.ensembles = ensemble_module.describe(ensembles)
    page.reliability_plots = reliability_plot_files(trainers, reliability, request.plots)
    page.pictures, page.pictures_asked, page.pictures_not_drawn = drawn, request.pictures_drawn, not_drawn
    return page


def result(output: str, data: Collected, page: "report.Page", markdown: str, frames: dict,
           choice: Optional["auto_budget_module.Choice"], ensembles: Sequence["ensemble_module.EnsembleRun"]) -> dict:
    """What ``execute`` returns: the report folder, the printed and the full page, every table as records and as
    DataFrames."""
    table, tests, ranks, snap = frames["table"], frames["tests"], frames["ranks"], frames["snapshots"]
    costs, class_loss, reliability = frames["cost"], frames["class_loss"], frames["reliability"]
    return {"output": output, "ensembles": [ensemble_row(e) for e in ensembles],
            "markdown": page.markdown(full=False), "full_markdown": markdown,
            "table": table.to_dict("records"), "tests": tests.to_dict("records"), "ranks": ranks.to_dict("records"),
            "snapshots": snap.to_dict("records"), "runs": data.runs.to_dict("records"),
            "trainer_runs": frames["trainer_runs"].to_dict("records"), "cases": frames["cases"],
            "classes": frames["classes"], "notes": frames["notes"],
            "cost": costs.to_dict("records"), "collapsed": data.collapsed.to_dict("records"),
            "class_loss": class_loss.to_dict("records"), "boundary": data.boundary,
            "projections": page.projections.to_dict("records"),
            "calibration": data.calibration, "reliability": reliability.to_dict("records"),
            "pictures": [{k: v for k, v in p.items() if k not in ("image", "reference", "masks")}
                         for p in page.pictures],
            "auto_budget": None if choice is None else {"record": choice.record, "compared": choice.compared,
                                                        "epochs": {t: b.num_epochs for t, b in choice.budgets.items()},
                                                        "budgets_differ": choice.differ},
            "frames": {"counts": data.counts, "tidy": frames["tidy"], "table": table, "tests": tests, "ranks": ranks,
                       "snapshots": snap, "runs": data.runs, "curves": data.curves, "final": frames["final"],
                       "final_runs": frames["final_runs"], "cost": costs, "collapsed": data.collapsed,
                       "class_loss": class_loss}}


def build_ensembles(request: CompareRequest, specs: Sequence["ensemble_module.Spec"]):
    """The ensemble folds of ``specs`` built (or reused) under the report folder, the notes on ensembles left out,
    and the report folder (its default place resolved here when there are ensembles to build)."""
    output = request.output
    if not specs:
        return [], [], output
    dataset_name = results.resolve_dataset(request.dataset)
    results_root = results.nnunet_folder("results")
    results.load_plans_checked(dataset_name, request.plans, request.configuration)
    output = os.path.abspath(output or request.default_output(results_root, dataset_name))
    file_ending = ensemble_module.context_file_ending(dataset_name)
    runs, notes = ensemble_module.plan(specs, results_root, dataset_name, request.plans, request.configuration,
                                       request.folds, output, file_ending)
    ensemble_module.build_all(runs, dataset_name, request.plans, request.ensemble_processes)
    return runs, notes, output


def ensemble_row(run: "ensemble_module.EnsembleRun") -> dict:
    """One built ensemble fold, for compare's result."""
    return {"trainer": run.trainer, "run": run.run, "seed": run.seed, "fold": run.fold, "folder": run.folder,
            "members": [m.run for m in run.members], "cases": list(run.cases), "reused": run.reused}


def auto_budget_choice(request: CompareRequest) -> Optional["auto_budget_module.Choice"]:
    """With ``--auto-budget``: which runs of each trainer are compared (``auto_budget.choose``), each compared fold's
    own budget checked against the record; None without it."""
    if request.auto_budget is None:
        return None
    dataset_name = results.resolve_dataset(request.dataset)
    results_root = results.nnunet_folder("results")
    path = request.auto_budget or auto_budget_module.record_path(results_root, dataset_name, request.plans,
                                                                 request.configuration)
    choice = auto_budget_module.choose(path, request.trainers, request.same_budget)
    auto_budget_module.check_compared_budgets(choice, results_root, dataset_name, request.plans,
                                              request.configuration, request.folds)
    return choice
