"""``nnunet-mcc demo``: the main job on an embedded default, from nothing to a loss comparison.

1. a synthetic class-imbalanced dataset (``nnunet_mcc.synthetic``, spec below): three nested classes
   covering 8 % of the image together, the innermost 1.6 %; label mode with BraTS-like
   ``evaluation_regions`` named after BraTS (whole tumour = 1+2+3, tumour core = 2+3);
2. ``nnUNetv2_plan_and_preprocess`` and a narrow 3-stage configuration with batch 8 (``nnunet_mcc.plans``);
3. five-fold cross-validation of nnU-Net's default loss and one trainer per loss family of this package
   (``nnunet-mcc crossval``), with a budget at which nearly every run converges on this dataset (the
   report says which), and snapshots validated during training for the "score after N iterations" table;
4. ``nnunet-mcc compare``: prints the table, leaves the report in ``<work dir>/report``.

The default finishes within 15 minutes on a 2-core CPU; the flags scale it up on a GPU
(``--device cuda --epochs 100 --iterations 250 --shape 128 128 128 --full-network``). It uses its own nnU-Net
folders inside the work folder and reuses what is there when the settings are the same.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from typing import List

from nnunet_mcc.budget import BUDGET_OPTIONS, SCHEDULE_VARIABLES, SEED_VARIABLE, check_budget_options
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json, write_json
from nnunet_mcc.plans import DEFAULT_PLANNER, add_planner_argument, planner_plans

DEFAULT_WORK_DIR = os.path.join("nnunet_mcc_work", "demo")
DATASET_NAME = "ImbalancedDemo"
# the embedded default: small 2D images keep a CPU cross-validation of every loss within minutes
# imbalanced (92 % background, the innermost class 1.6 %) yet learnable within minutes: with more noise
# (0.25) or a rarer inner class (0.5 %) the narrow network's runs stall for hundreds of iterations on the
# outer class before learning the inner ones, at a point that differs from run to run
DEFAULT_SPEC = dict(num_cases=25, shape=(64, 64), num_foreground_classes=3, nested=True, foreground_fraction=0.08,
                    class_weights=(0.5, 0.3, 0.2), noise=0.15, bias=0.3, seed=2026,
                    class_names=("edema", "non_enhancing_tumor", "enhancing_tumor"))
# BraTS' names for a nested subset of its classes, so trainers that map BraTS settings by name apply
EVALUATION_REGIONS = {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3]}
# Measured on a 2-core CPU (one thread per training, data augmentation in the training process): with
# batch 8 an iteration of the narrow network costs ~0.08 CPU-s. On this dataset most runs' per-epoch
# validation pseudo Dice stops rising after 300-400 iterations; some stall on the outer class for a few
# hundred iterations first. Per run, fixed costs (nnU-Net's final validation with its spawned workers, the
# last progress.png, trainer set-up) are ~15 CPU-s, so the budget goes mostly into training iterations.
# The default (1000 iterations) fits 15 minutes of two cores and gives the slower losses room to plateau by the
# sharpened convergence criterion (at 600 iterations 13 of 20 runs had, at 800 17: the last climbers were
# GWDL + CE and one MCC fold, with projected gains of 0.020-0.025); figures of the current default in
# docs/experiments.md.
# The default trains every (trainer, fold) once, seeded by NNUNET_MCC_SEED (2026 unless set): its report says
# that training noise was not measured. --converge trains each three times (seeded variants <Trainer>_seed<S>),
# so compare can tell a difference between losses from the spread between seeds, and every run has to converge
# for that verdict to rest on it. With the default's network (first stage 8 features wide) that failed on any
# budget two cores can give (docs/experiments.md, "How long the demo's runs need"): one seed's initialisation
# left Dice + CE and the critic at zero on the innermost class for 640-800 iterations in every fold, and GWDL + CE
# was still climbing at 2000 iterations. Twice as wide (16), it learns every class within 120 iterations from
# each seed, and 48 x 48 images pay for the width: on fold 0 with seeds 0 1 2 at 1000 iterations all 12 runs
# converged (7 of 12 at the default's width and shape, 8 of 12 at that width on 32 x 32, 5 of 12 at width 16 on
# 32 x 32, 11 of 12 at width 16 on 64 x 64, which costs 1.4 times as much), for 57 CPU-s a run. --converge
# keeps 1280 iterations for a margin below the judge's line: 36 minutes on two cores, 53 of 60 runs converged
# (the other 7 on the line, +0.019 to +0.028), none lost a class. 12 validation batches per epoch instead of 3
# (a quieter curve for the judge) cost 14 % more time and left the count at 53 of 60 (docs/experiments.md)
PROFILES = {"default": dict(epochs=50, iterations=20, val_iterations=3, snapshot_epochs=(10, 25), seeds=None,
                            shape=DEFAULT_SPEC["shape"], base_features=8),
            "converge": dict(epochs=64, iterations=20, val_iterations=3, snapshot_epochs=(16, 32), seeds=(0, 1, 2),
                             shape=(48, 48), base_features=16)}
# the narrow CPU configuration: nnU-Net's planned 2D U-Net cut to 3 stages, batch 8; its first stage's width
# (doubled per stage up to 32) is the profile's or --base-features
NETWORK = dict(n_stages=3, batch_size=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help=f"folder for the dataset, nnU-Net's folders and the report (default: ./{DEFAULT_WORK_DIR})")
    parser.add_argument("-tr", "--trainers", nargs="+",
                        help="trainers to compare (default: the baseline and one trainer per loss of this package)")
    parser.add_argument("--all-trainers", action="store_true",
                        help="compare every main trainer of the package, settings variants included (slower)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    parser.add_argument("--converge", action="store_true",
                        help=f"three seeds per run, so that the report can tell a difference between losses from "
                             f"training noise, and a network that learns every class early from every seed "
                             f"({_profile_text('converge')}; default: {_profile_text('default')})")
    parser.add_argument("--epochs", type=int, help="epochs per run (overrides the profile)")
    parser.add_argument("--iterations", type=int, help="training iterations per epoch (overrides the profile)")
    parser.add_argument("--val-iterations", type=int,
                        help="validation iterations per epoch (pseudo Dice / MCC in the learning curves, which the "
                             "convergence judge reads; default: the profile's, 3)")
    parser.add_argument("--snapshot-epochs", nargs="*", type=int,
                        help="validate the networks also after these epochs, during training ('score after N "
                             "iterations' table; default: the profile's; none: --snapshot-epochs with no value)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="train every (trainer, fold) once per seed, as <Trainer>_seed<S> (default: the profile's: "
                             "one run seeded by NNUNET_MCC_SEED, or 0 1 2 with --converge)")
    parser.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("-j", "--jobs", type=int,
                        help="trainings at the same time (default: cores + 1 on cpu, one thread each; 1 otherwise)")
    parser.add_argument("--shape", nargs="+", type=int,
                        help="image shape, 2 (2D) or 3 (3D) sizes (default: the profile's, 64 64 or 48 48 with "
                             "--converge)")
    parser.add_argument("--base-features", type=int,
                        help="width of the narrow network's first stage, doubled per stage up to 32 (default: the "
                             "profile's, 8 or 16 with --converge)")
    parser.add_argument("--cases", type=int, default=DEFAULT_SPEC["num_cases"], help="training cases (>= 5)")
    parser.add_argument("--full-network", action="store_true",
                        help="train nnU-Net's planned network instead of the narrow CPU configuration")
    parser.add_argument("--dataset-id", type=int, default=990, help="nnU-Net dataset id (default 990)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans",
                        help="plans identifier the demo plans, trains and compares with (default: nnUNetPlans)")
    add_planner_argument(parser)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")


# nnU-Net's default loss (Dice + CE, the baseline) and one trainer per loss family of the package, each the
# family's member that did best in the ablations (benchmarks/ablation.py, docs/gwdl.md and docs/segan.md): the
# MCC with its missed-class gate; GWDL + CE (GWDL alone, even gated, lost a label in some folds); the critic
# over nnU-Net's Dice + CE (over CE, the seed's objective, it was still far from converged at this budget).
# The other variants need more time than a converged five-fold comparison on two cores leaves: -tr or
# --all-trainers add them
DEMO_TRAINERS = ("nnUNetTrainerBaseline", "nnUNetTrainerMCC", "nnUNetTrainerGWDL_CE", "nnUNetTrainerSegANDiceCE")
# the ensemble of losses the report shows when both are trained: the seed's loss with nnU-Net's own (compare
# --ensemble; the runs save their validation probabilities, nnU-Net's --npz, which calibration also reads)
DEMO_ENSEMBLE = ("nnUNetTrainerMCC", "nnUNetTrainerBaseline")


def default_trainers(everything: bool = False) -> List[str]:
    from nnunet_mcc.trainers import MAIN_TRAINERS

    names = [t.__name__ for t in MAIN_TRAINERS]
    if not everything:
        return [n for n in DEMO_TRAINERS if n in names]
    baseline = "nnUNetTrainerBaseline"
    return ([baseline] if baseline in names else []) + [n for n in names if n != baseline]


def _profile_text(name: str) -> str:
    p = PROFILES[name]
    seeds = f", seeds {' '.join(map(str, p['seeds']))}" if p["seeds"] else ", one seed"
    return (f"{p['epochs']} epochs x {p['iterations']} iterations, {p['val_iterations']} validation iterations per "
            f"epoch, {' x '.join(map(str, p['shape']))} images, "
            f"first stage {p['base_features']} features wide, snapshots after "
            f"{' and '.join(map(str, p['snapshot_epochs']))}{seeds}")


def _apply_profile(args) -> None:
    """Options not given take the chosen profile's values."""
    profile = PROFILES["converge" if args.converge else "default"]
    for name in ("epochs", "iterations", "val_iterations", "snapshot_epochs", "seeds", "shape", "base_features"):
        if getattr(args, name) is None:
            value = profile[name]
            setattr(args, name, list(value) if isinstance(value, tuple) else value)
    from nnunet_mcc.experiments.crossval import check_seeds

    check_seeds([], args.seeds)


def _check_args(args) -> None:
    if args.full_network and args.base_features is not None:
        raise UserError("--base-features sets the width of the narrow network; --full-network trains nnU-Net's "
                        "planned one: give one of them")
    _apply_profile(args)
    if len(args.shape) not in (2, 3) or min(args.shape) < 16:
        raise UserError(f"--shape needs 2 or 3 sizes of at least 16, got {args.shape}")
    if not 1 <= args.base_features <= 32:
        raise UserError(f"--base-features must be 1-32 (the narrow network's widest stage has 32), got "
                        f"{args.base_features}")
    if args.cases < 5:
        raise UserError(f"--cases must be at least 5 for five-fold cross-validation, got {args.cases}")
    check_budget_options({name: getattr(args, name) for name in (*BUDGET_OPTIONS, "bootstrap")})
    if any(f < 0 or f > 4 for f in args.folds):
        raise UserError(f"-f: folds are 0-4, got {args.folds}")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if not 1 <= args.dataset_id <= 999:
        raise UserError(f"--dataset-id must be in 1..999, got {args.dataset_id}")
    if any(e < 1 for e in args.snapshot_epochs or []):
        raise UserError(f"--snapshot-epochs must be epoch numbers >= 1, got {args.snapshot_epochs}")
    # snapshots at or after the last epoch would repeat the final validation
    args.snapshot_epochs = sorted({e for e in args.snapshot_epochs or [] if e < args.epochs})


def _check_trainers(trainers: List[str]) -> None:
    """UserError unless every trainer of -tr is one of this package's (the demo's budget applies to them only),
    each once."""
    from nnunet_mcc.trainers import trainer_class

    unknown = []
    for name in trainers:
        try:
            trainer_class(name)
        except KeyError:
            unknown.append(name)
    if unknown:
        raise UserError(f"-tr: {', '.join(unknown)} not among this package's trainers (the demo's budget only "
                        f"applies to them); known: {', '.join(default_trainers(True))}")
    if len(set(trainers)) != len(trainers):
        raise UserError(f"-tr lists a trainer twice: {' '.join(trainers)}")


def _set_environment(work: str, device: str, seeded_names: bool = False) -> None:
    """nnU-Net's folders inside the work folder, and CPU settings; before nnunetv2 is imported (it reads
    its paths at import time)."""
    for kind in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{kind}"] = os.path.join(work, f"nnUNet_{kind}")
        os.makedirs(os.environ[f"nnUNet_{kind}"], exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "agg")
    # progress.png costs seconds per redraw: only the last epoch's (the trainers always draw it)
    os.environ.setdefault(SCHEDULE_VARIABLES["plot_every"], "1000000")
    # seeded runs; with data augmentation in the training process (below, on cpu) a rerun gives the same curves;
    # with --seeds every run's seed is in its trainer's name
    if not seeded_names:
        os.environ.setdefault(SEED_VARIABLE, "2026")
    if device == "cpu":
        # the trainings' threads: crossval's share of the cores (one each with cores + 1 trainings at a time: two
        # trainings on two cores beat one training on two)
        os.environ["nnUNet_compile"] = "0"
        os.environ.setdefault("nnUNet_n_proc_DA", "1")  # planning needs at least one worker
        os.environ.setdefault("nnUNet_def_n_proc", "1")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (trainings, nnU-Net's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args) -> int:
    _check_args(args)
    clock = [(time.time(), _cpu_seconds())]
    phases = []

    def phase(name: str) -> None:
        now = (time.time(), _cpu_seconds())
        phases.append((name, now[0] - clock[-1][0], now[1] - clock[-1][1]))
        clock.append(now)

    work = os.path.abspath(args.work_dir)
    # on cpu one more job than cores: part of each run waits for nnU-Net's validation workers to start
    jobs = args.jobs or ((os.cpu_count() or 1) + 1 if args.device == "cpu" else 1)
    os.makedirs(work, exist_ok=True)
    _set_environment(work, args.device, seeded_names=bool(args.seeds))
    print(f"nnunet-mcc demo: work folder {work}")
    trainers = args.trainers or default_trainers(args.all_trainers)
    _check_trainers(trainers)

    from nnunet_mcc.synthetic import SyntheticSpec

    spec = SyntheticSpec(**{**DEFAULT_SPEC, "shape": tuple(args.shape), "num_cases": args.cases})
    base_configuration = "2d" if len(args.shape) == 2 else "3d_fullres"
    configuration = base_configuration if args.full_network else f"{base_configuration}_small"
    settings = {"spec": asdict(spec), "budget": {"epochs": args.epochs, "iterations": args.iterations,
                                                 "val_iterations": args.val_iterations},
                "snapshot_epochs": sorted(set(args.snapshot_epochs or [])), "configuration": configuration,
                "network": None if args.full_network else {**NETWORK, "base_features": args.base_features},
                "plans": args.plans, "planner": args.planner or DEFAULT_PLANNER}
    dataset_name = f"Dataset{args.dataset_id:03d}_{DATASET_NAME}"
    prepare_dataset(work, dataset_name, args.dataset_id, spec, base_configuration, configuration, settings)
    phase("dataset and planning")
    if args.device == "cpu":
        # data augmentation in the training process: a worker process per training costs more CPU than it saves
        os.environ["nnUNet_n_proc_DA"] = "0"
    budget = settings["budget"]
    seeds = f" x {len(args.seeds)} seeds" if args.seeds else ""
    print(f"[{clock[-1][0] - clock[0][0]:.0f} s] cross-validation: {len(trainers)} trainers x {len(args.folds)} folds{seeds}, "
          f"{args.epochs} epochs x {args.iterations} iterations (batch {NETWORK['batch_size']}, "
          f"{'full network' if args.full_network else f'first stage {args.base_features} features wide'}), "
          f"{' x '.join(map(str, args.shape))} images, {jobs} at a time on {args.device}")
    from nnunet_mcc.experiments.crossval import crossval

    status = crossval(dataset_name, configuration, trainers, folds=args.folds, device=args.device, jobs=jobs,
                      budget=budget, snapshot_epochs=args.snapshot_epochs or None, check_trainers=False,
                      in_process=True, seeds=args.seeds, npz=True, plans=args.plans)
    phase("cross-validation (training, snapshot and final validation)")
    print(f"[{clock[-1][0] - clock[0][0]:.0f} s] comparison")
    from nnunet_mcc.experiments import ensemble as ensemble_module
    from nnunet_mcc.experiments import results
    from nnunet_mcc.experiments.compare import CompareRequest, execute

    states = results.survey(os.environ["nnUNet_results"], dataset_name, trainers, args.plans, configuration,
                            args.folds)  # each trainer's seed runs, found by their names
    usable = [t for t in trainers if any(s.trainer == t and s.status == results.FINISHED for s in states)]
    if not usable:
        raise UserError("no training finished: see the logs listed above")
    ensemble = ["+".join(DEMO_ENSEMBLE)] if all(t in usable for t in DEMO_ENSEMBLE) else None
    # on the CPU nnU-Net's ensembling and evaluation run case by case in this process: a worker pool costs seconds
    comparison = execute(CompareRequest(dataset_name, configuration, usable, plans=args.plans, folds=args.folds,
                                        bootstrap=args.bootstrap, output=os.path.join(work, "report"),
                                        ensemble=ensemble, ensemble_processes=0 if args.device == "cpu"
                                        else ensemble_module.DEFAULT_PROCESSES))
    phase("comparison")
    print()
    print(comparison["markdown"])
    print(f"\nReport folder: {comparison['output']}")
    split = ", ".join(f"{name} {wall:.0f} s ({cpu:.0f} CPU-s)" for name, wall, cpu in phases)
    print(f"nnunet-mcc demo: {clock[-1][0] - clock[0][0]:.0f} s in all, {clock[-1][1] - clock[0][1]:.0f} CPU-s: {split}")
    return status


def prepare_dataset(work: str, dataset_name: str, dataset_id: int, spec, base_configuration: str,
                    configuration: str, settings: dict) -> None:
    """The synthetic dataset ``spec`` as ``dataset_name`` (with the demo's evaluation regions), nnU-Net's
    plans and preprocessing of ``base_configuration``, the narrow ``configuration`` when
    ``settings["network"]`` is set, and the five-fold split, under ``settings["plans"]`` planned by
    ``settings["planner"]`` (nnU-Net's default planner and nnUNetPlans when absent). ``settings`` (with ``"spec"`` and
    ``"network"``) is recorded in ``work``: when it changes, the dataset's folders are rebuilt (only the
    results when the spec is the same)."""
    from nnunet_mcc.plans import add_small_configuration, configuration_names, plans_path
    from nnunet_mcc.synthetic import make_synthetic_dataset

    settings_file = os.path.join(work, "demo_settings.json")
    previous = None
    if os.path.isfile(settings_file):
        try:
            previous = read_json(settings_file, "demo settings")
        except UserError:
            previous = None
    folders = {kind: os.path.join(os.environ[f"nnUNet_{kind}"], dataset_name)
               for kind in ("raw", "preprocessed", "results")}
    current = json.loads(json.dumps(settings))
    if previous != current:
        # a new dataset needs everything again; a new network or budget new trainings (the demo owns its folder)
        same_data = previous is not None and previous.get("spec") == current["spec"]
        stale = ["results"] if same_data else ["raw", "preprocessed", "results"]
        if any(os.path.exists(folders[k]) for k in stale):
            print(f"settings changed: starting over ({', '.join(stale)})")
        for kind in stale:
            shutil.rmtree(folders[kind], ignore_errors=True)
        if os.path.exists(settings_file):
            os.remove(settings_file)
    if not os.path.isfile(os.path.join(folders["raw"], "dataset.json")):
        print("making the synthetic dataset")
        make_synthetic_dataset(os.environ["nnUNet_raw"], dataset_id, dataset_name.split("_", 1)[1], spec,
                               overwrite=True)
        dataset_json_file = os.path.join(folders["raw"], "dataset.json")
        dataset_json = read_json(dataset_json_file, "dataset.json")
        dataset_json["evaluation_regions"] = EVALUATION_REGIONS
        write_json(dataset_json_file, dataset_json, "dataset.json", indent=4)
    identifier, planner = settings.get("plans", "nnUNetPlans"), settings.get("planner", DEFAULT_PLANNER)
    plans = plans_path(os.environ["nnUNet_preprocessed"], dataset_name, identifier)
    if not os.path.isfile(plans) or base_configuration not in configuration_names(plans) or not os.path.isdir(
            os.path.join(folders["preprocessed"], f"{identifier}_{base_configuration}")):
        print("nnUNetv2_plan_and_preprocess (about a minute)")
        log = os.path.join(work, "plan_and_preprocess.log")
        # the synthetic dataset is valid by construction (its tests run nnU-Net's integrity check): no
        # --verify_dataset_integrity, whose worker pool costs seconds
        command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"), "-d",
                   str(dataset_id), "-c", base_configuration, "-np", "1", "-pl", planner]
        if identifier != planner_plans(planner):
            command += ["-overwrite_plans_name", identifier]
        with open(log, "w") as handle:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise UserError(f"nnUNetv2_plan_and_preprocess failed (exit {code}); log: {log}")
    if settings["network"]:
        add_small_configuration(plans, base_configuration, configuration, **settings["network"])
    from nnunet_mcc.experiments.crossval import ensure_splits

    ensure_splits(dataset_name, base_configuration, identifier, [0, 1, 2, 3, 4])
    write_json(settings_file, settings, "demo settings")
