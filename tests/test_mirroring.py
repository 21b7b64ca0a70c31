"""``validate_without_mirroring``'s refusals, before any prediction (no training here: the prediction itself is
checked on the fold that tests/test_e2e_mcc.py trains, where it reproduces nnU-Net's own validation)."""

import json
import os

import pytest

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments.mirroring import validate_without_mirroring

DATASET = "Dataset778_Mirror"


@pytest.fixture
def fold(tmp_path, monkeypatch):
    """A finished-looking fold 1 (an empty checkpoint file is enough to reach the checks) and a split file."""
    for kind in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{kind}", str(tmp_path / kind))
    model = tmp_path / "results" / DATASET / "nnUNetTrainerMCC__nnUNetPlans__2d"
    folder = model / "fold_1"
    os.makedirs(folder / "validation")
    (folder / "checkpoint_final.pth").write_bytes(b"")
    (model / "plans.json").write_text(json.dumps({"dataset_name": DATASET}))
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".png", "labels": {"background": 0, "a": 1}}))
    preprocessed = tmp_path / "preprocessed" / DATASET
    os.makedirs(preprocessed)
    splits = [{"train": ["c2", "c3"], "val": ["c0", "c1"]}, {"train": ["c0", "c1"], "val": ["c2", "c3"]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits))
    return folder


def summary_of(folder, cases):
    entries = [{"reference_file": f"/gt/{c}.png", "metrics": {"1": {"TP": 1, "FP": 0, "FN": 0, "TN": 3}}}
               for c in cases]
    (folder / "validation" / "summary.json").write_text(json.dumps({"metric_per_case": entries}))


def test_refuses_what_is_not_a_finished_fold(fold, tmp_path):
    with pytest.raises(UserError, match="is not a fold folder fold_<number>.*fold_all has no held-out"):
        validate_without_mirroring(str(fold.parent / "fold_all"))
    os.remove(fold / "checkpoint_final.pth")
    with pytest.raises(UserError, match="has no checkpoint_final.pth: only a finished training"):
        validate_without_mirroring(str(fold))


def test_refuses_a_split_that_is_not_the_validated_one(fold, tmp_path):
    summary_of(fold, ["c2", "c9"])
    with pytest.raises(UserError, match=r"scored 2 cases and fold 1 of .*splits_final.json lists 2; 2 are in only "
                                        r"one of them \(c3 c9\): the split changed"):
        validate_without_mirroring(str(fold))
    splits = tmp_path / "preprocessed" / DATASET / "splits_final.json"
    splits.write_text(json.dumps([{"train": [], "val": ["c0"]}]))
    with pytest.raises(UserError, match=r"has no 'val' list for fold 1 \(it has 1 splits\)"):
        validate_without_mirroring(str(fold))


def test_refuses_an_unknown_device_and_a_negative_worker_count(fold):
    with pytest.raises(UserError, match="device 'gpu0' is not a torch device"):
        validate_without_mirroring(str(fold), device="gpu0")
    with pytest.raises(UserError, match="num_processes must be 0 or more"):
        validate_without_mirroring(str(fold), num_processes=-1)


def test_a_broken_checkpoint_is_one_line(fold):
    (fold / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot load .*checkpoint_final.pth with nnU-Net's predictor \("):
        validate_without_mirroring(str(fold))
