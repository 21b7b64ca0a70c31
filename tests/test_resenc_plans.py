"""nnU-Net's residual-encoder presets (nnUNetPlannerResEncM, plans nnUNetResEncUNetMPlans) through the small
configuration, nnUNetv2_train, nnUNetv2_predict and compare."""

import json
import os
import shutil

import pytest

from nnunet_e2e import BIN, DATASETS, run, trainer_output
from nnunet_mcc.plans import add_small_configuration, encoder_depth_key

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def _plans(class_name, depth_key):
    arch = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
            "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
            depth_key: [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1] * 5}
    architecture = {"arch_kwargs": arch}
    if class_name:
        architecture["network_class_name"] = class_name
    return {"configurations": {"3d_fullres": {"data_identifier": "x", "batch_size": 2,
                                              "architecture": architecture}}}


@pytest.mark.parametrize("class_name, key", [(RESENC, "n_blocks_per_stage"), (PLAIN, "n_conv_per_stage"),
                                             (None, "n_blocks_per_stage"), (None, "n_conv_per_stage")])
def test_small_configuration_cuts_the_encoder_and_decoder_of_either_architecture(tmp_path, class_name, key):
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(_plans(class_name, key)))
    add_small_configuration(str(path), "3d_fullres", "tiny", n_stages=3, base_features=8)
    arch = json.loads(path.read_text())["configurations"]["tiny"]["architecture"]["arch_kwargs"]
    assert arch[key] == [1, 3, 4] and arch["n_conv_per_stage_decoder"] == [1, 1]
    assert arch["n_stages"] == 3 and arch["features_per_stage"] == [8, 16, 32] and len(arch["strides"]) == 3
    other = {"n_blocks_per_stage", "n_conv_per_stage"} - {key}
    assert not other & set(arch)


def test_an_unknown_architecture_is_named(tmp_path):
    path = tmp_path / "plans.json"
    before = json.dumps(_plans("some.module.MyUNet", "n_conv_per_stage"))
    path.write_text(before)
    with pytest.raises(ValueError, match=r"plans.json: architecture 'some.module.MyUNet' is not one"):
        add_small_configuration(str(path), "3d_fullres", "tiny")
    assert path.read_text() == before  # nothing written
    both = _plans(None, "n_conv_per_stage")["configurations"]["3d_fullres"]["architecture"]
    both["arch_kwargs"]["n_blocks_per_stage"] = [1] * 6
    with pytest.raises(ValueError, match="has both of"):
        encoder_depth_key(both, "p.json")


@pytest.mark.e2e
def test_resenc_m_plans_train_predict_and_compare(prepared, nnunet_env, tmp_path):
    """Planned with nnUNetPlannerResEncM and cut to the small configuration: an MCC trainer trains with
    ``-p nnUNetResEncUNetMPlans``, predicts, and compare reads its folder."""
    name = prepared("3d_multiclass")
    dataset_id = str(DATASETS["3d_multiclass"][0])
    env = dict(nnunet_env, nnUNet_preprocessed=str(tmp_path / "preprocessed"))
    shared = os.path.join(nnunet_env["nnUNet_preprocessed"], name)
    own = os.path.join(env["nnUNet_preprocessed"], name)
    os.makedirs(own)
    for file in ("dataset.json", "dataset_fingerprint.json", "splits_final.json"):
        shutil.copy(os.path.join(shared, file), own)
    plans_env = dict(env, nnUNet_n_proc_DA="1")  # nnU-Net's planner sets its threads from it (0 fails)
    run(["nnUNetv2_plan_experiment", "-d", dataset_id, "-pl", "nnUNetPlannerResEncM"], plans_env)
    plans_file = os.path.join(own, "nnUNetResEncUNetMPlans.json")
    with open(plans_file) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == RESENC
    run(["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres",
         "-np", "1"], plans_env)
    add_small_configuration(plans_file, "3d_fullres", "3d_fullres_small", n_stages=3, base_features=8)

    trainer, configuration, plans = "nnUNetTrainerMCC_1epoch", "3d_fullres_small", "nnUNetResEncUNetMPlans"
    run(["nnUNetv2_train", name, configuration, "0", "-tr", trainer, "-p", plans, "-device", "cpu"], env)
    fold = trainer_output(env["nnUNet_results"], name, trainer, configuration, plans=plans)
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
    with open(os.path.join(os.path.dirname(fold), "plans.json")) as f:  # the plans the run trained with
        trained = json.load(f)["configurations"][configuration]["architecture"]
    assert trained["network_class_name"] == RESENC and len(trained["arch_kwargs"]["n_blocks_per_stage"]) == 3

    out = tmp_path / "predicted"
    run(["nnUNetv2_predict", "-i", os.path.join(nnunet_env["nnUNet_raw"], name, "imagesTs"), "-o", str(out),
         "-d", name, "-c", configuration, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu", "-npp", "0",
         "-nps", "0", "--disable_tta"], env)
    assert [p for p in os.listdir(out) if p.endswith(".nii.gz")]

    report = tmp_path / "report"
    proc = run([os.path.join(BIN, "nnunet-mcc"), "compare", "-d", name, "-c", configuration, "-p", plans,
                "-tr", trainer, "-f", "0", "-o", str(report), "--bootstrap", "10", "--no-plots", "--no-boundary",
                "--no-calibration"], env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (report / "report.md").read_text()
    assert plans in text and trainer in text


@pytest.mark.parametrize("command", ["crossval", "compare", "demo"])
def test_planner_option_names_the_plans_it_writes(command, capsys):
    from nnunet_mcc.cli import build_parser_for

    base = [] if command == "demo" else ["-d", "1", "-c", "3d_fullres", "-tr", "nnUNetTrainerMCC"]
    argv = [command, *base, "-pl", "nnUNetPlannerResEncL"]
    assert build_parser_for(argv).parse_args(argv).plans == "nnUNetResEncUNetLPlans"
    argv = [command, *base, "-p", "MyPlans"]
    assert build_parser_for(argv).parse_args(argv).plans == "MyPlans"
    argv = [command, *base, "-pl", "nnUNetPlannerNope"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser_for(argv).parse_args(argv)
    assert exit_info.value.code == 2 and "no experiment planner 'nnUNetPlannerNope'" in capsys.readouterr().err
