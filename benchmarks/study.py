"""Studies over seeds: does a trainer keep every class on every seed, and at which budget has it converged?

One runner for the studies that train every (trainer, fold, seed) of a set of trainers on a synthetic dataset
and read the result through ``nnunet-mcc compare`` (the product's own statistics): the same preparation as
the demo (``nnunet_mcc.experiments.demo.prepare_dataset``), the same cross-validation (``crossval --seeds``,
in-process workers, one torch thread each, augmentation in the training process, so each run is
reproducible bit for bit), and the same comparison.

* ``--study robustness``: the class-loss rate of each trainer (runs that lost any class / runs; a class is
  lost in a run when it scores Dice 0 on every validation case where it is present), per-class Dice (mean
  over runs and the spread between seeds) and how many runs converged by compare's judge;
* ``--dataset demo`` (the demo's embedded dataset: nested classes at about 3.8 %, 2.4 % and 1.6 %),
  ``rare`` (the rare-class dataset of docs/mcc_rare_classes.md: 3 %, 1.5 % and 0.5 %, noisier) or ``3d``
  (a small 3D dataset with the rare dataset's classes).

With ``--unmirrored`` every run that lost a class is also scored without test-time mirroring
(``validation_nomirror``), so compare's collapsed.csv says whether training or mirroring lost it.

    python benchmarks/study.py --study robustness --dataset demo --seeds 0 1 2 3 4
    python benchmarks/study.py --study robustness --dataset rare --seeds 0 1 2 3 4 -f 0 1 2

Results: ``<work>/<dataset>/study.md`` and ``study.json`` (the settings, the table and each run's lost
classes) and compare's full report in ``<work>/<dataset>/report``. Finished runs with the same settings are
reused, so an interrupted study continues where it stopped.
"""

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np

DATASETS = {
    "demo": dict(dataset_id=993, name="StudyDemo", shape=(64, 64), spec=None),
    # the rare-class dataset of the MCC ablation (benchmarks/ablation.py RARE_SPEC), at the demo's network
    "rare": dict(dataset_id=994, name="StudyRare", shape=(64, 64),
                 spec=dict(num_cases=25, shape=(64, 64), num_foreground_classes=3, nested=True,
                           foreground_fraction=0.05, class_weights=(0.6, 0.3, 0.1), noise=0.25, bias=0.3, seed=2026,
                           class_names=("edema", "non_enhancing_tumor", "enhancing_tumor"))),
    "3d": dict(dataset_id=995, name="StudyRare3D", shape=(24, 24, 24),
               spec=dict(num_cases=20, shape=(24, 24, 24), num_foreground_classes=3, nested=True,
                         foreground_fraction=0.05, class_weights=(0.6, 0.3, 0.1), noise=0.25, bias=0.3, seed=2026,
                         class_names=("edema", "non_enhancing_tumor", "enhancing_tumor"))),
}
STUDIES = {
    "robustness": dict(trainers=("nnUNetTrainerBaseline", "nnUNetTrainerMCC", "nnUNetTrainerGWDL",
                                 "nnUNetTrainerTversky", "nnUNetTrainerMCC_CE", "nnUNetTrainerMCC_noGate"),
                       seeds=(0, 1, 2, 3, 4)),
}
NETWORK = dict(n_stages=3, base_features=8, batch_size=8)  # the demo's narrow network
# a class with a mean Dice below this over a run's validation cases has failed in that run: lost (compare's
# class-loss rate counts Dice 0 on every case) or predicted over much of the image (a flood scores about 0.01)
FAILED_DICE = 0.1


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _spec(dataset: str):
    from nnunet_mcc.experiments.demo import DEFAULT_SPEC
    from nnunet_mcc.synthetic import SyntheticSpec

    return SyntheticSpec(**(DATASETS[dataset]["spec"] or DEFAULT_SPEC))


def prepare(work: str, dataset: str, budget: dict, jobs: int) -> tuple:
    """nnU-Net's folders in ``work``, the dataset planned and split as the demo does; returns
    ``(dataset name, configuration)``."""
    from nnunet_mcc.experiments import demo

    demo._set_environment(work, "cpu", seeded_names=True)
    spec = _spec(dataset)
    base = "2d" if len(spec.shape) == 2 else "3d_fullres"
    configuration = f"{base}_small"
    entry = DATASETS[dataset]
    name = f"Dataset{entry['dataset_id']:03d}_{entry['name']}"
    settings = {"spec": asdict(spec), "budget": budget, "snapshot_epochs": [], "configuration": configuration,
                "network": NETWORK}
    demo.prepare_dataset(work, name, entry["dataset_id"], spec, base, configuration, settings)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in the training process: reproducible runs
    return name, configuration


def score_unmirrored(comparison: dict, dataset_name: str, configuration: str) -> int:
    """Score every run that lost a class without test-time mirroring; returns how many were scored."""
    from nnunet_mcc.experiments import results
    from nnunet_mcc.experiments.mirroring import validate_without_mirroring

    done = 0
    lost = {(row["run"], int(row["fold"])) for row in comparison["collapsed"]}
    for run, fold in sorted(lost):
        folder = results.fold_folder(os.environ["nnUNet_results"], dataset_name, run, "nnUNetPlans", configuration,
                                     fold)
        if not os.path.isfile(os.path.join(folder, "validation_nomirror", "summary.json")):
            validate_without_mirroring(folder, device="cpu", num_processes=0)
            done += 1
    return done


def summarise(comparison: dict, trainers: Sequence[str]) -> List[dict]:
    """Per trainer: compare's class-loss rate (``class_loss.csv``: runs, runs that lost a class, which, and whether
    in training or by mirroring), per-class Dice (mean over runs and the standard deviation between the seeds'
    means) and the runs compare's judge calls converged."""
    from nnunet_mcc.experiments import convergence

    frames = comparison["frames"]
    final_runs, runs_frame = frames["final_runs"], frames["runs"]
    class_loss = frames["class_loss"].set_index("trainer")
    dice = final_runs[final_runs["metric"] == "Dice"]
    rows = []
    for trainer in trainers:
        loss = class_loss.loc[trainer]
        row = {"trainer": trainer, "runs": int(loss["runs"]), "runs_that_lost_a_class": int(loss["runs_with_lost_class"]),
               "lost": loss["lost_classes"], "lost_in_training": int(loss["runs_lost_in_training"]),
               "lost_by_mirroring": int(loss["runs_lost_by_mirroring"]),
               "runs_with_flood": int(loss.get("runs_with_flood", 0))}
        mine = dice[dice["trainer"] == trainer]
        # lost or flooded: a class whose mean Dice over the run's validation cases is below FAILED_DICE
        per_run = mine[mine["kind"] == "label"].groupby(["seed", "fold", "class_or_region"])["value"].mean()
        failed = per_run[per_run < FAILED_DICE].reset_index()
        row["runs_with_a_failed_class"] = int(len(failed[["seed", "fold"]].drop_duplicates()))
        for name, group in mine[mine["kind"].isin(["label", "mean"])].groupby("class_or_region", sort=False):
            per_seed = group.groupby("seed")["value"].mean()
            row[f"Dice {name}"] = float(group["value"].mean())
            row[f"Dice {name} seed sd"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
        row["converged"] = int((runs_frame.loc[runs_frame["trainer"] == trainer, "converged"] == convergence.YES).sum())
        rows.append(row)
    return rows


def markdown(rows: List[dict], classes: Sequence[str], settings: dict) -> str:
    header = ["trainer", "class-loss rate", "lost or flooded (class runs)", "of which floods",
              "lost in training / by mirroring",
              f"runs with a class below Dice {FAILED_DICE}"] + \
        [f"Dice {c}" for c in classes] + ["converged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["trainer"], f"{row['runs_that_lost_a_class']}/{row['runs']}", row["lost"] or "none",
                 str(row["runs_with_flood"]),
                 f"{row['lost_in_training']} / {row['lost_by_mirroring']}" if row["runs_that_lost_a_class"] else "-",
                 f"{row['runs_with_a_failed_class']}/{row['runs']}"]
        for c in classes:
            mean, sd = row.get(f"Dice {c}", float("nan")), row.get(f"Dice {c} seed sd", float("nan"))
            cells.append(f"{mean:.3f} ± {sd:.3f}" if sd == sd else f"{mean:.3f}")
        cells.append(f"{row['converged']}/{row['runs']}")
        lines.append("| " + " | ".join(cells) + " |")
    b = settings["budget"]
    lines += ["", f"Dataset {settings['dataset']} ({settings['dataset_name']}), {len(settings['seeds'])} seeds "
                  f"({' '.join(map(str, settings['seeds']))}) x folds {' '.join(map(str, settings['folds']))}, "
                  f"{b['epochs']} epochs x {b['iterations']} iterations, narrow network (batch "
                  f"{NETWORK['batch_size']}), CPU, one thread per run. A class is lost in a run when it scores "
                  f"Dice 0 on every validation case where it is present (nnU-Net's final validation, with "
                  f"mirroring), or floods it (compare's rule: mean Dice below 0.1 with at least twice the "
                  f"reference's voxels predicted as the class); in training when it is lost without mirroring too, by mirroring when not "
                  f"(--unmirrored scores every run that lost a class without mirroring). Dice: mean over runs of each run's mean over its validation cases ± the standard "
                  f"deviation between the seeds' means. Converged: compare's judge.",
              f"Command: {settings['command']}; this invocation {settings['wall_seconds']:.0f} s wall, "
              f"{settings['cpu_seconds']:.0f} CPU-s (finished runs are reused); the {settings['runs_costed']} runs' "
              f"own training processes, from their cost records: {settings['runs_wall_seconds']:.0f} s wall in all, "
              f"{settings['runs_wall_seconds'] / max(settings['runs_costed'], 1):.0f} s a run, "
              f"{settings['jobs']} at a time."]
    return "\n".join(lines) + "\n"


def run_costs(runs, trainers: Sequence[str]) -> dict:
    """What the studied runs cost when they were trained (each run's ``cost`` record, through compare's runs
    table), whichever invocation trained them."""
    mine = runs[runs["trainer"].isin(list(trainers))]
    walls = list(mine["cost_wall_seconds"].dropna()) if "cost_wall_seconds" in mine else []
    return {"runs_costed": len(walls), "runs_wall_seconds": float(sum(walls))}


def _jsonable(value):
    """NaN (a spread over one seed, a class never scored) as null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=list(STUDIES), default="robustness")
    parser.add_argument("--dataset", choices=list(DATASETS), default="demo")
    parser.add_argument("-tr", "--trainers", nargs="+", help="trainers (default: the study's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the study's, 0-4)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=50, help="epochs (default 50: the demo's budget)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch (default 20)")
    parser.add_argument("--val-iterations", type=int, default=3)
    parser.add_argument("-j", "--jobs", type=int, default=(os.cpu_count() or 1) + 1)
    parser.add_argument("--unmirrored", action="store_true",
                        help="also score every run that lost a class without test-time mirroring")
    parser.add_argument("--work-dir", default=os.path.join("nnunet_mcc_work", "study"))
    args = parser.parse_args(argv)
    from nnunet_mcc.budget import check_budget_options
    from nnunet_mcc.errors import UserError

    study = STUDIES[args.study]
    trainers = list(args.trainers or study["trainers"])
    seeds = list(args.seeds if args.seeds is not None else study["seeds"])
    budget = {"epochs": args.epochs, "iterations": args.iterations, "val_iterations": args.val_iterations}
    work = os.path.abspath(os.path.join(args.work_dir, args.dataset))
    started, cpu0 = time.time(), _cpu_seconds()
    try:
        check_budget_options({**budget, "jobs": args.jobs})
        if any(f < 0 or f > 4 for f in args.folds):
            raise UserError(f"-f: folds are 0-4, got {args.folds}")
        os.makedirs(work, exist_ok=True)
        dataset_name, configuration = prepare(work, args.dataset, budget, args.jobs)
        from nnunet_mcc.experiments.compare import execute
        from nnunet_mcc.experiments.compare_request import CompareRequest
        from nnunet_mcc.experiments.crossval import crossval

        status = crossval(dataset_name, configuration, trainers, folds=args.folds, device="cpu", jobs=args.jobs,
                          budget=budget, check_trainers=False, in_process=True, seeds=seeds)
        request = CompareRequest(dataset_name, configuration, tuple(trainers), folds=tuple(args.folds),
                                 output=os.path.join(work, "report"), bootstrap=200)
        comparison = execute(request)
        if args.unmirrored and score_unmirrored(comparison, dataset_name, configuration):
            comparison = execute(request)
    except UserError as e:
        print(f"study: {e}", file=sys.stderr)
        return 2
    from nnunet_mcc.fileio import write_json, write_text

    rows = summarise(comparison, trainers)
    classes = [c for c in comparison["classes"] if any(f"Dice {c}" in r for r in rows)]
    settings = {"study": args.study, "dataset": args.dataset, "dataset_name": dataset_name,
                "spec": asdict(_spec(args.dataset)), "network": NETWORK, "budget": budget, "seeds": seeds,
                "folds": list(args.folds), "trainers": trainers, "jobs": args.jobs,
                "command": "python benchmarks/study.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "wall_seconds": time.time() - started, "cpu_seconds": _cpu_seconds() - cpu0,
                **run_costs(comparison["frames"]["runs"], trainers)}
    table = markdown(rows, classes, settings)
    record = {"settings": settings, "summary": rows, "collapsed": comparison["collapsed"]}
    write_json(os.path.join(work, "study.json"), _jsonable(json.loads(json.dumps(record, default=str))),
               "study results")
    write_text(os.path.join(work, "study.md"), table, "study table")
    print(table)
    print(f"results in {work} (study.md, study.json, report/)")
    return status


if __name__ == "__main__":
    sys.exit(main())
