"""The GPU check's dataset: a synthetic dataset shaped like a public one, planned by nnU-Net
(``benchmarks/gpu_check.py``).

``hippocampus`` (the default) is shaped like the Medical Segmentation Decathlon's Task04_Hippocampus (one MRI
channel, two foreground labels, about 36 x 50 x 35 voxels of 1 mm): nnU-Net's default 3d_fullres plan for it is
a 40 x 56 x 40 patch, batch 9 (read from the plans it writes, not assumed). ``brats`` is shaped like Task01
BrainTumour after cropping (four channels, three nested labels, about 138 x 170 x 138 voxels): 128^3 patch, batch 2;
it needs a larger ``--budget-s``. ``tiny`` is the CPU smoke size (a 16^3 image and nnU-Net's planned network
narrowed, ``nnunet_mcc.plans.add_small_configuration``).
"""

import os
import sys
from typing import Dict

from gpu_check_proc import Budget, run_one

from nnunet_mcc.fileio import read_json, write_json

BIN = os.path.dirname(sys.executable)
DATASET_ID, DATASET_NAME = 977, "GpuCheck"
DATASETS = {
    "hippocampus": dict(spec=dict(shape=(36, 50, 35), spacing=(1.0, 1.0, 1.0), num_cases=10, num_channels=1,
                                  num_foreground_classes=2, foreground_fraction=0.06, class_weights=(0.5, 0.5),
                                  class_names=("anterior", "posterior"), seed=2026),
                        configuration="3d_fullres", small_network=None),
    "brats": dict(spec=dict(shape=(138, 170, 138), spacing=(1.0, 1.0, 1.0), num_cases=8, num_channels=4,
                            num_foreground_classes=3, nested=True, foreground_fraction=0.08,
                            class_weights=(0.5, 0.3, 0.2), class_names=("edema", "non_enhancing_tumor",
                                                                         "enhancing_tumor"), seed=2026),
                  configuration="3d_fullres", small_network=None),
    "tiny": dict(spec=dict(shape=(16, 16, 16), num_cases=5, num_channels=1, num_foreground_classes=3, nested=True,
                           foreground_fraction=0.08, class_weights=(0.5, 0.3, 0.2),
                           class_names=("edema", "non_enhancing_tumor", "enhancing_tumor"), seed=2026),
                 configuration="3d_fullres_small", small_network=dict(n_stages=3, base_features=4, batch_size=2)),
}


def dataset_name() -> str:
    return f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


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


def prepare_dataset(env: Dict[str, str], preset: str, device: str, budget: Budget, logs: str) -> dict:
    """The preset's synthetic dataset with one test case, planned and preprocessed by nnU-Net (3d_fullres; the
    narrow configuration added under ``tiny``), nnU-Net's five-fold split written; what was planned.

    Not the demo's ``prepare_dataset``: that leaves nnU-Net's fingerprinting at its default of 8 worker
    processes, and its commands would run outside this check's budget."""
    from nnunet_mcc.plans import add_small_configuration, plans_path
    from nnunet_mcc.synthetic import SyntheticSpec, make_synthetic_dataset

    chosen = DATASETS[preset]
    spec = SyntheticSpec(**{**chosen["spec"], "num_test_cases": 1})
    folder = make_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, DATASET_NAME, spec, overwrite=True)
    if spec.nested:  # the label hierarchy, so GWDL's trainer builds its tree matrix as on the demo
        from nnunet_mcc.experiments.demo import EVALUATION_REGIONS

        dataset_json = read_json(os.path.join(folder, "dataset.json"), "dataset.json")
        write_json(os.path.join(folder, "dataset.json"), {**dataset_json, "evaluation_regions": EVALUATION_REGIONS},
                   "dataset.json", indent=4)
    processes = "1" if device == "cpu" else str(min(8, os.cpu_count() or 1))
    command = [os.path.join(BIN, "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
               "-np", processes, "-npfp", processes, "--no_pbar"]
    run_one(command, device_env(env, device, training=False), os.path.join(logs, "plan_and_preprocess.log"), budget,
            "nnUNetv2_plan_and_preprocess")
    plans_file = plans_path(env["nnUNet_preprocessed"], dataset_name())
    if chosen["small_network"]:
        add_small_configuration(plans_file, "3d_fullres", chosen["configuration"], **chosen["small_network"])
    from nnunet_mcc.experiments.crossval import ensure_splits

    ensure_splits(dataset_name(), "3d_fullres", "nnUNetPlans", [0])  # before the runs, so they never race for it
    configuration = read_json(plans_file, "nnU-Net plans")["configurations"][chosen["configuration"]]
    return {"preset": preset, "spec": {"shape": list(spec.shape), "channels": spec.num_channels,
                                       "cases": spec.num_cases, "test_cases": spec.num_test_cases,
                                       "foreground_classes": spec.num_foreground_classes},
            "configuration": chosen["configuration"], "patch_size": list(configuration["patch_size"]),
            "batch_size": configuration["batch_size"], "batch_dice": configuration["batch_dice"],
            "network": chosen["small_network"] or "nnU-Net's planned 3d_fullres network"}


def plans_and_dataset_json(env: Dict[str, str]):
    from nnunet_mcc.plans import plans_path

    folder = os.path.join(env["nnUNet_preprocessed"], dataset_name())
    return (read_json(plans_path(env["nnUNet_preprocessed"], dataset_name()), "nnU-Net plans"),
            read_json(os.path.join(folder, "dataset.json"), "dataset.json"))
