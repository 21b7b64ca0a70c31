"""The GPU check: each trainer's loss, epoch time, peak memory and prediction against nnU-Net's, in one command.

    python benchmarks/gpu_check.py --device cuda --output DIR [--budget-s 600] [--dataset hippocampus]   # make gpu-check
    python benchmarks/gpu_check.py --device cpu --tiny --output DIR                 # a smoke run of the check

Five stages, in order, each timed (wall and CPU seconds); docs/gpu.md says what they measure and why:

1. ``dataset``: a synthetic dataset shaped like a public one (``--dataset``, ``gpu_check_data.py``), planned and
   preprocessed by nnU-Net: the check trains at nnU-Net's default 3d_fullres patch and batch for it.
2. ``losses``: each trainer's loss as the trainer builds it (deep supervision, compiled where nnU-Net compiles)
   on logits of that patch and batch, against nnU-Net's ``DC_and_CE_loss`` (``gpu_check_losses.py``).
3. ``training``: ``nnUNetv2_train`` for the reference ``nnUNetTrainerBaseline`` and each trainer, ``--epochs``
   x 50 iterations, nnU-Net's defaults for the device (CUDA: autocast, GradScaler, torch.compile), one at a time
   on CUDA; the median of the epochs after the first (which compiles), and the run's peak memory.
4. ``predict``: ``nnUNetv2_predict -f 0`` with each trained trainer, timed, every predicted file read back.
5. ``ratios``: epoch time and peak memory against the reference; the targets (``gpu_check_report.py``).

One table (loss ratio, epoch ratio, memory ratio per trainer, rows over target marked) is printed and written to
``gpu_check.md``, the record to ``gpu_check.json`` (per trainer ``timed_epochs`` and ``predict`` {seconds,
read_back}), logs under ``logs/``, the predicted files under ``prediction/``. When ``--budget-s`` runs out the
running process is stopped and what is left is recorded as "skipped: budget exhausted". Installs nothing,
reaches no network. Exit status: 0 when every stage is ok and no row is over target, 1 otherwise, 2 for bad
arguments.
"""

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from typing import Callable, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gpu_check_data as data  # noqa: E402
import gpu_check_report as report_  # noqa: E402
import gpu_check_train as train  # noqa: E402
from gpu_check_proc import BUDGET_EXHAUSTED, Budget, StageFailed, cpu_seconds, run_all  # noqa: E402

from nnunet_mcc.errors import UserError  # noqa: E402
from nnunet_mcc.fileio import write_json, write_text  # noqa: E402

DEFAULT_OUTPUT = os.path.join("nnunet_mcc_work", "gpu_check")
# an estimate for one H100 (not measured: docs/gpu.md): the dataset ~0.5 min, the losses ~1.5 min, five
# trainings of 4 x 50 iterations at the hippocampus plan's 40 x 56 x 40 x 9 with their compiles ~6 min, the
# predictions ~1 min
DEFAULT_BUDGET_S = 600.0
REFERENCE = report_.REFERENCE_TRAINER
TRAINERS = (REFERENCE, "nnUNetTrainerMCC", "nnUNetTrainerGWDL", "nnUNetTrainerTversky", "nnUNetTrainerSegAN")
OPTIONAL_TRAINERS = ("nnUNetTrainerMCC_CE", "nnUNetTrainerTversky_CE", "nnUNetTrainerGWDL_CE")
SIZES = {"full": dict(epochs=4, iterations=50, val_iterations=10),
         "tiny": dict(epochs=2, iterations=2, val_iterations=1)}
STAGES = (("dataset", "synthetic dataset planned by nnU-Net"),
          ("losses", "each trainer's loss against nnU-Net's DC_and_CE_loss"),
          ("training", "nnUNetv2_train per trainer"),
          ("predict", "nnUNetv2_predict per trainer and the predictions read back"),
          ("ratios", "epoch time and peak memory against the reference trainer"))


def stage_dataset(args, size: dict, budget: Budget, state: dict) -> dict:
    state["dataset"] = data.prepare_dataset(state["env"], args.dataset, args.device, budget,
                                            os.path.join(args.output, "logs"))
    return state["dataset"]


def stage_losses(args, size: dict, budget: Budget, state: dict) -> dict:
    import torch

    from gpu_check_losses import measure

    plans, dataset_json = data.plans_and_dataset_json(state["env"])
    rows, inputs = measure(list(args.trainers), plans, dataset_json, state["dataset"], torch.device(args.device))
    detail = {"inputs": inputs, "reference": report_.REFERENCE_LOSS, "rows": rows}
    bad = [r["trainer"] for r in rows if r["value"] is None]
    if bad:
        raise StageFailed(f"non-finite loss value: {', '.join(bad)}", detail)
    return detail


def stage_training(args, size: dict, budget: Budget, state: dict) -> dict:
    env, logs, configuration = state["env"], os.path.join(args.output, "logs"), state["dataset"]["configuration"]
    jobs = min(2, os.cpu_count() or 1) if args.device == "cpu" else 1
    train_env = train.training_env(env, {**size, "epochs": args.epochs}, args.device, jobs)
    commands = {name: (train.train_command(name, configuration, args.device), train_env,
                       os.path.join(logs, f"train_{name}.log")) for name in args.trainers}
    outcomes = run_all(commands, jobs, budget)
    runs = [train.run_record(name, outcomes.get(name), train.fold_folder(env, name, configuration), commands[name][2],
                             args.epochs) for name in args.trainers]
    state["runs"] = {r["trainer"]: r for r in runs}
    variables = {k: v for k, v in train_env.items() if k.startswith(("nnUNet_", "NNUNET_MCC_", "OMP_", "MKL_"))
                 and k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    detail = {"jobs": jobs, "environment": variables, "runs": runs}
    problems = [f"{r['trainer']}: {r['message']}" for r in runs if r["status"] != "ok"]
    if problems:
        raise StageFailed("; ".join(problems), detail)
    return detail


def stage_predict(args, size: dict, budget: Budget, state: dict) -> dict:
    done, configuration = {}, state["dataset"]["configuration"]
    for name, run in (state.get("runs") or {}).items():
        if run["status"] != "ok":
            done[name] = {"seconds": None, "read_back": None, "status": "skipped", "message": "no finished training"}
        elif budget.exhausted():
            done[name] = {"seconds": None, "read_back": None, "status": "skipped", "message": BUDGET_EXHAUSTED}
        else:
            done[name] = train.predict(name, configuration, args.device, state["env"], state["work"], args.output,
                                       budget)
    detail = {"trainers": done}
    problems = [f"{name}: {p['message']}" for name, p in done.items() if p["status"] != "ok"]
    if problems or not done:
        raise StageFailed("; ".join(problems) or "no trained trainer to predict with", detail)
    return detail


def stage_ratios(args, size: dict, budget: Budget, state: dict) -> dict:
    from gpu_check_losses import ratio

    runs = state.get("runs") or {}
    reference = runs.get(REFERENCE)
    if not reference or reference["status"] != "ok":
        raise StageFailed(f"the reference run {REFERENCE} did not finish")
    memory = {name: (run.get("cost") or {}).get("peak_memory_mb") for name, run in runs.items()}
    rows = [{"trainer": name, "epoch_seconds": run["epoch_median_seconds"],
             "epoch_ratio": ratio(run["epoch_median_seconds"], reference["epoch_median_seconds"]),
             "peak_memory_mb": memory[name], "peak_memory_kind": (run.get("cost") or {}).get("peak_memory_kind"),
             "memory_ratio": ratio(memory[name], memory[REFERENCE])} for name, run in runs.items()
            if run["status"] == "ok"]
    detail = {"reference": REFERENCE, "epochs_used": "the median of the epochs after the first", "rows": rows}
    missing = [name for name, run in runs.items() if run["status"] != "ok"]
    if missing:
        raise StageFailed(f"no ratio for {', '.join(missing)} (run not ok)", detail)
    return detail


FUNCTIONS = {"dataset": stage_dataset, "losses": stage_losses, "training": stage_training, "predict": stage_predict,
             "ratios": stage_ratios}


def run_stage(name: str, function: Callable, args, size: dict, budget: Budget, state: dict) -> dict:
    if budget.exhausted():
        return {"status": "skipped", "message": BUDGET_EXHAUSTED, "wall_seconds": 0.0, "cpu_seconds": 0.0}
    if name != "dataset" and "dataset" not in state:
        return {"status": "skipped", "message": "no dataset", "wall_seconds": 0.0, "cpu_seconds": 0.0}
    wall, cpu = time.perf_counter(), cpu_seconds()
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    try:
        detail, status, message = function(args, size, budget, state), "ok", ""
    except StageFailed as e:
        detail, status, message = e.detail, "failed", str(e)
    except Exception as e:  # a stage's own failure is a result of the check, not the end of it
        traceback.print_exc(file=sys.stderr)
        detail, status, message = {}, "failed", f"{type(e).__name__}: {e}"
    return {"status": status, "message": message, "wall_seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(cpu_seconds() - cpu, 3), **detail}


def versions(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import nnunet_mcc

    try:
        nnunet = version("nnunetv2")
    except PackageNotFoundError:
        nnunet = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "nnunetv2": nnunet, "nnunet_mcc": nnunet_mcc.__version__,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}


def settings(args, size: dict, work: str, kept: bool) -> dict:
    cuda = args.device == "cuda"
    return {
        "device": args.device, "tiny": args.tiny, "dataset": args.dataset, "budget_s": args.budget_s,
        "output": os.path.abspath(args.output), "work_dir": work, "work_dir_kept": kept,
        "losses": {"dtype": "float16 logits under autocast" if cuda else "float32, no autocast (nnU-Net's CPU "
                   "training)", "deep_supervision": "as the trainers build it", "timing": (
                       "median of interleaved repeats after a warm-up that compiles; torch.cuda.synchronize + "
                       "perf_counter" if cuda else "median of interleaved repeats after a warm-up; perf_counter"),
                   "memory": "torch.cuda.max_memory_allocated above the inputs" if cuda else "not measured on cpu",
                   "compile": "where nnU-Net's _do_i_compile says (CUDA, nnUNet_compile unset or true)" if cuda
                   else "none (nnU-Net never compiles on the CPU)"},
        "training": {"trainers": list(args.trainers), "reference": REFERENCE,
                     "reference_why": "nnU-Net's own Dice + CE and training loop with the budget knobs stock "
                                      "nnUNetTrainer lacks",
                     "epochs": args.epochs, "iterations": size["iterations"], "val_iterations": size["val_iterations"],
                     "timed": "the epochs after the first (which compiles)",
                     "nnUNet_compile": "nnU-Net's default (on)" if cuda else "0",
                     "mixed_precision": "autocast + GradScaler (nnU-Net's CUDA default)" if cuda else "none (cpu)"},
        "targets": report_.targets_record(args.device),
    }


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default cuda)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"folder for gpu_check.json, gpu_check.md and logs/ (default ./{DEFAULT_OUTPUT})")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock budget in seconds; what is left when it runs out is skipped "
                             f"(default {DEFAULT_BUDGET_S:g}, meant to fit 10 minutes on one H100)")
    parser.add_argument("--dataset", choices=("hippocampus", "brats"), default="hippocampus",
                        help="the public dataset the synthetic one is shaped like (default hippocampus; brats: "
                             "128^3 x 2, give it about 25 minutes)")
    parser.add_argument("--epochs", type=int, help="epochs per training, the first compiles (default 4: 3 timed; "
                                                   "--tiny 2)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of the check itself")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), metavar="NAME",
                        help=f"the trainers (default: {' '.join(TRAINERS)}; also {' '.join(OPTIONAL_TRAINERS)}); "
                             f"the reference {REFERENCE} is always trained, first")
    parser.add_argument("--work-dir", help="keep the dataset, trainings and prediction here (absent or empty; "
                                           "default: a temporary folder, removed at the end)")
    return parser.parse_args(argv)


def check_args(args) -> None:
    known = TRAINERS + OPTIONAL_TRAINERS
    unknown = [name for name in args.trainers if name not in known]
    if unknown:
        raise UserError(f"--trainers: {' '.join(unknown)} not among the checked trainers ({' '.join(known)})")
    args.trainers = [REFERENCE] + [name for name in dict.fromkeys(args.trainers) if name != REFERENCE]
    if not math.isfinite(args.budget_s) or args.budget_s <= 0:
        raise UserError(f"--budget-s must be a positive number of seconds, got {args.budget_s:g}")
    if args.epochs is None:
        args.epochs = SIZES["tiny" if args.tiny else "full"]["epochs"]
    elif args.epochs < 2:
        raise UserError(f"--epochs must be at least 2 (the first compiles and is not timed), got {args.epochs}")
    if args.tiny:
        args.dataset = "tiny"
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"--output {args.output} is a file, not a folder")
    if args.work_dir and os.path.exists(args.work_dir) and (not os.path.isdir(args.work_dir)
                                                            or os.listdir(args.work_dir)):
        raise UserError(f"--work-dir {args.work_dir} must be absent or an empty folder")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device cuda: CUDA is not available here (torch {torch.__version__}, CUDA build "
                            f"{torch.version.cuda or 'none'}, {torch.cuda.device_count()} devices visible); run "
                            "on a GPU machine, or use --device cpu --tiny for a smoke run of the check")


def make_folders(args) -> Tuple[str, bool]:
    try:
        os.makedirs(os.path.join(args.output, "logs"), exist_ok=True)
        if args.work_dir:
            os.makedirs(args.work_dir, exist_ok=True)
            return os.path.abspath(args.work_dir), True
        return tempfile.mkdtemp(prefix="nnunet_mcc_gpu_check_"), False
    except OSError as e:
        raise UserError(f"cannot create the output or work folder ({e.strerror or e})") from None


def check(args, argv: Sequence[str]) -> int:
    size = SIZES["tiny" if args.tiny else "full"]
    work, kept = make_folders(args)
    budget = Budget(args.budget_s)
    started_wall, started_cpu = time.perf_counter(), cpu_seconds()
    env = data.base_env(work)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    state, stages = {"work": work, "env": env}, {}
    try:
        for name, title in STAGES:
            stages[name] = {"title": title, **run_stage(name, FUNCTIONS[name], args, size, budget, state)}
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
    trainers = report_.per_trainer(list(args.trainers), stages, args.device)
    record = {"format": 2, "command": ["gpu_check.py", *argv], "device": args.device,
              "versions": versions(args.device), "settings": settings(args, size, work, kept),
              "wall_seconds": round(time.perf_counter() - started_wall, 3),
              "cpu_seconds": round(cpu_seconds() - started_cpu, 3), "trainers": trainers, "stages": stages,
              "over_target": {name: t["over_target"] for name, t in trainers.items() if t["over_target"]}}
    record["ok"] = all(s["status"] == "ok" for s in stages.values()) and not record["over_target"]
    return write_report(record, args.output)


def write_report(record: dict, output: str) -> int:
    """``gpu_check.json`` and ``gpu_check.md`` through the verified writers; the table printed; the exit status."""
    text = report_.markdown(record)
    write_json(os.path.join(output, "gpu_check.json"), record, "GPU check record")
    write_text(os.path.join(output, "gpu_check.md"), text, "GPU check table")
    print(text)
    print(f"gpu_check: wrote {os.path.join(output, 'gpu_check.json')} and gpu_check.md "
          f"({record['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0 if record["ok"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        check_args(args)
        return check(args, argv)
    except UserError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
