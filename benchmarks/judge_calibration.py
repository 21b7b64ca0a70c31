"""Is compare's convergence judge right? Its verdicts at a budget B checked against the same runs trained at 2B.

What the judge has to predict is whether a **longer schedule** scores better (nnU-Net's poly learning rate is
near zero at the end of any run, so "training on" means a new schedule, as ``crossval --auto-budget`` does).
The truth: every (trainer, seed, fold) is trained twice, at B and at 2B epochs (a new run each, same seed, same
split), by ``benchmarks/study.py``; a run is **truly still rising at B** when the foreground-mean Dice of nnU-Net's
final validation (``validation/summary.json``, over the fold's validation cases, with mirroring; not the
pseudo Dice) is at least ``--gain`` (0.02) higher at 2B than at B.

Each rule below judges the run at B from its training log alone (``nnunet_mcc_log.json``: the per-epoch
validation pseudo Dice, pseudo MCC, nnU-Net's EMA pseudo Dice, validation loss, per-class pseudo Dice), and the
confusion table counts its calls against the truth: true / false "rising" and true / false "converged". A false
"converged" is the costly error (the comparison rests on a run that a longer schedule would change); a false
"rising" costs a retraining.

Rules (``rules()``; "class" = some class's per-epoch pseudo Dice below 0.05 over the whole window; "significant"
= a one-sided Mann-Kendall p < 0.05 over the window, the last half of the epochs unless said):
* ``current``: compare's judge (``nnunet_mcc.experiments.convergence.judge``): pseudo Dice or MCC significant with a
  gain of a doubled schedule >= 0.02 (Theil-Sen slope against log(iterations) x log 2), or class;
* ``log fit, pseudo Dice alone``: the same on the pseudo Dice alone;
* ``linear``: the rule before this benchmark: significant with a linear projection >= 0.02 (Theil-Sen slope against
  iterations x the window's length), or class; ``linear, no class rule``; ``class only``: the class rule alone;
* ``linear, quarter window``: over the last quarter (at least 5 epochs), or class;
* ``linear, tolerance 0.01``: a projection of 0.01 suffices, or class;
* ``log fit, tolerance 0.01`` and ``log fit, quarter window``: the current rule with half its tolerance, or over
  the last quarter of the epochs;
* ``linear on the EMA`` and ``log fit on the EMA``: on nnU-Net's EMA pseudo Dice instead of the raw series, or class;
* ``validation loss``: the validation loss still falls significantly, or class.

    python benchmarks/judge_calibration.py --dataset rare -tr nnUNetTrainerBaseline nnUNetTrainerMCC \\
        --seeds 0 1 2 3 4 -f 0 1 2 --epochs 50 --work-dir nnunet_mcc_work/study

The runs at B are those of ``study.py --work-dir W`` (``W/<dataset>``, reused when finished: a robustness study at
the same budget serves); those at 2B go to ``W/<2B>epochs/<dataset>``. When every run is there at both budgets,
nothing is trained and the tables are computed again (runs trained elsewhere can be copied in: only each run's
``validation/summary.json`` and ``nnunet_mcc_log.json`` are read). Results: ``calibration.md`` and
``calibration.json`` in the 2B folder (the table per rule and per trainer, every run's gain and calls).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import study  # noqa: E402  (the study runner: datasets, network, training)

GAIN = 0.02


def _trend_rule(series_names: Sequence[str], fraction: float = 0.5, tolerance: float = 0.02,
                class_rule: bool = True, log_fit: bool = False) -> Callable[[dict], bool]:
    """A rule: rising when some named series rises significantly over the last ``fraction`` of the epochs with a
    projected gain >= ``tolerance`` (Theil-Sen over iterations, or over log iterations times log 2 with
    ``log_fit``), or (``class_rule``) some class sat below the floor over that window."""
    from nnunet_mcc.experiments import convergence

    def rule(log: dict) -> bool:
        series, per_epoch = log["series"], float(log.get("iterations_per_epoch") or 1)
        epochs = len(series.get("mean_fg_dice") or [])
        window = max(convergence.MIN_WINDOW_EPOCHS, int(math.ceil(fraction * epochs)))
        for name in series_names:
            values = np.asarray([np.nan if v is None else v for v in series.get(name) or []], dtype=float)
            if name == "val_losses":
                values = -values  # a falling loss is a rising score
            if values.size < 3:
                continue
            tail = values[-window:]
            if log_fit:
                from scipy.stats import theilslopes

                t = np.log((np.arange(values.size - tail.size, values.size) + 1) * per_epoch)
                keep = np.isfinite(tail)
                gain = float(theilslopes(tail[keep], t[keep])[0] * math.log(2)) if keep.sum() >= 3 else float("nan")
            else:
                gain = convergence.projected_gain(tail, per_epoch)
            p = convergence.rise_p_value(tail)
            big_enough = gain >= tolerance if name != "val_losses" else True
            if math.isfinite(gain) and big_enough and p < convergence.ALPHA:
                return True
        if class_rule:
            return bool(convergence.classes_at_zero(series.get("dice_per_class_or_region"), window, epochs))
        return False

    return rule


def _current(log: dict) -> bool:
    from nnunet_mcc.experiments import convergence

    series = log["series"]
    verdict = convergence.judge({k: series.get(k) for k in convergence.SERIES}, log.get("iterations_per_epoch"),
                                series.get("dice_per_class_or_region"))
    return verdict.status != convergence.YES


def _class_only(log: dict) -> bool:
    from nnunet_mcc.experiments import convergence

    series = log["series"]
    epochs = len(series.get("mean_fg_dice") or [])
    window = max(convergence.MIN_WINDOW_EPOCHS, int(math.ceil(convergence.WINDOW_FRACTION * epochs)))
    return bool(convergence.classes_at_zero(series.get("dice_per_class_or_region"), window, epochs))


def rules() -> Dict[str, Callable[[dict], bool]]:
    both = ("mean_fg_dice", "mean_fg_mcc")
    return {
        "current": _current,
        "log fit, pseudo Dice alone": _trend_rule(("mean_fg_dice",), log_fit=True),
        "linear": _trend_rule(both),
        "linear, no class rule": _trend_rule(both, class_rule=False),
        "class only": _class_only,
        "linear, quarter window": _trend_rule(both, fraction=0.25),
        "linear, tolerance 0.01": _trend_rule(both, tolerance=0.01),
        "log fit, tolerance 0.01": _trend_rule(both, tolerance=0.01, log_fit=True),
        "log fit, quarter window": _trend_rule(both, fraction=0.25, log_fit=True),
        "linear on the EMA": _trend_rule(("ema_fg_dice",)),
        "log fit on the EMA": _trend_rule(("ema_fg_dice",), log_fit=True),
        "validation loss": _trend_rule(("val_losses",)),
    }


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fold_results(work: str, dataset: str, trainers: Sequence[str], seeds: Sequence[int],
                 folds: Sequence[int]) -> Dict[tuple, dict]:
    """(trainer, seed, fold) -> {"dice": foreground-mean Dice of the final validation, "log": the training log}
    for every finished run of a study folder."""
    entry = study.DATASETS[dataset]
    name = f"Dataset{entry['dataset_id']:03d}_{entry['name']}"
    configuration = ("2d" if len(entry["shape"]) == 2 else "3d_fullres") + "_small"
    out = {}
    for trainer in trainers:
        for seed in seeds:
            for fold in folds:
                folder = os.path.join(work, "nnUNet_results", name, f"{trainer}_seed{seed}__nnUNetPlans__"
                                      f"{configuration}", f"fold_{fold}")
                summary = _read_json(os.path.join(folder, "validation", "summary.json"))
                log = _read_json(os.path.join(folder, "nnunet_mcc_log.json"))
                if summary is None or log is None:
                    continue
                out[(trainer, seed, fold)] = {"dice": float(summary["foreground_mean"]["Dice"]), "log": log}
    return out


def confusion(calls: Dict[tuple, bool], truth: Dict[tuple, bool]) -> dict:
    keys = [k for k in calls if k in truth]
    table = {"true rising": 0, "false rising": 0, "true converged": 0, "false converged": 0}
    for k in keys:
        rising, truly = calls[k], truth[k]
        table[("true " if rising == truly else "false ") + ("rising" if rising else "converged")] += 1
    table["runs"] = len(keys)
    return table


def _train(dataset: str, trainers, seeds, folds, epochs: int, work_dir: str, jobs: int, extra=()) -> None:
    cmd = [sys.executable, os.path.join(HERE, "study.py"), "--dataset", dataset, "-tr", *trainers, "--seeds",
           *map(str, seeds), "-f", *map(str, folds), "--epochs", str(epochs), "-j", str(jobs), "--work-dir",
           work_dir, *extra]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode not in (0, 1):  # 1: some run did not finish; the table uses the finished ones
        raise SystemExit(f"judge_calibration: the study exited {proc.returncode}")


def markdown(tables: Dict[str, dict], per_trainer: Dict[str, Dict[str, dict]], settings: dict,
             gains: List[dict]) -> str:
    head = ["rule", "runs", "true rising", "false rising", "true converged", "**false converged**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule, t in tables.items():
        lines.append(f"| {rule} | {t['runs']} | {t['true rising']} | {t['false rising']} | {t['true converged']} | "
                     f"**{t['false converged']}** |")
    lines += ["", "Per trainer, the current rule:", "",
              "| trainer | runs | truly rising at B | true rising | false rising | true converged | false converged |",
              "|---|---|---|---|---|---|---|"]
    for trainer, by_rule in per_trainer.items():
        t = by_rule["current"]
        truly = t["true rising"] + t["false converged"]
        lines.append(f"| {trainer} | {t['runs']} | {truly} | {t['true rising']} | {t['false rising']} | "
                     f"{t['true converged']} | {t['false converged']} |")
    rising = [g for g in gains if g["truly_rising"]]
    lines += ["", f"Runs truly still rising at B (foreground-mean Dice at 2B minus at B >= {settings['gain']}): "
              + ("; ".join(f"{g['trainer']} seed {g['seed']} fold {g['fold']} {g['dice_b']:.3f} -> "
                           f"{g['dice_2b']:.3f}" for g in rising) or "none") + ".",
              "", f"Dataset {settings['dataset']}, B = {settings['epochs']} epochs x {settings['iterations']} "
              f"iterations, 2B = {2 * settings['epochs']} epochs (a new schedule each, same seeds and splits); "
              f"seeds {' '.join(map(str, settings['seeds']))}, folds {' '.join(map(str, settings['folds']))}. "
              f"Command: {settings['command']}; {settings['wall_seconds']:.0f} s wall, "
              f"{settings['cpu_seconds']:.0f} CPU-s (training at 2B, and at B where it was not already there)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(study.DATASETS), default="rare")
    parser.add_argument("-tr", "--trainers", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=50, help="B in epochs (default 50: the demo's budget)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--gain", type=float, default=GAIN, help="what 'truly still rising' means (default 0.02)")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--work-dir", default=os.path.join("nnunet_mcc_work", "study"))
    args = parser.parse_args(argv)
    started, cpu0 = time.time(), study._cpu_seconds()
    budget_b = os.path.abspath(os.path.join(args.work_dir, args.dataset))
    twice = os.path.abspath(os.path.join(args.work_dir, f"{2 * args.epochs}epochs"))
    budget_2b = os.path.join(twice, args.dataset)
    wanted = len(args.trainers) * len(args.seeds) * len(args.folds)
    common = (args.dataset, args.trainers, args.seeds, args.folds)
    if len(fold_results(budget_b, *common)) < wanted:
        _train(*common, args.epochs, os.path.abspath(args.work_dir), args.jobs, ("--iterations", str(args.iterations)))
    if len(fold_results(budget_2b, *common)) < wanted:
        _train(*common, 2 * args.epochs, twice, args.jobs, ("--iterations", str(args.iterations)))
    at_b, at_2b = fold_results(budget_b, *common), fold_results(budget_2b, *common)
    keys = sorted(set(at_b) & set(at_2b))
    truth = {k: at_2b[k]["dice"] - at_b[k]["dice"] >= args.gain for k in keys}
    all_rules = rules()
    calls = {name: {k: bool(rule(at_b[k]["log"])) for k in keys} for name, rule in all_rules.items()}
    tables = {name: confusion(c, truth) for name, c in calls.items()}
    per_trainer = {t: {name: confusion({k: v for k, v in c.items() if k[0] == t}, truth)
                       for name, c in calls.items()} for t in args.trainers}
    gains = [{"trainer": k[0], "seed": k[1], "fold": k[2], "dice_b": at_b[k]["dice"], "dice_2b": at_2b[k]["dice"],
              "truly_rising": truth[k], "calls": {name: calls[name][k] for name in calls}} for k in keys]
    settings = {"dataset": args.dataset, "trainers": args.trainers, "seeds": args.seeds, "folds": args.folds,
                "epochs": args.epochs, "iterations": args.iterations, "gain": args.gain,
                "command": "python benchmarks/judge_calibration.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "wall_seconds": time.time() - started, "cpu_seconds": study._cpu_seconds() - cpu0}
    from nnunet_mcc.fileio import write_json, write_text

    text = markdown(tables, per_trainer, settings, gains)
    write_json(os.path.join(budget_2b, "calibration.json"),
               {"settings": settings, "tables": tables, "per_trainer": per_trainer, "runs": gains}, "calibration")
    write_text(os.path.join(budget_2b, "calibration.md"), text, "calibration table")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
