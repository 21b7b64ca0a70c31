"""The GPU check: loss costs, smoke trainings, epoch-time ratios and a prediction, in one command.

    python benchmarks/gpu_check.py --device cuda --output DIR [--budget-s 480]     # make gpu-check
    python benchmarks/gpu_check.py --device cpu --tiny --output DIR                 # a smoke run of the script

Four stages, in order, each timed (wall and CPU seconds):

1. ``losses``: forward + backward time and peak memory of this package's losses as the trainers build them
   (MCC with and without its missed-class gate, GWDL gated, Tversky gated, masked BCE, SegAN's multi-scale L1
   through the trainer's critic) against nnU-Net's ``DC_and_CE_loss`` with its Dice part compiled as nnU-Net
   compiles it (``torch.compile(loss.dc)``, on CUDA only), on (2, 4, 128^3) float16 logits under autocast
   (``--tiny``: (2, 4, 16^3)); on the CPU float32 without autocast, as nnU-Net trains there. Targets on CUDA:
   the gated MCC and GWDL at most 1.0x the reference in time and in peak memory.
2. ``training``: a synthetic 3D dataset planned by nnU-Net in the work folder, then ``nnUNetv2_train`` for
   ``nnUNetTrainerBaseline`` (the reference: nnU-Net's own Dice + CE and training loop; the class only adds the
   budget knobs that stock ``nnUNetTrainer`` lacks) and five trainers of this package, 2 epochs x 50
   iterations (``--tiny``: 1 x 2), with nnU-Net's defaults for the device (CUDA: autocast, GradScaler,
   ``torch.compile``). A run fails when it exits non-zero or logs a non-finite loss.
3. ``epoch_ratios``: each trainer's epoch time (nnU-Net's epoch timestamps; the epochs after the first, which
   compiles) and peak memory (the run's ``cost`` record) against the reference. Targets on CUDA: MCC at most
   1.02x, SegAN at most 1.35x.
4. ``predict``: ``nnUNetv2_predict -f 0 -tr nnUNetTrainerMCC`` on the dataset's test case; the file read back,
   its shape and labels checked.

When ``--budget-s`` runs out, the running process is stopped and every later stage is recorded as
"skipped: budget exhausted". Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--output`` (the commands'
logs under ``logs/``, the predicted file under ``prediction/``). Installs nothing, reaches no network. Exit status: 0 when every stage is ok and
every target that applies is met, 1 otherwise, 2 for bad arguments.
"""

import argparse
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from nnunet_mcc.errors import UserError  # noqa: E402
from nnunet_mcc.fileio import read_json, write_json, write_text  # noqa: E402

DEFAULT_OUTPUT = os.path.join("nnunet_mcc_work", "gpu_check")
DEFAULT_BUDGET_S = 480.0
BIN = os.path.dirname(sys.executable)
REFERENCE_LOSS = "nnU-Net DC_and_CE"
# nnU-Net's own Dice + CE and training loop, with the budget knobs stock nnUNetTrainer lacks (it trains 1000
# epochs of 250 iterations, or a fixed count in nnUNetTrainer_Xepochs) and the same cost record as the others
REFERENCE_TRAINER = "nnUNetTrainerBaseline"
TRAINERS = (REFERENCE_TRAINER, "nnUNetTrainerMCC", "nnUNetTrainerMCC_CE", "nnUNetTrainerGWDL", "nnUNetTrainerTversky",
            "nnUNetTrainerSegAN")
PREDICT_TRAINER = "nnUNetTrainerMCC"
LOSS_TARGETS = {"MCC gated": 1.0, "GWDL gated": 1.0}  # time and peak memory against the reference, on CUDA
EPOCH_TARGETS = {"nnUNetTrainerMCC": 1.02, "nnUNetTrainerSegAN": 1.35}  # epoch time against the reference
NOT_APPLICABLE = "not applicable: targets are for CUDA"
BUDGET_EXHAUSTED = "budget exhausted"
DATASET_ID, DATASET_NAME = 977, "GpuCheck"
# per size: loss tensors, dataset, training budget
SIZES = {
    "full": dict(loss_side=128, repeats=5, shape=(64, 64, 64), cases=8, epochs=2, iterations=50, val_iterations=10,
                 configuration="3d_fullres", small_network=None),
    "tiny": dict(loss_side=16, repeats=3, shape=(16, 16, 16), cases=5, epochs=1, iterations=2, val_iterations=1,
                 configuration="3d_fullres_small", small_network=dict(n_stages=3, base_features=4, batch_size=2)),
}
LOSS_BATCH, LOSS_CLASSES = 2, 4
# nnU-Net plans batch_dice False for 3d_fullres: every loss (reference included) takes per-sample statistics
BATCH_DICE = False
STAGES = (("losses", "loss forward+backward against DC_and_CE_loss"),
          ("training", "smoke training through nnUNetv2_train"),
          ("epoch_ratios", "epoch time and peak memory against the reference trainer"),
          ("predict", "nnUNetv2_predict and the prediction read back"))


# ---- clocks and the budget -------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float):
        self.seconds, self.started = float(seconds), time.perf_counter()

    def remaining(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def exhausted(self) -> bool:
        return self.remaining() <= 0


class StageFailed(Exception):
    """A stage that ran and failed; ``detail`` keeps what it measured before failing."""

    def __init__(self, message: str, detail: Optional[dict] = None):
        super().__init__(message)
        self.detail = detail or {}


# ---- processes -------------------------------------------------------------------------------------------
def _stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and the workers it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start(command: Sequence[str], env: Dict[str, str], log: str) -> subprocess.Popen:
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        return subprocess.Popen(list(command), env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run_all(commands: Dict[str, Tuple[List[str], Dict[str, str], str]], jobs: int, budget: Budget) -> Dict[str, dict]:
    """Run ``{name: (command, env, log)}`` ``jobs`` at a time within the budget: ``{name: {returncode,
    wall_seconds, stopped}}``; a command stopped by the budget has ``stopped`` True, one never started is absent."""
    pending, running, done = list(commands), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs and not budget.exhausted():
                name = pending.pop(0)
                running[name] = (start(*commands[name]), time.perf_counter())
            if budget.exhausted():
                break
            for name, (process, started) in list(running.items()):
                if process.poll() is not None:
                    done[name] = {"returncode": process.returncode, "wall_seconds": time.perf_counter() - started,
                                  "stopped": False}
                    del running[name]
            time.sleep(0.2)
    finally:  # the budget ran out, or this process is interrupted: its own sessions get no Ctrl-C
        for name, (process, started) in running.items():
            _stop(process)
            done[name] = {"returncode": process.returncode, "wall_seconds": time.perf_counter() - started,
                          "stopped": True}
    return done


def run_one(command: List[str], env: Dict[str, str], log: str, budget: Budget, what: str) -> None:
    """Run one command within the budget; StageFailed naming ``what`` and the log when it fails or is stopped."""
    result = run_all({what: (command, env, log)}, 1, budget).get(what)
    if result is None or result["stopped"]:
        raise StageFailed(f"{BUDGET_EXHAUSTED} during {what}")
    if result["returncode"] != 0:
        raise StageFailed(f"{what} exited with status {result['returncode']}; log: {log}")


# ---- stage 1: losses -------------------------------------------------------------------------------------
class _OwnTarget:
    """A loss with its own target (regions, one-hot), called as ``loss(logits, labels)`` like the others."""

    def __init__(self, loss: Callable, target):
        self.loss, self.target = loss, target

    def __call__(self, logits, labels):
        return self.loss(logits, self.target)


class _Autocast:
    """A loss run as nnU-Net's train_step runs it: under autocast on CUDA, plainly elsewhere."""

    def __init__(self, loss: Callable, device):
        self.loss, self.device = loss, device

    def __call__(self, logits, labels):
        import torch

        with torch.autocast("cuda", enabled=True) if self.device.type == "cuda" else nullcontext():
            return self.loss(logits, labels)


class _SegANTerm:
    """The segmentor's adversarial term as nnUNetTrainerSegAN computes it: softmax of the logits in float32,
    the multi-scale L1 through the frozen critic (``adversarial_l1``)."""

    def __init__(self, critic, image, onehot):
        self.critic, self.image, self.onehot = critic, image, onehot

    def __call__(self, logits, labels):
        import torch

        from nnunet_mcc.losses import adversarial_l1

        return adversarial_l1(self.critic, self.image, torch.softmax(logits.float(), 1), self.onehot)


def reference_loss(device):
    """nnU-Net's Dice + CE as nnUNetTrainer._build_loss builds it, ``loss.dc`` compiled where nnU-Net compiles."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": BATCH_DICE, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if device.type == "cuda":
        loss.dc = torch.compile(loss.dc)
    return loss


def segan_critic(side: int, device):
    """The critic nnUNetTrainerSegAN builds from nnU-Net's default 3D plans for a ``side``^3 patch: the encoder's
    stages after the first (stride 2, nnU-Net's widths 32 * 2^i up to 320, times the width factor)."""
    from nnunet_mcc.networks.segan_critic import SegANCritic
    from nnunet_mcc.trainers.segan import nnUNetTrainerSegAN as T

    unet_stages = 1
    while side // 2 ** unet_stages >= 4 and unet_stages < 6:
        unet_stages += 1
    stages = range(1, min(T.critic_max_stages, unet_stages - 1) + 1)
    features = [max(1, int(round(min(32 * 2 ** i, 320) * T.critic_width_factor))) for i in stages]
    critic = SegANCritic(1, LOSS_CLASSES, 3, features, [2] * len(features), mode=T.critic_mode,
                         spectral_norm=T.critic_spectral_norm)
    return critic.to(device)


def our_losses(labels, side: int, device) -> Dict[str, Callable]:
    """This package's losses with the settings their trainers use."""
    import torch

    from nnunet_mcc.experiments.demo import EVALUATION_REGIONS
    from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss, MaskedBCEWithLogits, MCCLoss, TverskyLoss
    from nnunet_mcc.losses.distance_matrix import hierarchy_distance_matrix
    from nnunet_mcc.trainers.gwdl import nnUNetTrainerGWDL as G
    from nnunet_mcc.trainers.mcc import nnUNetTrainerMCC as M
    from nnunet_mcc.trainers.tversky import nnUNetTrainerTversky as T

    common = dict(batch=BATCH_DICE, check_target=False)
    softmax = dict(apply_nonlin="softmax", include_background=False, **common)
    names = ["background", "edema", "non_enhancing_tumor", "enhancing_tumor"]  # the demo's labels, its tree matrix
    matrix = hierarchy_distance_matrix(EVALUATION_REGIONS, names)
    onehot = torch.nn.functional.one_hot(labels[:, 0].long(), LOSS_CLASSES).movedim(-1, 1).float()
    generator = torch.Generator().manual_seed(1)
    image = torch.randn((labels.shape[0], 1, *labels.shape[2:]), generator=generator).to(device)
    return {
        "MCC gated": MCCLoss(missed_weight=M.missed_weight, min_recall=M.missed_min_recall, **softmax),
        "MCC plain": MCCLoss(missed_weight=0.0, **softmax),
        "GWDL gated": GeneralizedWassersteinDiceLoss(matrix, weighting=G.gwdl_weighting,
                                                     missed_weight=G.gwdl_missed_weight, min_recall=G.gwdl_min_recall,
                                                     **common).to(device),
        "Tversky gated": TverskyLoss(alpha=T.tversky_alpha, beta=T.tversky_beta, gamma=T.tversky_gamma,
                                     missed_weight=T.tversky_missed_weight, min_recall=T.tversky_min_recall, **softmax),
        "masked BCE": _OwnTarget(MaskedBCEWithLogits(torch.tensor([1.0, 4.0, 8.0, 16.0])).to(device), onehot),
        "SegAN multi-scale L1": _SegANTerm(segan_critic(side, device), image, onehot),
    }


def loss_inputs(side: int, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (LOSS_BATCH, LOSS_CLASSES, side, side, side)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    logits = (torch.randn(shape, generator=generator) * 2).to(device=device, dtype=dtype)
    labels = torch.randint(0, LOSS_CLASSES, (LOSS_BATCH, 1, side, side, side), generator=generator).to(device)
    return logits, labels


def target_result(ratio: Optional[float], target: float, device: str) -> str:
    if device != "cuda":
        return NOT_APPLICABLE
    if ratio is None:
        return "fail: not measured"
    return "pass" if ratio <= target else "fail"


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return value / reference if value is not None and reference else None


def measure_losses(device, size: dict) -> Tuple[List[dict], dict]:
    """Every loss's value, median forward+backward time and (CUDA) peak memory: the rows and the logits' form."""
    from _measure import median_seconds, peak_bytes, step

    logits, labels = loss_inputs(size["loss_side"], device)
    losses = {REFERENCE_LOSS: reference_loss(device), **our_losses(labels, size["loss_side"], device)}
    losses = {name: _Autocast(loss, device) for name, loss in losses.items()}
    values = {name: step(loss, logits, labels) for name, loss in losses.items()}  # also the compile, on CUDA
    seconds = median_seconds(losses, logits, labels, device, size["repeats"])
    peaks = {name: peak_bytes(loss, logits, labels, device) / 2 ** 20 if device.type == "cuda" else None
             for name, loss in losses.items()}
    rows = [loss_row(name, values[name], seconds, peaks, device.type) for name in losses]
    return rows, {"shape": list(logits.shape), "dtype": str(logits.dtype).replace("torch.", "")}


def stage_losses(args, size: dict, budget: Budget, state: dict) -> dict:
    import torch

    device = torch.device(args.device)
    rows, logits = measure_losses(device, size)
    if device.type == "cuda":  # the trainings run in other processes on the same GPU
        torch.cuda.empty_cache()
    detail = {"logits": logits, "reference": REFERENCE_LOSS, "rows": rows}
    bad = [r["loss"] for r in rows if r["value"] is None]
    if bad:
        raise StageFailed(f"non-finite loss value: {', '.join(bad)}", detail)
    return detail


def loss_row(name: str, value: float, seconds: Dict[str, float], peaks: Dict[str, Optional[float]],
             device: str) -> dict:
    time_ratio = _ratio(seconds[name], seconds[REFERENCE_LOSS])
    memory_ratio = _ratio(peaks[name], peaks[REFERENCE_LOSS])
    row = {"loss": name, "value": value if math.isfinite(value) else None, "seconds": seconds[name],
           "time_ratio": time_ratio, "peak_mb": peaks[name], "memory_ratio": memory_ratio}
    if name in LOSS_TARGETS:
        target = LOSS_TARGETS[name]
        row["target"] = f"<= {target}x (time and memory)"
        row["result"] = target_result(time_ratio, target, device)
        if device == "cuda" and row["result"] == "pass":
            row["result"] = target_result(memory_ratio, target, device)
    return row


# ---- stage 2: training -----------------------------------------------------------------------------------
def base_env(work: str) -> Dict[str, str]:
    """This environment without nnU-Net's and this package's settings (the trainer lookup kept), with nnU-Net's
    folders inside the work folder."""
    keep = ("nnUNet_extTrainer", "NNUNET_MCC_NO_AUTOREGISTER")
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("nnUNet_", "NNUNET_MCC_"))}
    env.update(MPLBACKEND="agg", PYTHONUNBUFFERED="1")
    for kind in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{kind}"] = os.path.join(work, f"nnUNet_{kind}")
        os.makedirs(env[f"nnUNet_{kind}"], exist_ok=True)
    return env


def device_env(env: Dict[str, str], device: str, training: bool) -> Dict[str, str]:
    """nnU-Net's defaults for the device. CUDA: untouched (compile on, augmentation workers). CPU: no compile
    (nnU-Net refuses it there anyway), one export worker, augmentation in the training process (planning
    needs one worker)."""
    env = dict(env)
    if device == "cpu":
        env.update(nnUNet_compile="0", nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0" if training else "1")
    return env


def dataset_name() -> str:
    return f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def prepare_dataset(env: Dict[str, str], size: dict, device: str, budget: Budget, logs: str) -> dict:
    """The demo's synthetic dataset (its spec and label hierarchy) at this size with one test case, planned and
    preprocessed by nnU-Net, the narrow configuration under ``--tiny``, nnU-Net's five-fold split.

    Not the demo's ``prepare_dataset``: that leaves nnU-Net's fingerprinting at its default of 8 worker
    processes (measured on 2 busy cores: the fingerprints of 5 cases 70 s; the whole planning with one worker
    30 s), and its commands would run outside this check's budget."""
    from nnunet_mcc.experiments.demo import DEFAULT_SPEC, EVALUATION_REGIONS
    from nnunet_mcc.plans import add_small_configuration, plans_path
    from nnunet_mcc.synthetic import SyntheticSpec, make_synthetic_dataset

    spec = SyntheticSpec(**{**DEFAULT_SPEC, "shape": tuple(size["shape"]), "num_cases": size["cases"],
                            "num_test_cases": 1})
    folder = make_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, DATASET_NAME, spec, overwrite=True)
    dataset_json = read_json(os.path.join(folder, "dataset.json"), "dataset.json")
    write_json(os.path.join(folder, "dataset.json"), {**dataset_json, "evaluation_regions": EVALUATION_REGIONS},
               "dataset.json", indent=4)
    processes = "1" if device == "cpu" else str(min(4, os.cpu_count() or 1))
    command = [os.path.join(BIN, "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
               "-np", processes, "-npfp", processes, "--no_pbar"]
    run_one(command, device_env(env, device, training=False), os.path.join(logs, "plan_and_preprocess.log"), budget,
            "nnUNetv2_plan_and_preprocess")
    plans = plans_path(env["nnUNet_preprocessed"], dataset_name())
    if size["small_network"]:
        add_small_configuration(plans, "3d_fullres", size["configuration"], **size["small_network"])
    _write_splits()
    return {"spec": {"shape": list(spec.shape), "cases": spec.num_cases, "test_cases": spec.num_test_cases,
                     "foreground_classes": spec.num_foreground_classes,
                     "foreground_fraction": spec.foreground_fraction},
            "configuration": size["configuration"],
            "network": size["small_network"] or "nnU-Net's planned 3d_fullres network"}


def _write_splits() -> None:
    """nnU-Net's split written before the parallel runs, so they never race to create it (nnU-Net's folders are
    this process's too: :func:`check`)."""
    from nnunet_mcc.experiments.crossval import ensure_splits

    ensure_splits(dataset_name(), "3d_fullres", "nnUNetPlans", [0])


def training_env(env: Dict[str, str], size: dict, device: str, jobs: int) -> Dict[str, str]:
    from nnunet_mcc.budget import SCHEDULE_VARIABLES, SEED_VARIABLE, TORCH_THREADS_VARIABLE, run_environment

    env = {**device_env(env, device, training=True),
           **run_environment({"epochs": size["epochs"], "iterations": size["iterations"],
                              "val_iterations": size["val_iterations"]}),
           SCHEDULE_VARIABLES["plot_every"]: "1000000", SEED_VARIABLE: "0"}
    if device == "cpu" and jobs > 1:  # one thread per run: two runs on two cores
        env.update({TORCH_THREADS_VARIABLE: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def fold_folder(env: Dict[str, str], trainer: str, configuration: str) -> str:
    return os.path.join(env["nnUNet_results"], dataset_name(), f"{trainer}__nnUNetPlans__{configuration}", "fold_0")


def finite_numbers(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def run_record(name: str, outcome: Optional[dict], folder: str, log: str, epochs: int) -> dict:
    """One training run: its status, losses, epoch times and cost, from its exit status and training log."""
    if outcome is None:
        return {"trainer": name, "status": "skipped", "message": BUDGET_EXHAUSTED, "log": log}
    record = {"trainer": name, "returncode": outcome["returncode"], "wall_seconds": round(outcome["wall_seconds"], 3),
              "log": log}
    if outcome["stopped"]:
        return {**record, "status": "failed", "message": f"stopped: {BUDGET_EXHAUSTED}"}
    if outcome["returncode"] != 0:
        return {**record, "status": "failed", "message": f"nnUNetv2_train exited with status {outcome['returncode']}"}
    try:
        training_log = read_json(os.path.join(folder, "nnunet_mcc_log.json"), "training log")
    except UserError as e:
        return {**record, "status": "failed", "message": str(e)}
    series = training_log.get("series", {})
    record.update(train_losses=series.get("train_losses"), val_losses=series.get("val_losses"),
                  epoch_seconds=[round(e - s, 3) for s, e in zip(series.get("epoch_start_timestamps", []),
                                                                 series.get("epoch_end_timestamps", []))],
                  cost=training_log.get("cost"))
    return {**record, **_loss_check(record, epochs, folder)}


def _loss_check(record: dict, epochs: int, folder: str) -> dict:
    for key in ("train_losses", "val_losses"):
        values = record[key] or []
        if len(values) != epochs:
            return {"status": "failed", "message": f"{key}: {len(values)} epochs logged, expected {epochs}"}
        if not finite_numbers(values):
            return {"status": "failed", "message": f"non-finite loss in {key}: {values}"}
    if not os.path.isfile(os.path.join(folder, "checkpoint_final.pth")):
        return {"status": "failed", "message": "no checkpoint_final.pth"}
    return {"status": "ok", "message": ""}


def stage_training(args, size: dict, budget: Budget, state: dict) -> dict:
    env = state["env"]
    logs = os.path.join(args.output, "logs")
    dataset = prepare_dataset(env, size, args.device, budget, logs)
    jobs = min(2, os.cpu_count() or 1) if args.device == "cpu" else 1
    train_env = training_env(env, size, args.device, jobs)
    commands = {name: ([os.path.join(BIN, "nnUNetv2_train"), str(DATASET_ID), size["configuration"], "0", "-tr", name,
                        "-device", args.device], train_env, os.path.join(logs, f"train_{name}.log"))
                for name in args.trainers}
    outcomes = run_all(commands, jobs, budget)
    runs = [run_record(name, outcomes.get(name), fold_folder(env, name, size["configuration"]), commands[name][2],
                       size["epochs"]) for name in args.trainers]
    state["runs"] = {r["trainer"]: r for r in runs}
    variables = {k: v for k, v in train_env.items() if k.startswith(("nnUNet_", "NNUNET_MCC_", "OMP_", "MKL_"))
                 and k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    detail = {"dataset": dataset, "jobs": jobs, "environment": variables, "runs": runs}
    problems = [f"{r['trainer']}: {r['message']}" for r in runs if r["status"] != "ok"]
    if problems:
        raise StageFailed("; ".join(problems), detail)
    return detail


# ---- stage 3: epoch ratios -------------------------------------------------------------------------------
def epoch_time(run: dict) -> Optional[float]:
    """The median epoch after the first (which compiles, on CUDA), or the only epoch."""
    seconds = run.get("epoch_seconds") or []
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds) if seconds else None


def peak_memory(run: dict) -> Optional[float]:
    return (run.get("cost") or {}).get("peak_memory_mb")


def ratio_row(run: dict, reference: dict, device: str) -> dict:
    row = {"trainer": run["trainer"], "epoch_seconds": epoch_time(run),
           "epoch_ratio": _ratio(epoch_time(run), epoch_time(reference)), "peak_memory_mb": peak_memory(run),
           "peak_memory_kind": (run.get("cost") or {}).get("peak_memory_kind"),
           "memory_ratio": _ratio(peak_memory(run), peak_memory(reference))}
    if run["trainer"] in EPOCH_TARGETS:
        row["target"] = f"<= {EPOCH_TARGETS[run['trainer']]}x (epoch time)"
        row["result"] = target_result(row["epoch_ratio"], EPOCH_TARGETS[run["trainer"]], device)
    return row


def stage_epoch_ratios(args, size: dict, budget: Budget, state: dict) -> dict:
    runs = state.get("runs") or {}
    reference = runs.get(REFERENCE_TRAINER)
    if not reference or reference["status"] != "ok":
        raise StageFailed(f"the reference run {REFERENCE_TRAINER} did not finish")
    rows = [ratio_row(run, reference, args.device) for run in runs.values() if run["status"] == "ok"]
    epochs_used = "the epochs after the first" if size["epochs"] > 1 else "the only epoch"
    detail = {"reference": REFERENCE_TRAINER, "epochs_used": epochs_used, "rows": rows}
    missing = [name for name, run in runs.items() if run["status"] != "ok"]
    if missing:
        raise StageFailed(f"no ratio for {', '.join(missing)} (run not ok)", detail)
    return detail


# ---- stage 4: predict ------------------------------------------------------------------------------------
def stage_predict(args, size: dict, budget: Budget, state: dict) -> dict:
    run = (state.get("runs") or {}).get(PREDICT_TRAINER)
    if not run or run["status"] != "ok":
        raise StageFailed(f"no finished {PREDICT_TRAINER} run to predict with")
    env = device_env(state["env"], args.device, training=False)
    images = os.path.join(env["nnUNet_raw"], dataset_name(), "imagesTs")
    output = os.path.join(state["work"], "prediction")
    command = [os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", output, "-d", str(DATASET_ID), "-c",
               size["configuration"], "-f", "0", "-tr", PREDICT_TRAINER, "-device", args.device,
               "--disable_progress_bar"] + (["-npp", "0", "-nps", "0"] if args.device == "cpu" else [])
    run_one(command, env, os.path.join(args.output, "logs", "predict.log"), budget, "nnUNetv2_predict")
    kept = os.path.join(args.output, "prediction")
    labels = dataset_labels(env)
    cases = [check_prediction(output, images, name, kept, labels) for name in sorted(os.listdir(images))]
    detail = {"command": " ".join([os.path.basename(command[0])] + command[1:]), "cases": cases}
    problems = [f"{c['case']}: {c['message']}" for c in cases if c["message"]]
    if problems or not cases:
        raise StageFailed("; ".join(problems) or "no test case to predict", detail)
    return detail


def dataset_labels(env: Dict[str, str]) -> List[int]:
    """The label values of the dataset (dataset.json), the ignore label left out (its voxels are never predicted)."""
    labels = read_json(os.path.join(env["nnUNet_raw"], dataset_name(), "dataset.json"), "dataset.json")["labels"]
    return sorted(int(v) for k, v in labels.items() if k != "ignore" and not isinstance(v, list))


def check_prediction(output: str, images: str, image_name: str, kept: str, allowed: List[int]) -> dict:
    """The predicted file of one case read back: its shape against the input image, its labels; the file is
    copied to ``kept`` (the output folder outlives the work folder)."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_mcc.dataset_conversion.image_io import read_sitk

    case = image_name[:-len("_0000.nii.gz")]
    path = os.path.join(output, f"{case}.nii.gz")
    if not os.path.isfile(path):
        return {"case": case, "message": f"no prediction {path}"}
    prediction = sitk.GetArrayFromImage(read_sitk(path))
    expected = list(sitk.GetArrayFromImage(read_sitk(os.path.join(images, image_name))).shape)
    labels = sorted(int(v) for v in np.unique(prediction))
    message = ""
    if list(prediction.shape) != expected:
        message = f"shape {list(prediction.shape)}, expected {expected}"
    elif not set(labels) <= set(allowed):
        message = f"labels {labels}, not all among the dataset's {allowed}"
    os.makedirs(kept, exist_ok=True)
    shutil.copyfile(path, os.path.join(kept, os.path.basename(path)))
    return {"case": case, "file": os.path.join(kept, os.path.basename(path)), "shape": list(prediction.shape),
            "expected_shape": expected,
            "labels": labels, "message": message}


# ---- running the stages ----------------------------------------------------------------------------------
def run_stage(name: str, function: Callable, args, size: dict, budget: Budget, state: dict) -> dict:
    if budget.exhausted():
        return {"status": "skipped", "message": BUDGET_EXHAUSTED, "wall_seconds": 0.0, "cpu_seconds": 0.0}
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
        "device": args.device, "tiny": args.tiny, "budget_s": args.budget_s, "output": os.path.abspath(args.output),
        "work_dir": work, "work_dir_kept": kept,
        "losses": {"shape": [LOSS_BATCH, LOSS_CLASSES] + [size["loss_side"]] * 3,
                   "dtype": "float16 under autocast" if cuda else "float32, no autocast (nnU-Net's CPU training)",
                   "batch_dice": BATCH_DICE, "deep_supervision": False, "repeats": size["repeats"],
                   "timing": "median of repeats after a warm-up, interleaved; " + (
                       "torch.cuda.synchronize + perf_counter" if cuda else "perf_counter"),
                   "memory": "torch.cuda.max_memory_allocated above the inputs" if cuda else "not measured on cpu",
                   "reference": f"{REFERENCE_LOSS}: MemoryEfficientSoftDiceLoss + CE, " + (
                       "loss.dc compiled (torch.compile) as nnU-Net does on CUDA" if cuda
                       else "loss.dc not compiled (nnU-Net compiles only on CUDA)")},
        "training": {"trainers": list(args.trainers), "reference": REFERENCE_TRAINER,
                     "reference_why": "nnU-Net's own Dice + CE and training loop with the budget knobs stock "
                                      "nnUNetTrainer lacks",
                     "epochs": size["epochs"], "iterations": size["iterations"],
                     "val_iterations": size["val_iterations"], "configuration": size["configuration"],
                     "nnUNet_compile": "nnU-Net's default (on)" if cuda else "0",
                     "mixed_precision": "autocast + GradScaler (nnU-Net's CUDA default)" if cuda else "none (cpu)"},
        "targets": {"losses": {k: f"<= {v}x time and memory" for k, v in LOSS_TARGETS.items()},
                    "epoch_time": {k: f"<= {v}x" for k, v in EPOCH_TARGETS.items()},
                    "apply": "on cuda" if cuda else NOT_APPLICABLE},
    }


def failed_targets(stages: dict) -> List[str]:
    rows = stages["losses"].get("rows", []) + stages["epoch_ratios"].get("rows", [])
    return [r.get("loss") or r.get("trainer") for r in rows if str(r.get("result", "")).startswith("fail")]


# ---- the Markdown table ----------------------------------------------------------------------------------
def cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def status_cell(record: dict) -> str:
    return record["status"] + (f": {record['message']}" if record.get("message") else "")


def table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    v, s, stages = report["versions"], report["settings"], report["stages"]
    lines = ["# GPU check", "",
             f"Device {report['device']}" + (f" ({v['gpu']})" if v["gpu"] else "") + f"; torch {v['torch']}, "
             f"nnunetv2 {v['nnunetv2']}, nnunet-mcc {v['nnunet_mcc']}; {'tiny' if s['tiny'] else 'full'} sizes; "
             f"budget {s['budget_s']:g} s, used {report['wall_seconds']:.0f} s. Targets: {s['targets']['apply']}.",
             "", "## Stages", ""]
    lines += table(("stage", "status", "wall s", "CPU s"),
                   [(name, status_cell(r), r["wall_seconds"], r["cpu_seconds"]) for name, r in stages.items()])
    losses = stages["losses"]
    lines += ["", "## Losses against nnU-Net's DC_and_CE_loss", "",
              f"Logits {s['losses']['shape']} {s['losses']['dtype']}; {s['losses']['reference']}; "
              f"{s['losses']['timing']}; memory: {s['losses']['memory']}.", ""]
    lines += table(("loss", "ms", "time ratio", "peak MB", "memory ratio", "target", "result"),
                   [(r["loss"], r["seconds"] * 1000, r["time_ratio"], r["peak_mb"], r["memory_ratio"],
                     r.get("target"), r.get("result")) for r in losses.get("rows", [])])
    lines += ["", "## Smoke training and epoch ratios", "",
              f"{s['training']['epochs']} epoch(s) x {s['training']['iterations']} iterations, configuration "
              f"{s['training']['configuration']}; reference {s['training']['reference']}.", ""]
    ratios = {r["trainer"]: r for r in stages["epoch_ratios"].get("rows", [])}
    lines += table(("trainer", "status", "final train loss", "epoch s", "epoch ratio", "peak MB", "memory ratio",
                    "target", "result"),
                   [_training_row(run, ratios.get(run["trainer"], {})) for run in stages["training"].get("runs", [])])
    lines += ["", "## Prediction", ""]
    lines += table(("case", "shape", "labels", "problem"),
                   [(c["case"], c.get("shape"), c.get("labels"), c["message"] or "none")
                    for c in stages["predict"].get("cases", [])])
    return "\n".join(lines) + "\n"


def _training_row(run: dict, ratio: dict) -> tuple:
    losses = run.get("train_losses") or [None]
    return (run["trainer"], status_cell(run), losses[-1], ratio.get("epoch_seconds"), ratio.get("epoch_ratio"),
            ratio.get("peak_memory_mb"), ratio.get("memory_ratio"), ratio.get("target"), ratio.get("result"))


# ---- command line ----------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default cuda)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"folder for gpu_check.json, gpu_check.md and logs/ (default ./{DEFAULT_OUTPUT})")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock budget in seconds; later stages are skipped when it runs out "
                             f"(default {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of the check itself")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), metavar="NAME",
                        help=f"the trainers of the smoke trainings (default: {' '.join(TRAINERS)}); the reference "
                             f"{REFERENCE_TRAINER} is always trained, first")
    parser.add_argument("--work-dir", help="keep the dataset, trainings and prediction here (absent or empty; "
                                           "default: a temporary folder, removed at the end)")
    return parser.parse_args(argv)


def check_args(args) -> None:
    unknown = [name for name in args.trainers if name not in TRAINERS]
    if unknown:
        raise UserError(f"--trainers: {' '.join(unknown)} not among the checked trainers ({' '.join(TRAINERS)})")
    args.trainers = [REFERENCE_TRAINER] + [name for name in dict.fromkeys(args.trainers) if name != REFERENCE_TRAINER]
    if not math.isfinite(args.budget_s) or args.budget_s <= 0:
        raise UserError(f"--budget-s must be a positive number of seconds, got {args.budget_s:g}")
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
    env = base_env(work)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    state, stages = {"work": work, "env": env}, {}
    functions = {"losses": stage_losses, "training": stage_training, "epoch_ratios": stage_epoch_ratios,
                 "predict": stage_predict}
    try:
        for name, title in STAGES:
            stages[name] = {"title": title, **run_stage(name, functions[name], args, size, budget, state)}
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
    report = {"format": 1, "command": ["gpu_check.py", *argv], "device": args.device,
              "versions": versions(args.device), "settings": settings(args, size, work, kept),
              "wall_seconds": round(time.perf_counter() - started_wall, 3),
              "cpu_seconds": round(cpu_seconds() - started_cpu, 3), "stages": stages,
              "failed_targets": failed_targets(stages)}
    report["ok"] = all(s["status"] == "ok" for s in stages.values()) and not report["failed_targets"]
    return write_report(report, args.output)


def write_report(report: dict, output: str) -> int:
    """``gpu_check.json`` and ``gpu_check.md`` through the verified writers; the table printed; the exit status."""
    text = markdown(report)
    write_json(os.path.join(output, "gpu_check.json"), report, "GPU check record")
    write_text(os.path.join(output, "gpu_check.md"), text, "GPU check table")
    print(text)
    print(f"gpu_check: wrote {os.path.join(output, 'gpu_check.json')} and gpu_check.md "
          f"({report['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0 if report["ok"] else 1


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
