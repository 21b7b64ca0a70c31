"""GWDL trainers through nnU-Net's real nnUNetv2_train / nnUNetv2_predict, and the refusal on regions."""

import json
import os

import pytest

from nnunet_e2e import predict, run, train, trainer_output


@pytest.mark.e2e
def test_gwdl_ce_trains_predicts_and_records_the_matrix(prepared, nnunet_env, tmp_path):
    dataset = prepared("3d_multiclass")  # labels background, class1, class2
    matrix_file = tmp_path / "distances.json"
    matrix_file.write_text(json.dumps({"class2": {"background": 1, "class1": 0.4}, "class1": {"background": 1}}))
    env = dict(nnunet_env, NNUNET_MCC_GWDL_MATRIX=str(matrix_file))
    trainer = "nnUNetTrainerGWDL_CE"
    train(env, dataset, "3d_fullres_small", trainer, fold=0)

    fold = trainer_output(env["nnUNet_results"], dataset, trainer, "3d_fullres_small")
    with open(os.path.join(fold, "gwdl_distance_matrix.json")) as f:
        recorded = json.load(f)
    assert recorded["labels"] == ["background", "class1", "class2"]
    assert recorded["matrix"] == [[0, 1, 1], [1, 0, 0.4], [1, 0.4, 0]]
    assert str(matrix_file) in recorded["source"]
    log = next(f for f in os.listdir(fold) if f.startswith("training_log"))
    with open(os.path.join(fold, log)) as f:
        text = f.read()
    assert "class distance matrix" in text and "0.400" in text
    with open(os.path.join(fold, "validation", "summary.json")) as f:
        assert set(json.load(f)["mean"]) == {"1", "2"}

    images = os.path.join(env["nnUNet_raw"], dataset, "imagesTs")
    written = predict(env, dataset, "3d_fullres_small", trainer, images, str(tmp_path / "predicted"))
    assert [f for f in written if f.endswith(".nii.gz")] == \
        sorted({f[:-len("_0000.nii.gz")] + ".nii.gz" for f in os.listdir(images)})


@pytest.mark.e2e
def test_gwdl_refuses_region_dataset(prepared, nnunet_env):
    dataset = prepared("3d_regions")
    proc = run(["nnUNetv2_train", dataset, "3d_fullres_small", "0", "-tr", "nnUNetTrainerGWDL_5epochs",
                "-device", "cpu"], nnunet_env, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "region-based" in output and "nnUNetTrainerMCC" in output and "label mode" in output
    # refused before nnU-Net created anything
    assert not os.path.exists(trainer_output(nnunet_env["nnUNet_results"], dataset, "nnUNetTrainerGWDL_5epochs",
                                             "3d_fullres_small"))
