"""Helpers for end-to-end tests through nnU-Net's real command-line tools.

Datasets are synthetic (``nnunet_mcc.synthetic``), planned and preprocessed once per test session
and shared by all tests (and pytest-xdist workers) through a cache folder guarded by a file lock.
Each test gets its own ``nnUNet_results``. The subprocess environment carries nnU-Net's three path
variables and CPU settings but NOT ``nnUNet_extTrainer``: trainers must be found through the
installed package alone.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

BIN = os.path.dirname(sys.executable)

# the fast CPU settings measured in REFERENCES.md; budgets come from ComparisonTrainer's knobs
CPU_ENV = {
    "nnUNet_n_proc_DA": "1",
    "nnUNet_def_n_proc": "1",
    "nnUNet_compile": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NNUNET_MCC_EPOCHS": "2",
    "NNUNET_MCC_ITERATIONS": "3",
    "NNUNET_MCC_VAL_ITERATIONS": "2",
    "NNUNET_MCC_PLOT_EVERY": "1000",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "agg",
}
# trainings are reproducible: seeded, with nnU-Net's augmentation in the training process (its worker
# processes would draw their own seeds). Planning needs nnUNet_n_proc_DA >= 1, so this is for training only.
TRAINING_ENV = {"nnUNet_n_proc_DA": "0", "NNUNET_MCC_SEED": "0"}

# name -> (dataset id, nnunet_mcc.synthetic.SyntheticSpec kwargs, configurations to plan)
DATASETS: Dict[str, tuple] = {
    "3d_multiclass": (901, dict(num_cases=6, shape=(32, 32, 32), num_foreground_classes=2,
                                foreground_fraction=0.03, num_test_cases=1, seed=1), ("3d_fullres",)),
    "3d_regions": (902, dict(num_cases=6, shape=(32, 32, 32), num_foreground_classes=3, nested=True,
                             regions=True, foreground_fraction=0.05, seed=2), ("3d_fullres",)),
    "2d_multiclass": (903, dict(num_cases=8, shape=(64, 64), num_foreground_classes=3,
                                foreground_fraction=0.06, num_channels=2, num_test_cases=1, seed=3), ("2d",)),
    "3d_ignore": (904, dict(num_cases=6, shape=(32, 32, 32), num_foreground_classes=2,
                            foreground_fraction=0.03, ignore_fraction=0.1, seed=4), ("3d_fullres",)),
}


def run(cmd: Sequence[str], env: Dict[str, str], timeout: int = 600, check: bool = True,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command; on an unexpected exit status fail with the tail of its output."""
    exe = cmd[0] if os.path.isabs(cmd[0]) or not os.path.exists(os.path.join(BIN, cmd[0])) else \
        os.path.join(BIN, cmd[0])
    proc = subprocess.run([exe, *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def base_env(root: str, results: Optional[str] = None, training: bool = False) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(CPU_ENV)
    if training:
        env.update(TRAINING_ENV)
    env["nnUNet_raw"] = os.path.join(root, "raw")
    env["nnUNet_preprocessed"] = os.path.join(root, "preprocessed")
    env["nnUNet_results"] = results or os.path.join(root, "results")
    return env


@contextmanager
def _locked(path: str):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dataset_name(key: str) -> str:
    dataset_id = DATASETS[key][0]
    return f"Dataset{dataset_id:03d}_{key.replace('_', '')}"


def prepare_dataset(cache_root: str, key: str) -> str:
    """Synthetic dataset ``key`` planned, preprocessed, with a small configuration ``<config>_small``
    (narrow 3-stage U-Net) and nnU-Net's five-fold splits. Returns the dataset name."""
    from nnunet_mcc.plans import add_small_configuration, plans_path
    from nnunet_mcc.synthetic import SyntheticSpec, make_synthetic_dataset

    dataset_id, spec_kwargs, configurations = DATASETS[key]
    name = dataset_name(key)
    os.makedirs(cache_root, exist_ok=True)
    done_marker = os.path.join(cache_root, f".{name}.done")
    # one lock per dataset: two xdist workers prepare two datasets at the same time (planning runs on one core)
    with _locked(os.path.join(cache_root, f".{name}.lock")):
        if os.path.exists(done_marker):
            return name
        env = base_env(cache_root)
        for sub in ("raw", "preprocessed"):
            target = os.path.join(env[f"nnUNet_{sub}"], name)
            shutil.rmtree(target, ignore_errors=True)
        make_synthetic_dataset(env["nnUNet_raw"], dataset_id, name.split("_", 1)[1], SyntheticSpec(**spec_kwargs))
        # no --verify_dataset_integrity (seconds per dataset): test_synthetic.py runs nnU-Net's integrity check on
        # the generator's 3D (regions, ignore label, two channels) and 2D (two channels) output
        run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations, "-np", "1"], env)
        plans = plans_path(env["nnUNet_preprocessed"], name)
        for configuration in configurations:
            add_small_configuration(plans, configuration, f"{configuration}_small", n_stages=3, base_features=8)
        _write_default_splits(os.path.join(env["nnUNet_preprocessed"], name))
        open(done_marker, "w").close()
    return name


def _write_default_splits(preprocessed_dataset: str) -> None:
    """The splits nnU-Net's first training would write, written up front so parallel trainings
    never race on splits_final.json."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    with open(os.path.join(preprocessed_dataset, "dataset.json")) as f:
        ending = json.load(f)["file_ending"]
    labels = os.path.join(os.path.dirname(os.path.dirname(preprocessed_dataset)), "raw",
                          os.path.basename(preprocessed_dataset), "labelsTr")
    cases = sorted(f[: -len(ending)] for f in os.listdir(labels) if f.endswith(ending))
    with open(os.path.join(preprocessed_dataset, "splits_final.json"), "w") as f:
        json.dump(generate_crossval_split(cases, seed=12345, n_splits=5), f, indent=2)


def trainer_output(results: str, dataset: str, trainer: str, configuration: str, fold: int = 0,
                   plans: str = "nnUNetPlans") -> str:
    return os.path.join(results, dataset, f"{trainer}__{plans}__{configuration}", f"fold_{fold}")


def summary_dice(fold_folder: str) -> Dict[str, float]:
    with open(os.path.join(fold_folder, "validation", "summary.json")) as f:
        summary = json.load(f)
    return {k: v["Dice"] for k, v in summary["mean"].items()}


def train(env: Dict[str, str], dataset: str, configuration: str, trainer: str, fold: int = 0,
          extra: Sequence[str] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    return run(["nnUNetv2_train", dataset, configuration, str(fold), "-tr", trainer, "-device", "cpu", *extra],
               env, timeout=timeout)


def predict(env: Dict[str, str], dataset: str, configuration: str, trainer: str, input_folder: str,
            output_folder: str, folds: Sequence[int] = (0,)) -> List[str]:
    run(["nnUNetv2_predict", "-i", input_folder, "-o", output_folder, "-d", dataset, "-c", configuration,
         "-tr", trainer, "-f", *map(str, folds), "-device", "cpu", "-npp", "0", "-nps", "0",
         "--disable_tta"], env)
    return sorted(os.listdir(output_folder))
