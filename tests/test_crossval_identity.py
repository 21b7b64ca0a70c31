"""The loss settings that change results (GWDL's matrix, weighting and gate, MCC's gate, SegAN's schedule)
are part of a run's identity, like its budget: ``crossval`` never skips or resumes a fold recorded with other
ones. Hand-built folds of the real trainers, a fake train command."""

import json
import os

import pytest

from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.crossval import crossval
from nnunet_mcc.provenance import PROVENANCE_FILE
from nnunet_mcc.trainers.gwdl import nnUNetTrainerGWDL
from test_crossval import CONFIG, DATASET, fake, trained  # noqa: F401  (fake is a fixture)

LABELS = {"background": 0, "edema": 1, "non_enhancing_tumor": 2, "enhancing_tumor": 3}
DATASET_JSON = {"labels": LABELS, "evaluation_regions": {"whole_tumor": [1, 2, 3], "tumor_core": [2, 3]},
                "file_ending": ".nii.gz", "channel_names": {"0": "x"}, "numTraining": 5}
BUDGET = {"epochs": 2, "iterations": 10, "val_iterations": 2}


@pytest.fixture
def gwdl_dataset(fake):  # noqa: F811
    with open(os.path.join(fake["roots"]["preprocessed"], DATASET, "dataset.json"), "w") as f:
        json.dump(DATASET_JSON, f)
    return fake


def recorded(folder, identity):
    """A finished fold of this package's trainers: budget 2 x 10 (val 2) and, unless None, ``identity``."""
    trained(folder)
    record = {"budget": {"num_epochs": 2, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2}}
    if identity is not None:
        record["identity"] = identity
    with open(os.path.join(folder, PROVENANCE_FILE), "w") as f:
        json.dump(record, f)


def test_the_same_settings_are_skipped_other_ones_refused_and_moved_aside_on_request(gwdl_dataset, capsys):
    fold = gwdl_dataset["folder"]
    current = json.loads(json.dumps(nnUNetTrainerGWDL.identity_settings(DATASET_JSON, environ={})))
    other = dict(current, distance_matrix=[[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]])
    recorded(fold("nnUNetTrainerGWDL", 0), current)
    recorded(fold("nnUNetTrainerGWDL", 1), other)
    recorded(fold("nnUNetTrainerGWDL", 2), None)  # a record from before settings were part of the identity
    args = ["crossval", "-d", "555", "-c", CONFIG, "-tr", "nnUNetTrainerGWDL", "-f", "0", "1", "2", "-device", "cpu",
            "--epochs", "2", "--iterations", "10", "--val-iterations", "2", "--train-command", gwdl_dataset["command"]]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fold 0" not in err
    assert "nnUNetTrainerGWDL fold 1 trained with other loss settings (distance_matrix" in err
    assert "nnUNetTrainerGWDL fold 2 loss settings unknown" in err
    assert gwdl_dataset["calls"]() == []

    assert cli_main(args + ["--retrain-mismatched", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fold 1" in out and "would be moved aside to fold_1.settings" in out
    assert "nnUNetTrainerGWDL fold 0: skip" in out
    assert os.path.isdir(fold("nnUNetTrainerGWDL", 1))  # a dry run moves nothing

    assert cli_main(args + ["--retrain-mismatched"]) == 0
    assert os.path.isdir(fold("nnUNetTrainerGWDL", 1) + ".settings")
    assert sorted(c["fold"] for c in gwdl_dataset["calls"]()) == ["1", "2"]


def test_an_environment_setting_changes_the_identity(gwdl_dataset, monkeypatch):
    current = json.loads(json.dumps(nnUNetTrainerGWDL.identity_settings(DATASET_JSON, environ={})))
    recorded(gwdl_dataset["folder"]("nnUNetTrainerGWDL", 0), current)
    monkeypatch.setenv("NNUNET_MCC_GWDL_MATRIX", "zero_one")
    with pytest.raises(UserError, match=r"fold 0 trained with other loss settings \(distance_matrix"):
        crossval("555", CONFIG, ["nnUNetTrainerGWDL"], folds=[0], device="cpu", train_command=gwdl_dataset["command"],
                 budget=BUDGET)
    monkeypatch.setenv("NNUNET_MCC_GWDL_MATRIX", "no_such_preset_or_file.json")
    with pytest.raises(UserError, match=r"^nnUNetTrainerGWDL: .*no_such_preset_or_file.json does not exist"):
        crossval("555", CONFIG, ["nnUNetTrainerGWDL"], folds=[0], device="cpu", train_command=gwdl_dataset["command"],
                 budget=BUDGET)


def test_a_bad_segan_setting_is_refused_before_anything_runs(gwdl_dataset, monkeypatch):
    monkeypatch.setenv("NNUNET_MCC_CRITIC_MODE", "sideways")
    with pytest.raises(UserError, match=r"nnUNetTrainerSegAN: critic mode 'sideways' \(NNUNET_MCC_CRITIC_MODE\)"):
        crossval("555", CONFIG, ["nnUNetTrainerSegAN"], folds=[0], device="cpu", train_command=gwdl_dataset["command"],
                 budget=BUDGET)
    assert gwdl_dataset["calls"]() == []


def test_a_fold_without_a_run_record_is_named_not_refused(gwdl_dataset, capsys):
    trained(gwdl_dataset["folder"]("nnUNetTrainerMCC", 0))
    assert crossval("555", CONFIG, ["nnUNetTrainerMCC"], folds=[0], device="cpu",
                    train_command=gwdl_dataset["command"], budget=BUDGET) == 0
    assert "nnUNetTrainerMCC fold 0: no run record" in capsys.readouterr().out
