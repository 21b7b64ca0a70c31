"""Seeded trainer variants (``<Trainer>[_<N>epochs]_seed<S>``), the seed rule, and the cost a run records.

No training: the trainers are built from a small plans dictionary (nnU-Net's ``__init__`` needs no
preprocessed data) and their epoch hooks are driven by hand.
"""

import json
import os
import pickle
import time
import types

import pytest
import torch

import nnunet_mcc.trainers as trainers
from nnunet_mcc import provenance
from nnunet_mcc.errors import UserError
from nnunet_mcc.budget import check_environment, seed_variant_name, split_seed

PLANS = {
    "dataset_name": "Dataset990_Seeds", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [999.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 32, 32],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {},
    "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [32, 32], "median_image_size_in_voxels": [32.0, 32.0], "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": True}},
}
DATASET_JSON = {"channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}


@pytest.fixture
def results(tmp_path, monkeypatch):
    for name in ("NNUNET_MCC_SEED", "NNUNET_MCC_JOBS", "nnUNet_n_proc_DA", "NNUNET_MCC_EPOCHS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return tmp_path / "results"


def build(name):
    plans = json.loads(json.dumps(PLANS))
    plans["continue_training"] = False
    return trainers.trainer_class(name)(plans, "2d", 0, dict(DATASET_JSON), device=torch.device("cpu"))


# ---------------------------------------------------------------- names
def test_split_seed_and_seed_variant_name():
    assert split_seed("nnUNetTrainerMCC_50epochs_seed1") == ("nnUNetTrainerMCC_50epochs", 1)
    assert split_seed("nnUNetTrainerMCC_seed0") == ("nnUNetTrainerMCC", 0)
    assert split_seed("nnUNetTrainerMCC_seed12") == ("nnUNetTrainerMCC", 12)
    for unseeded in ("nnUNetTrainerMCC", "nnUNetTrainerMCC_seed01", "nnUNetTrainerMCC_seed-1",
                     "nnUNetTrainerMCC_seed1_50epochs", "nnUNetTrainerMCC_seed", "_seed1"):
        assert split_seed(unseeded) == (unseeded, None), unseeded
    assert seed_variant_name("nnUNetTrainerMCC_50epochs", 1) == "nnUNetTrainerMCC_50epochs_seed1"
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError):
            seed_variant_name("nnUNetTrainerMCC", bad)
    with pytest.raises(ValueError, match="carries a seed"):
        seed_variant_name("nnUNetTrainerMCC_seed1", 2)


def test_seed_variants_are_built_on_demand_cached_and_picklable():
    cls = trainers.nnUNetTrainerMCC_50epochs_seed1
    assert cls is trainers.trainer_class("nnUNetTrainerMCC_50epochs_seed1")
    assert cls.__name__ == "nnUNetTrainerMCC_50epochs_seed1" and cls.__module__ == "nnunet_mcc.trainers.mcc"
    assert cls.trainer_seed == 1 and cls.budget_epochs == 50
    assert issubclass(cls, trainers.nnUNetTrainerMCC_50epochs)
    assert pickle.loads(pickle.dumps(cls)) is cls
    plain = trainers.nnUNetTrainerGWDL_CE_seed0
    assert plain.trainer_seed == 0 and plain.budget_epochs is None and plain.__bases__ == (trainers.nnUNetTrainerGWDL_CE,)
    assert trainers.nnUNetTrainerMCC.trainer_seed is None
    assert trainers.ComparisonTrainer.trainer_seed is None
    for bad in ("nnUNetTrainerMCC_seed1_50epochs", "nnUNetTrainerMCC_seed01", "nnUNetTrainerMCC_seed1_seed2",
                "nnUNetTrainerMCC_seed-1", "nnUNetTrainer_seed1", "nnUNetTrainerNope_seed1",
                "nnUNetTrainerMCC_1epochs_seed1"):
        assert not hasattr(trainers, bad), bad
        with pytest.raises(KeyError):
            trainers.trainer_class(bad)


def test_nnunets_own_lookup_finds_seed_variants():
    """As nnUNetv2_train / nnUNetv2_predict do (the checkpoint stores the class name)."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_mcc._ext_hook import TRAINER_FOLDER

    for name in ("nnUNetTrainerSegAN_seed3", "nnUNetTrainerSegAN_3epochs_seed4"):
        found = recursive_find_python_class(TRAINER_FOLDER, name, None, cleanup_imports_from_base_folder=True)
        assert found is trainers.trainer_class(name) and found.__module__ == "nnunet_mcc.trainers.segan"


def test_nnunet_train_lookup_finds_a_seeded_short_variant():
    """nnU-Net's own lookup behind nnUNetv2_train (its package first, then nnUNet_extTrainer)."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with contextlib.redirect_stdout(io.StringIO()):
        cls = recursive_find_trainer_class_by_name("nnUNetTrainerMCC_5epochs_seed2")
    assert cls is trainers.nnUNetTrainerMCC_5epochs_seed2 and (cls.trainer_seed, cls.budget_epochs) == (2, 5)


# ---------------------------------------------------------------- the seed rule
def test_seed_source_class_then_environment():
    mcc, seeded = trainers.nnUNetTrainerMCC, trainers.nnUNetTrainerMCC_seed3
    assert mcc.seed_with_source({}) == (None, None)
    assert mcc.seed_with_source({"NNUNET_MCC_SEED": "7"}) == (7, "environment")
    assert seeded.seed_with_source({}) == (3, "trainer class")
    assert seeded.seed_with_source({"NNUNET_MCC_SEED": "3"}) == (3, "trainer class")  # equal values are fine
    with pytest.raises(UserError, match=r"nnUNetTrainerMCC_seed3 trains with seed 3, but NNUNET_MCC_SEED=4"):
        seeded.seed_with_source({"NNUNET_MCC_SEED": "4"})
    with pytest.raises(UserError, match="NNUNET_MCC_SEED='x' must be a whole number"):
        mcc.seed_with_source({"NNUNET_MCC_SEED": "x"})


def test_a_seed_conflict_stops_the_trainer_before_nnunet_writes_anything(results, monkeypatch, capsys):
    monkeypatch.setenv("NNUNET_MCC_SEED", "4")
    with pytest.raises(SystemExit) as stop:
        build("nnUNetTrainerBaseline_seed3")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 3" in err and "NNUNET_MCC_SEED=4" in err
    assert not results.exists()  # nnU-Net creates the output folder and its log in __init__: not reached


def test_the_seeded_trainer_seeds_the_generators_and_records_the_seed(results, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = build("nnUNetTrainerBaseline_seed5")
    first = torch.rand(3)
    build("nnUNetTrainerBaseline_seed5")
    assert torch.equal(first, torch.rand(3))
    training = trainer.provenance()["training"]
    assert (training["seed"], training["seed_source"], training["deterministic"]) == (5, "trainer class", True)

    monkeypatch.setenv("nnUNet_n_proc_DA", "2")  # augmentation workers draw their own seeds
    assert build("nnUNetTrainerBaseline_seed5").provenance()["training"]["deterministic"] is False
    monkeypatch.setenv("NNUNET_MCC_SEED", "9")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    training = build("nnUNetTrainerBaseline").provenance()["training"]
    assert (training["seed"], training["seed_source"], training["deterministic"]) == (9, "environment", True)
    monkeypatch.delenv("NNUNET_MCC_SEED")
    training = build("nnUNetTrainerBaseline").provenance()["training"]
    assert (training["seed"], training["seed_source"], training["deterministic"]) == (None, None, False)


def test_check_environment_names_the_bad_knob():
    check_environment({"NNUNET_MCC_EPOCHS": "3", "NNUNET_MCC_SEED": "-2", "NNUNET_MCC_SNAPSHOT_EPOCHS": "1,2"})
    for variable, value, message in (("NNUNET_MCC_SAVE_EVERY", "0", "NNUNET_MCC_SAVE_EVERY='0'"),
                                     ("NNUNET_MCC_PLOT_EVERY", "x", "NNUNET_MCC_PLOT_EVERY='x'"),
                                     ("NNUNET_MCC_SNAPSHOT_EPOCHS", "0", "epoch numbers start at 1"),
                                     ("NNUNET_MCC_SEED", "1.5", "NNUNET_MCC_SEED='1.5'")):
        with pytest.raises(UserError, match=message):
            check_environment({variable: value})


# ---------------------------------------------------------------- cost
def drive_epochs(trainer, epochs, iterations=3, step_seconds=0.0):
    """nnU-Net's run_training loop around the training hooks, without data or a network."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunet_mcc.trainers.base import MCCLocalLogger

    if trainer.network is None:
        trainer.network = torch.nn.Linear(1, 1)
        trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01)
        trainer.lr_scheduler = types.SimpleNamespace(step=lambda epoch: None)
        trainer.logger = MetaLogger(trainer.output_folder, False)
        trainer.logger.local_logger = MCCLocalLogger()
    trainer.num_iterations_per_epoch = iterations
    for _ in range(epochs):
        trainer.on_train_epoch_start()
        outputs = []
        for _ in range(iterations):
            time.sleep(step_seconds)
            outputs.append({"loss": 0.5})
        trainer.on_train_epoch_end(outputs)
        time.sleep(step_seconds)  # stands for validation: not counted as training time
        trainer.current_epoch += 1
        trainer._write_log()


def test_the_log_records_the_cost_of_the_run(results, monkeypatch):
    monkeypatch.setenv("NNUNET_MCC_JOBS", "3")
    trainer = build("nnUNetTrainerBaseline")
    trainer._start_cost()
    drive_epochs(trainer, 2, iterations=3, step_seconds=0.01)
    with open(os.path.join(trainer.output_folder, provenance.LOG_FILE)) as f:
        log = json.load(f)
    cost = log["cost"]
    assert log["epochs_completed"] == 2
    assert cost["device"] == "cpu" and cost["jobs"] == 3 and cost["torch_threads"] == torch.get_num_threads()
    assert cost["train_iterations"] == 6 and "resumed" not in cost
    assert 0.06 <= cost["train_seconds"] < cost["wall_seconds"]  # validation and epoch ends are left out
    assert cost["iterations_per_second"] == pytest.approx(6 / cost["train_seconds"], rel=0.01)
    if os.path.exists("/proc/self/clear_refs"):
        assert cost["peak_memory_kind"] == "process RSS (this run)" and cost["peak_memory_mb"] > 10

    # a resumed run (nnUNetv2_train --c) adds this process's cost to the one recorded before it
    again = build("nnUNetTrainerBaseline")
    again.current_epoch = 2
    again._start_cost()
    drive_epochs(again, 1, iterations=3)
    with open(os.path.join(again.output_folder, provenance.LOG_FILE)) as f:
        resumed = json.load(f)["cost"]
    assert resumed["resumed"] is True and resumed["train_iterations"] == 9
    assert resumed["wall_seconds"] >= cost["wall_seconds"] and resumed["train_seconds"] >= cost["train_seconds"]


def test_without_a_memory_reset_the_peak_is_not_reported(results, monkeypatch):
    import builtins

    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if path == "/proc/self/clear_refs":
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    trainer = build("nnUNetTrainerBaseline")
    monkeypatch.setattr(builtins, "open", refusing_open)
    trainer._start_cost()
    monkeypatch.setattr(builtins, "open", real_open)
    drive_epochs(trainer, 1)
    cost = trainer.cost()
    assert cost["peak_memory_mb"] is None and cost["peak_memory_kind"] is None and cost["jobs"] is None
