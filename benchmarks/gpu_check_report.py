"""The GPU check's targets, its one table and its record (``benchmarks/gpu_check.py``)."""

from typing import Dict, List, Optional, Sequence

REFERENCE_LOSS = "nnU-Net's DC_and_CE_loss (loss.dc compiled where nnU-Net compiles)"
# nnU-Net's own Dice + CE and training loop, with the budget knobs stock nnUNetTrainer lacks (it trains 1000
# epochs of 250 iterations, or a fixed count in nnUNetTrainer_Xepochs) and the same cost record as the others
REFERENCE_TRAINER = "nnUNetTrainerBaseline"
LOSS_TIME_TARGET = 1.0  # every trainer's loss against the reference's, forward+backward time
MEMORY_TARGET = 1.1  # peak memory of the loss and of the training against the reference's
EPOCH_TARGETS = {"nnUNetTrainerMCC": 1.02, "nnUNetTrainerGWDL": 1.02, "nnUNetTrainerTversky": 1.02,
                 "nnUNetTrainerSegAN": 1.35}
NOT_APPLICABLE = "not applicable: targets are for CUDA"


def over_target(name: str, loss: dict, ratios: dict, device: str) -> Optional[List[str]]:
    """The targets this trainer misses (``[]``: none), or None off CUDA (the targets are a GPU's)."""
    if device != "cuda" or name == REFERENCE_TRAINER:
        return None if device != "cuda" else []
    checks = [("loss time", loss.get("time_ratio"), LOSS_TIME_TARGET),
              ("loss memory", loss.get("memory_ratio"), MEMORY_TARGET),
              ("training memory", ratios.get("memory_ratio"), MEMORY_TARGET)]
    if name in EPOCH_TARGETS:
        checks.append(("epoch time", ratios.get("epoch_ratio"), EPOCH_TARGETS[name]))
    return [f"{what} {'not measured' if value is None else f'{value:.3f}x'} > {target}x"
            for what, value, target in checks if value is None or value > target]


def targets_record(device: str) -> dict:
    return {"loss_time": f"<= {LOSS_TIME_TARGET}x {REFERENCE_LOSS}", "memory": f"<= {MEMORY_TARGET}x (loss and "
            f"training peak)", "epoch_time": {k: f"<= {v}x {REFERENCE_TRAINER}" for k, v in EPOCH_TARGETS.items()},
            "apply": "on cuda" if device == "cuda" else NOT_APPLICABLE}


def cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


TRAINER_COLUMNS = ("trainer", "loss ratio", "loss memory ratio", "timed epochs", "epoch s", "epoch ratio",
                   "memory ratio", "predict s", "read back", "over target")


def trainer_row(name: str, record: dict) -> tuple:
    loss, run, predict = record.get("loss") or {}, record.get("training") or {}, record.get("predict") or {}
    ratios, over = record.get("ratios") or {}, record.get("over_target")
    read_back = predict.get("read_back")
    status = "" if run.get("status") in (None, "ok") else f"{run['status']}: {run.get('message', '')}; "
    return (name, loss.get("time_ratio"), loss.get("memory_ratio"), record.get("timed_epochs"),
            run.get("epoch_median_seconds"), ratios.get("epoch_ratio"), ratios.get("memory_ratio"),
            predict.get("seconds"), None if read_back is None else ("ok" if read_back["ok"] else "FAILED"),
            status + (NOT_APPLICABLE if over is None else ("OVER: " + "; ".join(over) if over else "no")))


def markdown(report: dict) -> str:
    v, s, stages = report["versions"], report["settings"], report["stages"]
    dataset = stages["dataset"]
    lines = ["# GPU check", "",
             f"Device {report['device']}" + (f" ({v['gpu']})" if v["gpu"] else "") + f"; torch {v['torch']}, "
             f"nnunetv2 {v['nnunetv2']}, nnunet-mcc {v['nnunet_mcc']}; dataset {s['dataset']}, configuration "
             f"{dataset.get('configuration')}, patch {dataset.get('patch_size')}, batch {dataset.get('batch_size')}; "
             f"{s['training']['epochs']} epochs x {s['training']['iterations']} iterations (the median of the epochs "
             f"after the first, which compiles); budget {s['budget_s']:g} s, used {report['wall_seconds']:.0f} s. "
             f"References: {REFERENCE_LOSS}, {REFERENCE_TRAINER}. Targets: {s['targets']['apply']}.", "",
             "## Trainers against the reference", ""]
    lines += table(TRAINER_COLUMNS, [trainer_row(name, r) for name, r in report["trainers"].items()])
    lines += ["", "## Stages", ""]
    lines += table(("stage", "status", "wall s", "CPU s"),
                   [(name, r["status"] + (f": {r['message']}" if r.get("message") else ""), r["wall_seconds"],
                     r["cpu_seconds"]) for name, r in stages.items()])
    return "\n".join(lines) + "\n"


def per_trainer(names: List[str], stages: dict, device: str) -> Dict[str, dict]:
    """``{trainer: {loss, training, timed_epochs, ratios, predict, over_target}}`` from the stages' details."""
    losses = {r["trainer"]: r for r in stages["losses"].get("rows", [])}
    runs = {r["trainer"]: r for r in stages["training"].get("runs", [])}
    predicts = stages["predict"].get("trainers", {})
    ratios = {r["trainer"]: r for r in stages["ratios"].get("rows", [])}
    out = {}
    for name in names:
        run = runs.get(name)
        out[name] = {"loss": losses.get(name), "training": run, "timed_epochs": (run or {}).get("timed_epochs", 0),
                     "ratios": ratios.get(name), "predict": predicts.get(name) or {"seconds": None, "read_back": None,
                                                                                 "status": "skipped"},
                     "over_target": over_target(name, losses.get(name) or {}, ratios.get(name) or {}, device)}
    return out
