"""What the package's trainers record and keep: lazy short variants, budgets, provenance, the resume lock,
the validation MCC log and in-training snapshots."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import nnunet_mcc.trainers as trainers
from nnunet_mcc import provenance
from nnunet_mcc.budget import BUDGET_VARIABLES
from nnunet_mcc.metrics import mcc_score
from nnunet_e2e import run, train, trainer_output


# ---------------------------------------------------------------- short variants, built on demand
def test_any_epoch_variant_is_built_on_demand_and_is_one_class():
    cls = trainers.nnUNetTrainerMCC_37epochs
    assert cls is trainers.nnUNetTrainerMCC_37epochs and cls.budget_epochs == 37
    assert issubclass(cls, trainers.nnUNetTrainerMCC) and cls.__name__ == "nnUNetTrainerMCC_37epochs"
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert trainers.trainer_class("nnUNetTrainerGWDL_CE_1epoch").budget_epochs == 1
    for bad in ("nnUNetTrainerMCC_1epochs", "nnUNetTrainerMCC_5epoch", "nnUNetTrainerMCC_0epochs",
                "nnUNetTrainerNope_5epochs", "nnUNetTrainer_5epochs"):
        assert not hasattr(trainers, bad), bad


@pytest.mark.e2e  # a fresh interpreter
def test_importing_the_package_builds_no_variant_class():
    code = ("import nnunet_mcc.trainers as t, nnunet_mcc.trainers.variants as v\n"
            "print(len(v._CACHE), len(t.MAIN_TRAINERS), len(t.__all__))")
    cached, main, listed = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                   check=True).stdout.split())
    assert cached == 0 and main >= 15 and listed == main * 8


def test_nnunets_own_lookup_finds_a_variant_of_any_length(monkeypatch):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_mcc._ext_hook import TRAINER_FOLDER

    found = recursive_find_python_class(TRAINER_FOLDER, "nnUNetTrainerSegAN_3epochs", None,
                                        cleanup_imports_from_base_folder=True)
    assert found is trainers.nnUNetTrainerSegAN_3epochs and found.__module__ == "nnunet_mcc.trainers.segan"


def test_planned_budget_from_class_environment_and_defaults():
    assert trainers.nnUNetTrainerMCC.planned_budget({}) == provenance.NNUNET_DEFAULT_BUDGET
    assert trainers.nnUNetTrainerMCC_20epochs.planned_budget({})["num_epochs"] == 20
    env = {"NNUNET_MCC_EPOCHS": "8", "NNUNET_MCC_ITERATIONS": "12", "NNUNET_MCC_VAL_ITERATIONS": "3"}
    assert trainers.nnUNetTrainerMCC_20epochs.planned_budget(env) == {
        "num_epochs": 8, "num_iterations_per_epoch": 12, "num_val_iterations_per_epoch": 3}
    from nnunet_mcc.errors import UserError

    with pytest.raises(UserError, match="NNUNET_MCC_ITERATIONS='0' must be a positive integer"):
        trainers.nnUNetTrainerMCC.planned_budget({"NNUNET_MCC_ITERATIONS": "0"})


# ---------------------------------------------------------------- validation MCC in the log
def test_mcc_score_decides_the_undefined_cases():
    # present & never predicted -> 0; absent & not predicted -> NaN; absent but predicted -> 0; perfect -> 1
    score = mcc_score([0, 0, 0, 5], [0, 0, 3, 0], [7, 0, 0, 0], [93, 100, 97, 95])
    assert score[0] == 0 and np.isnan(score[1]) and score[2] == 0 and score[3] == 1


def test_logged_validation_mcc_is_zero_for_a_present_class_never_predicted(tmp_path):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunet_mcc.trainers.base import MCCLocalLogger

    trainer = object.__new__(trainers.nnUNetTrainerMCC)  # only what the validation-epoch hook reads
    trainer.is_ddp, trainer.current_epoch = False, 0
    trainer.logger = MetaLogger(str(tmp_path), False)
    trainer.logger.local_logger = MCCLocalLogger()
    # class 1 found perfectly; class 2 present (10 voxels) but never predicted; class 3 absent and not predicted
    outputs = [{"loss": np.array(0.5), "tp_hard": np.array([20, 0, 0]), "fp_hard": np.array([0, 0, 0]),
                "fn_hard": np.array([0, 10, 0]), "n_valid": 200}]
    trainer.on_validation_epoch_end(outputs)
    mcc = trainer.logger.get_value("mcc_per_class_or_region", step=0)
    assert mcc[0] == 1.0 and mcc[1] == 0.0 and np.isnan(mcc[2])
    assert trainer.logger.get_value("mean_fg_mcc", step=0) == 0.5


# ---------------------------------------------------------------- end to end: records, resume lock, snapshots
def _read(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


@pytest.mark.e2e
def test_records_snapshot_and_a_resumed_run_keeps_its_schedule(prepared, nnunet_env, e2e_cache, monkeypatch):
    dataset = prepared("2d_multiclass")
    trainer = "nnUNetTrainerMCC"
    env = dict(nnunet_env, NNUNET_MCC_EPOCHS="4", NNUNET_MCC_ITERATIONS="3", NNUNET_MCC_VAL_ITERATIONS="1",
               NNUNET_MCC_SNAPSHOT_EPOCHS="2")
    train(env, dataset, "2d_small", trainer)
    fold = trainer_output(nnunet_env["nnUNet_results"], dataset, trainer, "2d_small")

    record = _read(fold, provenance.PROVENANCE_FILE)
    assert record["budget"] == {"num_epochs": 4, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}
    assert record["budget_sources"]["num_epochs"] == "environment NNUNET_MCC_EPOCHS"
    assert record["loss"]["name"] == "soft MCC" and record["loss"]["settings"]["batch"] is True
    assert provenance.budget_from_debug_json(fold) == record["budget"]
    assert record["identity"] == {"missed_weight": 1.0, "min_recall": 0.5, "min_specificity": 0.9}  # the loss settings that are part of the run's identity
    # seeded from NNUNET_MCC_SEED, augmentation in the training process, on the CPU: repeatable bit for bit
    assert record["training"]["seed"] == 0 and record["training"]["seed_source"] == "environment"
    assert record["training"]["deterministic"] is True
    log = _read(fold, provenance.LOG_FILE)
    assert log["epochs_completed"] == 4 and len(log["series"]["mean_fg_mcc"]) == 4
    first_lrs = log["series"]["lrs"]
    cost = log["cost"]  # what the run cost, measured by the trainer
    assert cost["device"] == "cpu" and cost["train_iterations"] == 12 and cost["wall_seconds"] > 0
    assert cost["iterations_per_second"] > 0 and cost["torch_threads"] >= 1
    assert cost["peak_memory_kind"] == "process RSS (this run)" and cost["peak_memory_mb"] > 50

    # the snapshot is nnU-Net's evaluation of the validation cases after epoch 2
    snapshot = _read(os.path.dirname(provenance.snapshot_summary(fold, 2)), "summary.json")
    final = _read(os.path.join(fold, "validation"), "summary.json")
    assert snapshot["epoch"] == 2 and snapshot["iterations"] == 6
    assert sorted(c["reference_file"] for c in snapshot["metric_per_case"]) == \
        sorted(c["reference_file"] for c in final["metric_per_case"])
    assert set(snapshot["metric_per_case"][0]["metrics"]) == set(final["metric_per_case"][0]["metrics"])
    assert os.path.isfile(os.path.join(fold, "checkpoint_epoch_2.pth"))
    assert not os.path.exists(provenance.snapshot_summary(fold, 4))  # the final validation is the last score

    # make it an interrupted run: the state after epoch 2, as checkpoint_latest.pth
    checkpoint = torch.load(os.path.join(fold, "checkpoint_epoch_2.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    torch.save(checkpoint, os.path.join(fold, "checkpoint_latest.pth"))
    os.remove(os.path.join(fold, "checkpoint_final.pth"))

    # a conflicting budget in the shell is refused with one line, before anything changes
    conflicting = dict(env, NNUNET_MCC_EPOCHS="9")
    proc = run(["nnUNetv2_train", dataset, "2d_small", "0", "-tr", trainer, "-device", "cpu", "--c"], conflicting,
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    refusal = [line for line in proc.stderr.splitlines() if "NNUNET_MCC_EPOCHS=9" in line]
    assert len(refusal) == 1 and "started with 4 epochs x 3 iterations" in refusal[0]
    assert "Traceback" not in proc.stderr and not os.path.exists(os.path.join(fold, "checkpoint_final.pth"))

    # resumed from a shell without the budget variables: the recorded schedule continues (not 1000 epochs)
    plain = {k: v for k, v in env.items() if k not in BUDGET_VARIABLES.values()}
    run(["nnUNetv2_train", dataset, "2d_small", "0", "-tr", trainer, "-device", "cpu", "--c"], plain)
    log = _read(fold, provenance.LOG_FILE)
    assert log["epochs_completed"] == 4 and log["series"]["lrs"] == first_lrs  # same learning-rate schedule
    record = _read(fold, provenance.PROVENANCE_FILE)
    assert record["budget"]["num_epochs"] == 4 and record["budget_sources"]["num_epochs"] == "resumed run"
    assert record["started_at_epoch"] == 2
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    cost = _read(fold, provenance.LOG_FILE)["cost"]  # the resumed run adds its epochs to the recorded ones
    assert cost["resumed"] is True and cost["train_iterations"] == 12 + 6

    # the snapshot path is nnU-Net's own prediction and evaluation: on the final network it reproduces
    # nnU-Net's validation/summary.json case by case
    preprocessed = os.path.join(e2e_cache, "preprocessed")
    monkeypatch.setenv("nnUNet_preprocessed", preprocessed)
    monkeypatch.setenv("nnUNet_results", nnunet_env["nnUNet_results"])
    plans = _read(os.path.join(preprocessed, dataset), "nnUNetPlans.json")
    plans["continue_training"] = False
    loaded = trainers.nnUNetTrainerMCC(plans, "2d_small", 0, _read(os.path.join(preprocessed, dataset), "dataset.json"),
                                       device=torch.device("cpu"))
    loaded.load_checkpoint(os.path.join(fold, "checkpoint_final.pth"))
    again = _read(os.path.dirname(loaded.validate_snapshot(4)), "summary.json")
    final = {os.path.basename(c["reference_file"]): c["metrics"] for c in
             _read(os.path.join(fold, "validation"), "summary.json")["metric_per_case"]}
    for case in again["metric_per_case"]:
        for label, values in case["metrics"].items():
            reference = final[os.path.basename(case["reference_file"])][label]
            assert [values[m] for m in ("TP", "FP", "FN", "TN")] == [reference[m] for m in ("TP", "FP", "FN", "TN")]


@pytest.mark.e2e
def test_nnunet_default_budget_matches_nnunets_trainer(prepared, e2e_cache, tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    dataset = prepared("2d_multiclass")
    preprocessed = os.path.join(e2e_cache, "preprocessed")
    monkeypatch.setenv("nnUNet_preprocessed", preprocessed)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = _read(os.path.join(preprocessed, dataset), "nnUNetPlans.json")
    plans["continue_training"] = False
    stock = nnUNetTrainer(plans, "2d_small", 0, _read(os.path.join(preprocessed, dataset), "dataset.json"),
                          device=torch.device("cpu"))
    assert {k: getattr(stock, k) for k in provenance.BUDGET_KEYS} == provenance.NNUNET_DEFAULT_BUDGET
