"""Why does a loss lose the rarest class? One-factor-at-a-time ablations, one study per loss family.

Each study fixes a dataset, a network, a budget and a set of variants. Every variant changes ONE setting
of the loss's trainer, beside reference trainers. Each run is seeded (``NNUNET_MCC_SEED``, the same seed
per fold for every variant) and runs nnU-Net's own training and final validation in a process of its
own, with one thread and augmentation in that process.

* ``--study mcc`` (the default; docs/mcc_rare_classes.md): ``nnUNetTrainerMCC`` on the rare-class dataset
  (2D 64x64, 25 cases, three nested classes at about 3 %, 1.5 % and 0.5 % of the image; the narrow
  ``2d_small`` configuration): learning rate, batch-pooled vs per-sample counts, background, ``eps``,
  the missed-class penalty, and nnU-Net's Dice + CE, MCC + CE, CE and Dice;
* ``--study gwdl`` (docs/gwdl.md): ``nnUNetTrainerGWDL`` on the demo's dataset (the same classes at
  about 3.8 %, 2.4 % and 1.6 %, its narrow network, batch 8) at the budget of the demo's ``--converge`` (64 x 20
  iterations): the distance matrix (tree distances of the label hierarchy, 0/1, the BraTS preset), the GDL
  weighting, the learning rate and the missed-label gate;
* ``--study gwdl-rare``: the GWDL variants on the rare-class dataset of the ``mcc`` study (the same
  prepared dataset and budget);
* ``--study segan`` (docs/segan.md): ``nnUNetTrainerSegAN`` on the demo's dataset at the demo's default
  budget: the adversarial weight (0, that is CE alone; 0.1; 1), a critic warm-up with a ramp of the
  weight, and the critic's learning rate.

During training a probe measures, on the first few iterations of every epoch and at full resolution,
per foreground class: the class's mean predicted probability on its own voxels, the norm of the
gradient of the run's loss with respect to the logits (dL/dz_c) and of the soft MCC with respect to the
probabilities (dL/dp_c, a reference), each over the class's voxels and over the rest. The probe reuses
the training batch and a forward pass without gradient (the network has no dropout and no running
statistics), so it does not change the run.

    python benchmarks/ablation.py --quick                  # smoke run: 2 variants, 1 fold, a few iterations
    python benchmarks/ablation.py                          # the table of docs/mcc_rare_classes.md
    python benchmarks/ablation.py --study gwdl             # the tables of docs/gwdl.md
    python benchmarks/ablation.py --study gwdl-rare
    python benchmarks/ablation.py --report-only            # rebuild the table from finished runs

Results (``ablation.json``, ``ablation.csv``, ``ablation.md``, ``gradients.json``, ``gradients.md``,
``gradients.png``) go to the study's work folder (default ``nnunet_mcc_work/ablation`` for ``mcc``,
``nnunet_mcc_work/ablation_<study>`` otherwise), with nnU-Net's folders and each run's log. Finished runs
with the same settings are reused, so an interrupted ablation continues where it stopped.
"""

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

# the rare-class dataset: the demo's embedded default at the time of the MCC ablation, fixed here so that
# the tables stay reproducible
RARE_SPEC = dict(num_cases=25, shape=(64, 64), num_foreground_classes=3, nested=True, foreground_fraction=0.05,
                 class_weights=(0.6, 0.3, 0.1), noise=0.25, bias=0.3, seed=2026,
                 class_names=("edema", "non_enhancing_tumor", "enhancing_tumor"))
BASE_CONFIGURATION, CONFIGURATION = "2d", "2d_small"
PLANS = "nnUNetPlans"
SEED = 12345
QUICK = dict(epochs=2, iterations=8, val_iterations=2, folds=[0], probe_iterations=2)

MCC_VARIANTS = {  # name -> (trainer class name, what differs from nnUNetTrainerMCC's defaults)
    "MCC": ("AblationMCC", "the plain soft MCC (nnUNetTrainerMCC with missed_weight 0): lr 1e-2, "
                           "batch-pooled counts, background excluded, eps 1e-20"),
    "MCC_lr1e-3": ("AblationMCC_lr1e3", "initial_lr 1e-3 (nnU-Net v1's MCC trainers)"),
    "MCC_per_sample": ("AblationMCC_perSample", "counts per sample (batch=False)"),
    "MCC_with_bg": ("AblationMCC_withBG", "background class scored as well"),
    "MCC_eps1e-6": ("AblationMCC_eps1e6", "eps 1e-6 under the root (on counts normalised to sum 1)"),
    "MCC_missed": ("AblationMCC_missed", "-log(soft recall) added for a present class of which no voxel is "
                                         "predicted (missed_weight 1: nnUNetTrainerMCC's default)"),
    "DC+CE": ("AblationDCCE", "nnU-Net's Dice + CE (nnUNetTrainerBaseline)"),
    "MCC+CE": ("AblationMCCCE", "nnUNetTrainerMCC_CE"),
    "CE": ("AblationCE", "nnU-Net's CE alone (nnUNetTrainerBaselineCE)"),
    "Dice": ("AblationDice", "nnU-Net's soft Dice alone (nnUNetTrainerBaselineDice)"),
}
GWDL_VARIANTS = {  # name -> (trainer class name, what differs from the paper's loss as nnUNetTrainerGWDL sets it up)
    "GWDL": ("AblationGWDL", "Fidon et al.'s loss: tree distances of the label hierarchy (non-enhancing <-> "
                             "enhancing 0.33, edema <-> either 0.67), default weighting (alpha = 1 for every "
                             "foreground label), lr 1e-2, no gate"),
    "GWDL_zero_one": ("AblationGWDL_zeroOne", "the 0/1 matrix (preset zero_one)"),
    "GWDL_brats": ("AblationGWDL_brats", "Fidon et al.'s BraTS matrix (preset brats: non-enhancing <-> "
                                         "enhancing 0.5, edema <-> non-enhancing 0.6, edema <-> enhancing 0.7)"),
    "GWDL_GDL": ("AblationGWDL_GDL", "the GDL weighting (alpha = beta = 1 / (label volume + 1))"),
    "GWDL_lr1e-3": ("AblationGWDL_lr1e3", "initial_lr 1e-3"),
    "GWDL_missed": ("AblationGWDL_missed", "-log(soft recall) added for a present label of which no voxel is "
                                           "predicted (missed_weight 1)"),
    "GWDL_missed_per_sample": ("AblationGWDL_missedPerSample", "the gate, with statistics (and so the gate) per "
                                                               "sample (batch=False, the paper's definition)"),
    "GWDL_per_sample": ("AblationGWDL_perSample", "statistics per sample (batch=False, the paper's definition), "
                                                  "no gate"),
    "GWDL+CE": ("AblationGWDLCE", "GWDL + CE 1:1 (nnUNetTrainerGWDL_CE, no gate)"),
}
GWDL_CE_VARIANTS = {  # name -> (trainer class name, what differs from nnUNetTrainerGWDL_CE)
    "DC+CE": ("AblationDCCE", "nnU-Net's Dice + CE (nnUNetTrainerBaseline), the reference"),
    "GWDL+CE": ("AblationGWDLCE", "nnUNetTrainerGWDL_CE: GWDL (tree distances, default weighting, no gate) + CE 1:1"),
    "GWDL+CE_GDL": ("AblationGWDLCE_GDL", "the GDL weighting (alpha = beta = 1 / (label volume + 1))"),
    "GWDL+CE_brats": ("AblationGWDLCE_brats", "the BraTS matrix (preset brats)"),
    "GWDL+CE_zero_one": ("AblationGWDLCE_zeroOne", "the 0/1 matrix (preset zero_one)"),
    "GWDL+CE_missed": ("AblationGWDLCE_missed", "the missed-label gate (missed_weight 1)"),
}
SEGAN_VARIANTS = {  # name -> (trainer class name, what differs from nnUNetTrainerSegAN's former defaults)
    "SegAN": ("AblationSegAN", "CE + 1 x multi-scale L1 from the first iteration, critic Adam lr 1e-4"),
    "SegAN_lambda0": ("AblationSegAN_lambda0", "lambda 0: CE alone (the base loss; the critic trains unused)"),
    "SegAN_lambda0.1": ("AblationSegAN_lambda01", "lambda 0.1"),
    "SegAN_warmup": ("AblationSegAN_warmup", "critic warm-up over 10 % of the epochs (lambda 0), then lambda "
                                             "ramped linearly to 1 over 20 %"),
    "SegAN_critic_lr1e-3": ("AblationSegAN_criticLr1e3", "critic Adam lr 1e-3"),
    "SegAN_DiceCE": ("AblationSegAN_DiceCE", "nnU-Net's Dice + CE as the base loss (nnUNetTrainerSegANDiceCE), "
                                             "lambda 1"),
    "SegAN_DiceCE_critic_lr1e-3": ("AblationSegAN_DiceCE_criticLr1e3", "Dice + CE as the base loss and critic Adam "
                                                                      "lr 1e-3"),
}
# the prepared datasets: the rare-class one, and the demo's (its embedded default, network and batch)
RARE_DATA = dict(dataset_id=991, dataset_name="MCCAblation", spec=RARE_SPEC, network=dict(n_stages=3, base_features=8))
DEMO_DATA = dict(dataset_id=992, dataset_name="GWDLAblationDemo", spec=None,
                 network=dict(n_stages=3, base_features=8, batch_size=8))
RARE_BUDGET = dict(epochs=60, iterations=50, val_iterations=10, folds=[0, 1, 2], probe_iterations=4)
STUDIES = {
    "mcc": dict(**RARE_DATA, full=RARE_BUDGET, variants=MCC_VARIANTS, quick_variants=("MCC", "MCC_missed"),
                work_dir=os.path.join("nnunet_mcc_work", "ablation"),
                plot=dict(fold="1", c="3", variants=("MCC", "MCC_missed", "MCC+CE", "Dice"))),
    # the budget of the demo's --converge (nnunet_mcc.experiments.demo), on the default's network
    "gwdl": dict(**DEMO_DATA, full=dict(epochs=64, iterations=20, val_iterations=3, folds=[0, 1, 2], probe_iterations=2),
                 variants=GWDL_VARIANTS, quick_variants=("GWDL", "GWDL_missed"),
                 work_dir=os.path.join("nnunet_mcc_work", "ablation_gwdl"),
                 plot=dict(fold="1", c="3", variants=("GWDL", "GWDL_missed", "GWDL_missed_per_sample", "GWDL+CE"))),
    # the demo's former default budget (600 iterations)
    "segan": dict(**DEMO_DATA, full=dict(epochs=30, iterations=20, val_iterations=3, folds=[0, 1, 2], probe_iterations=0),
                  variants=SEGAN_VARIANTS, quick_variants=("SegAN", "SegAN_warmup"),
                  work_dir=os.path.join("nnunet_mcc_work", "ablation_segan"), plot=dict(fold="0", c="3", variants=())),
    # the demo's former default budget, all five folds: what sets GWDL + CE's per-label Dice and its pace
    "gwdl-ce": dict(**DEMO_DATA, full=dict(epochs=30, iterations=20, val_iterations=3, folds=[0, 1, 2, 3, 4],
                                           probe_iterations=0),
                    variants=GWDL_CE_VARIANTS, quick_variants=("DC+CE", "GWDL+CE"),
                    work_dir=os.path.join("nnunet_mcc_work", "ablation_gwdl_ce"), plot=dict(fold="0", c="3", variants=())),
    "gwdl-rare": dict(**RARE_DATA, full=RARE_BUDGET, variants=GWDL_VARIANTS, quick_variants=("GWDL", "GWDL_missed"),
                      work_dir=os.path.join("nnunet_mcc_work", "ablation_gwdl_rare"),
                      plot=dict(fold="1", c="3", variants=("GWDL", "GWDL_missed"))),
}
STUDY = STUDIES["mcc"]  # set by main()
STUDY_NAME = ["mcc"]


def dataset() -> str:
    return f"Dataset{STUDY['dataset_id']:03d}_{STUDY['dataset_name']}"


def study_spec() -> dict:
    if STUDY["spec"] is not None:
        return STUDY["spec"]
    from nnunet_mcc.experiments.demo import DEFAULT_SPEC

    return DEFAULT_SPEC


# ---- environment -------------------------------------------------------------------------------
def set_environment(work: str) -> None:
    """nnU-Net's folders inside the work folder and CPU settings; before nnunetv2 is imported."""
    for kind in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{kind}"] = os.path.join(work, f"nnUNet_{kind}")
        os.makedirs(os.environ[f"nnUNet_{kind}"], exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "agg")
    os.environ["nnUNet_compile"] = "0"
    os.environ["nnUNet_def_n_proc"] = "1"
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # planning needs >= 1; the runs set 0 for themselves


def prepare(work: str) -> None:
    """The dataset, nnU-Net's plans and preprocessing, the narrow configuration and the five-fold split,
    prepared as the demo prepares its own."""
    from dataclasses import asdict

    from nnunet_mcc.experiments.demo import prepare_dataset
    from nnunet_mcc.synthetic import SyntheticSpec

    spec = SyntheticSpec(**study_spec())
    prepare_dataset(work, dataset(), STUDY["dataset_id"], spec, BASE_CONFIGURATION, CONFIGURATION,
                    {"spec": asdict(spec), "network": STUDY["network"]})


# ---- one run -----------------------------------------------------------------------------------
def run_folder(variant: str, fold: int) -> str:
    return os.path.join(os.environ["nnUNet_results"], dataset(),
                        f"{STUDY['variants'][variant][0]}__{PLANS}__{CONFIGURATION}", f"fold_{fold}")


def worker(variant: str, fold: int, seed: int) -> int:
    """Train and validate one (variant, fold) in this process, on one CPU thread, seeded with ``seed + fold``
    (``NNUNET_MCC_SEED``, which the trainer reads)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json

    from nnunet_mcc.budget import SEED_VARIABLE
    from nnunet_mcc.fileio import write_json

    os.environ[SEED_VARIABLE] = str(seed + fold)
    torch.set_num_threads(1)
    from ablation_trainers import trainer_classes  # beside this script

    trainer_class = trainer_classes(STUDY["variants"])[variant]
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], dataset())
    plans = load_json(join(preprocessed, f"{PLANS}.json"))
    plans["continue_training"] = False  # nnU-Net's trainer pops this key (set by its get_trainer_from_args)
    dataset_json = load_json(join(preprocessed, "dataset.json"))
    trainer = trainer_class(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    started = time.time()
    trainer.run_training()
    trained = time.time() - started
    trainer.perform_actual_validation(False)
    budget = {"epochs": trainer.num_epochs, "iterations": trainer.num_iterations_per_epoch,
              "val_iterations": trainer.num_val_iterations_per_epoch, "probe_iterations": trainer.probe_iterations,
              "seed": trainer.seed - fold}
    write_json(os.path.join(trainer.output_folder, "ablation_run.json"),
               {"variant": variant, "fold": fold, "seed": trainer.seed, "training_seconds": round(trained, 1),
                "total_seconds": round(time.time() - started, 1), "budget": budget}, "run record")
    return 0


def run_is_current(variant: str, fold: int, budget: dict) -> bool:
    from nnunet_mcc.errors import UserError
    from nnunet_mcc.fileio import read_json

    folder = run_folder(variant, fold)
    if not os.path.isfile(os.path.join(folder, "validation", "summary.json")):
        return False
    try:
        return read_json(os.path.join(folder, "ablation_run.json"), "run record").get("budget") == budget
    except UserError:
        return False


def run_all(work: str, variants: Sequence[str], folds: Sequence[int], budget: dict, jobs: int) -> List[str]:
    """Start the missing runs, ``jobs`` at a time, each a fresh process (crossval's runner); return the failures."""
    import shutil

    from nnunet_mcc.budget import BUDGET_OPTIONS, SCHEDULE_VARIABLES, SNAPSHOT_VARIABLE, run_environment
    from nnunet_mcc.experiments.runner import TRAIN, Run, run_pending

    # augmentation in the training process (nnUNet_n_proc_DA=0) makes a seeded run reproducible bit for bit
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", nnUNet_n_proc_DA="0",
               MCC_ABLATION_PROBE_ITERATIONS=str(budget["probe_iterations"]))
    env.update(run_environment({name: budget[name] for name in BUDGET_OPTIONS}))
    env.update({variable: str(budget["epochs"]) for variable in SCHEDULE_VARIABLES.values()})  # once, at the end
    env.pop(SNAPSHOT_VARIABLE, None)
    todo = [Run(variant, fold, run_folder(variant, fold), TRAIN,
                [sys.executable, os.path.abspath(__file__), "--study", STUDY_NAME[0], "--work-dir", work,
                 "--seed", str(budget["seed"]), "--worker", variant, str(fold)])
            for fold in folds for variant in variants if not run_is_current(variant, fold, budget)]
    print(f"{len(todo)} runs to do ({len(variants) * len(folds) - len(todo)} reused), {jobs} at a time", flush=True)
    for run in todo:
        shutil.rmtree(run.folder, ignore_errors=True)
    failures = run_pending(todo, env, jobs, os.path.join(work, "logs"), log=lambda line: print(line, flush=True))
    return [f"{r.trainer} fold {r.fold} ({reason}, log {log})" for r, reason, log in failures]


# ---- the table ---------------------------------------------------------------------------------
def plateau(logging: dict, class_names: Sequence[str] = ()) -> dict:
    """nnU-Net's EMA pseudo Dice at two thirds of training and at the end, and the project's convergence
    verdict (``nnunet_mcc.experiments.convergence``, the criterion ``compare`` applies) on the raw series and the
    per-class pseudo Dice (``dice_per_class_or_region``, its entries named by ``class_names``)."""
    from nnunet_mcc.experiments.convergence import judge

    ema = logging["ema_fg_dice"]
    verdict = judge({k: logging.get(k) for k in ("mean_fg_dice", "mean_fg_mcc")}, None,
                    logging.get("dice_per_class_or_region"), class_names)
    if len(ema) < 2:
        return {"ema_two_thirds": None, "ema_end": None, "converged": verdict.converged}
    return {"ema_two_thirds": float(ema[(2 * len(ema)) // 3 - 1]), "ema_end": float(ema[-1]),
            "converged": verdict.converged, "convergence": verdict.describe()}


def collect(variants: Sequence[str], folds: Sequence[int]) -> dict:
    """Per variant and fold: Dice and MCC per class (mean over the fold's validation cases), plateau, time."""
    import torch

    from nnunet_mcc.experiments.results import COUNTS, read_summary, scores_from_counts
    from nnunet_mcc.fileio import read_json

    raw_json = read_json(os.path.join(os.environ["nnUNet_raw"], dataset(), "dataset.json"), "dataset.json")
    names = {str(v): k for k, v in raw_json["labels"].items() if k != "background"}
    runs = {}
    for variant in variants:
        for fold in folds:
            folder = run_folder(variant, fold)
            summary = os.path.join(folder, "validation", "summary.json")
            if not os.path.isfile(summary):
                continue
            rows = read_summary(summary, raw_json["file_ending"], names)
            per_class = {}
            for key in sorted(names, key=int):
                counts = {c: np.array([r[c] for r in rows if r["key"] == key]) for c in COUNTS}
                scores = scores_from_counts(*(counts[c] for c in COUNTS))
                per_class[key] = {"Dice": float(np.nanmean(scores["Dice"])), "MCC": float(np.nanmean(scores["MCC"])),
                                  "never_predicted_cases": int(np.sum(counts["TP"] + counts["FP"] == 0))}
            checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                                    weights_only=False)
            logging = checkpoint["logging"]
            record = read_json(os.path.join(folder, "ablation_run.json"), "run record")
            runs[f"{variant}/{fold}"] = {
                "variant": variant, "fold": fold, "per_class": per_class,
                "validation_cases": len({r["case"] for r in rows}),
                "ema_fg_dice": [float(v) for v in logging["ema_fg_dice"]],
                "pseudo_mcc_per_class": [[float(x) if x == x else None for x in v]
                                         for v in logging.get("mcc_per_class_or_region", [])],
                **plateau(logging, [names[k] for k in sorted(names, key=int)]), "seconds": record["total_seconds"],
                "budget": record["budget"]}
    return runs


def summarise(runs: dict, variants: Sequence[str], folds: Sequence[int]) -> List[dict]:
    rows = []
    for variant in variants:
        mine = [runs[f"{variant}/{f}"] for f in folds if f"{variant}/{f}" in runs]
        if not mine:
            continue
        row = {"variant": variant, "setting": STUDY["variants"][variant][1], "folds": len(mine),
               "converged": f"{sum(bool(r['converged']) for r in mine)}/{len(mine)}",
               "ema_two_thirds": float(np.mean([r["ema_two_thirds"] or np.nan for r in mine])),
               "ema_end": float(np.mean([r["ema_end"] or np.nan for r in mine])),
               "minutes_per_run": float(np.mean([r["seconds"] for r in mine])) / 60}
        # a class is lost in a fold when it is predicted in none of the fold's validation cases
        lost = {key: sum(r["per_class"][key]["never_predicted_cases"] == r["validation_cases"] for r in mine)
                for key in mine[0]["per_class"]}
        row["lost"] = ", ".join(f"class {k}: {n}" for k, n in lost.items() if n) or "none"
        for key in mine[0]["per_class"]:
            for metric in ("Dice", "MCC"):
                values = [r["per_class"][key][metric] for r in mine]
                row[f"{metric}_{key}"] = float(np.mean(values))
                row[f"{metric}_{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: List[dict], classes: Sequence[str], budget: dict) -> str:
    from nnunet_mcc.experiments.convergence import CRITERION

    header = ["variant"] + [f"Dice {c}" for c in classes] + [f"MCC {c}" for c in classes] + \
             ["folds that lost a class", "EMA pseudo Dice at 2/3 -> end", "converged", "min/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["variant"]]
        for metric in ("Dice", "MCC"):
            cells += [f"{row[f'{metric}_{c}']:.2f} ± {row[f'{metric}_{c}_std']:.2f}" for c in classes]
        cells += [row["lost"], f"{row['ema_two_thirds']:.2f} -> {row['ema_end']:.2f}", row["converged"],
                  f"{row['minutes_per_run']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± std over {rows[0]['folds'] if rows else 0} folds of each fold's mean over its validation "
                 f"cases; budget {budget['epochs']} epochs x {budget['iterations']} iterations, narrow configuration "
                 f"{CONFIGURATION}, CPU, one thread per run. Convergence criterion: {CRITERION}.")
    return "\n".join(lines) + "\n"


def report(work: str, variants: Sequence[str], folds: Sequence[int], budget: dict) -> str:
    import csv
    import io

    from nnunet_mcc.fileio import write_json, write_text

    runs = collect(variants, folds)
    rows = summarise(runs, variants, folds)
    classes = sorted({k for r in runs.values() for k in r["per_class"]}, key=int)
    table = markdown(rows, classes, budget)
    settings = {"study": STUDY_NAME[0], "dataset": study_spec(), "network": STUDY["network"],
                "configuration": CONFIGURATION, "budget": budget, "folds": list(folds),
                "seed": f"{budget['seed']} + fold", "variants": {v: STUDY["variants"][v][1] for v in variants}}
    write_json(os.path.join(work, "ablation.json"), {"settings": settings, "summary": rows, "runs": runs},
               "ablation results")
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(os.path.join(work, "ablation.csv"), buffer.getvalue(), "ablation table")
    write_text(os.path.join(work, "ablation.md"), table, "ablation table")
    from ablation_gradients import gradient_markdown, gradient_plot, gradient_summary, saturation_slopes

    gradients = gradient_summary(variants, folds, run_folder)
    write_json(os.path.join(work, "gradients.json"),
               {"settings": settings, "saturation_slopes": saturation_slopes(gradients),
                "per_variant_fold_class_epoch": gradients}, "gradient measurements")
    write_text(os.path.join(work, "gradients.md"), gradient_markdown(gradients), "gradient tables")
    gradient_plot(gradients, os.path.join(work, "gradients.png"), **STUDY["plot"])
    return table


# ---- command line ------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    global STUDY
    all_variants = {**MCC_VARIANTS, **GWDL_VARIANTS, **GWDL_CE_VARIANTS, **SEGAN_VARIANTS}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="variants:\n" + "\n".join(f"  {k:16s} {v[1]}" for k, v in all_variants.items()))
    parser.add_argument("--study", choices=list(STUDIES), default="mcc", help="the study (default: mcc)")
    parser.add_argument("--work-dir", help="work folder (default ./nnunet_mcc_work/ablation[_<study>], with --quick "
                                           "a _quick folder beside it)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the study's two main variants on fold 0, "
                             f"{QUICK['epochs']} epochs x {QUICK['iterations']} iterations (a couple of minutes)")
    parser.add_argument("--variants", nargs="+", choices=list(all_variants), help="variants to run (default: all of "
                                                                                   "the study's)")
    parser.add_argument("-f", "--folds", nargs="+", type=int, help="folds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the study's)")
    parser.add_argument("--iterations", type=int, help="iterations per epoch (default: the study's)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"base seed; fold f runs with seed + f (default {SEED}); use another --work-dir per seed")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="runs at the same time (default 2, one thread each)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from finished runs")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "FOLD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from nnunet_mcc.budget import check_budget_options
    from nnunet_mcc.errors import UserError

    STUDY, STUDY_NAME[0] = STUDIES[args.study], args.study
    try:
        unknown = [v for v in args.variants or () if v not in STUDY["variants"]]
        if unknown:
            raise UserError(f"--variants: {', '.join(unknown)} not in study {args.study!r} "
                            f"({', '.join(STUDY['variants'])})")
        default_work = STUDY["work_dir"] + ("_quick" if args.quick else "")
        work = os.path.abspath(args.work_dir or default_work)
        set_environment(work)
        if args.worker:
            return worker(args.worker[0], int(args.worker[1]), args.seed)
        preset = QUICK if args.quick else STUDY["full"]
        budget = {"epochs": args.epochs or preset["epochs"], "iterations": args.iterations or preset["iterations"],
                  "val_iterations": preset["val_iterations"], "probe_iterations": preset["probe_iterations"],
                  "seed": args.seed}
        variants = args.variants or (list(STUDY["quick_variants"]) if args.quick else list(STUDY["variants"]))
        folds = args.folds if args.folds is not None else preset["folds"]
        if any(f < 0 or f > 4 for f in folds):
            raise UserError(f"--folds: folds are 0-4, got {folds}")
        check_budget_options({"epochs": budget["epochs"], "iterations": budget["iterations"], "jobs": args.jobs})
        started = time.time()
        failures = []
        if not args.report_only:
            prepare(work)
            failures = run_all(work, variants, folds, budget, args.jobs)
        print(report(work, variants, folds, budget))
        print(f"results in {work} (ablation.md, ablation.csv, ablation.json, gradients.json, gradients.md, "
              f"gradients.png); {(time.time() - started) / 60:.1f} min")
        for failure in failures:
            print(f"failed: {failure}", file=sys.stderr)
        return 1 if failures else 0
    except UserError as e:
        print(f"ablation: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
