"""SegAN trainer: time per training iteration against nnU-Net's own trainer, same data and patch.

A synthetic dataset is planned and preprocessed by nnU-Net in a temporary folder (``quick``: 2D
96x96 with the ``2d`` configuration; otherwise 3D 64^3 with ``3d_fullres``: nnU-Net's default
network either way). The trainers are built in this process; a few batches are drawn once from
nnU-Net's training data loader (augmentation included) and every trainer runs ``train_step`` on the
same batches, interleaved; the median is reported. On a GPU the measure is wall time; on the CPU it
is the process's CPU time with one torch thread (other jobs on a shared machine distort wall time
far more than the work done). References: ``nnUNetTrainer`` (Dice + CE). Measured: ``nnUNetTrainerSegAN`` (CE + lambda *
L1, critic step + segmentor step) and ``nnUNetTrainerSegANDiceCE`` (the same loss as the reference
plus the critic: the critic's own overhead). Target: at most 1.35x.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List

import torch

TARGET = 1.35


def _prepare(root: str, quick: bool):
    from nnunet_mcc.synthetic import SyntheticSpec, make_synthetic_dataset

    env = {**os.environ, "nnUNet_raw": os.path.join(root, "raw"), "nnUNet_preprocessed": os.path.join(root, "pre"),
           "nnUNet_results": os.path.join(root, "results"), "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1",
           "nnUNet_compile": "0"}
    # in this process: nnU-Net's paths, and batches drawn without worker processes (planning needs >= 1)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile")})
    os.environ["nnUNet_n_proc_DA"] = "0"
    spec = SyntheticSpec(num_cases=6, shape=(96, 96) if quick else (64, 64, 64), num_foreground_classes=3,
                         foreground_fraction=0.05, seed=7)
    configuration = "2d" if quick else "3d_fullres"
    make_synthetic_dataset(env["nnUNet_raw"], 951, "SeganBench", spec)
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "nnUNetv2_plan_and_preprocess"), "-d", "951", "-c", configuration,
                    "-np", "1"], env=env, check=True, stdout=subprocess.DEVNULL)
    dataset = "Dataset951_SeganBench"
    with open(os.path.join(env["nnUNet_preprocessed"], dataset, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(env["nnUNet_preprocessed"], dataset, "dataset.json")) as f:
        dataset_json = json.load(f)
    return plans, dataset_json, configuration


def _trainer(cls, plans, dataset_json, configuration, device):
    trainer = cls({**plans, "continue_training": False}, configuration, 0, dataset_json, device=device)
    trainer.initialize()
    trainer.network.train()
    return trainer


def _timed_step(trainer, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    trainer.train_step(batch)
    return time.process_time() - start


def run(quick: bool = False) -> List[dict]:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mcc.trainers.segan import nnUNetTrainerSegAN, nnUNetTrainerSegANDiceCE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeats = 6 if quick else 5
    root = tempfile.mkdtemp(prefix="bench_segan_")
    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.set_num_threads(1)
        plans, dataset_json, configuration = _prepare(root, quick)
        names = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerSegAN": nnUNetTrainerSegAN,
                 "nnUNetTrainerSegANDiceCE": nnUNetTrainerSegANDiceCE}
        trainers = {name: _trainer(cls, plans, dataset_json, configuration, device) for name, cls in names.items()}
        loader, _ = trainers["nnUNetTrainer"].get_dataloaders()
        batches = [next(loader) for _ in range(repeats + 1)]
        patch = "x".join(map(str, trainers["nnUNetTrainer"].configuration_manager.patch_size))
        batch_size = batches[0]["data"].shape[0]
        times = {name: [] for name in trainers}
        for i, batch in enumerate(batches):
            for name, trainer in trainers.items():
                seconds = _timed_step(trainer, batch, device)
                if i > 0:  # the first batch warms up
                    times[name].append(seconds)
    finally:
        torch.set_num_threads(saved_threads)
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    case = f"{configuration}, patch {patch}, batch {batch_size}, {device.type}"
    reference = median["nnUNetTrainer"]
    measure = "time per train_step (s, median)" if device.type == "cuda" else \
        "CPU time per train_step (s, median, 1 thread)"
    rows = []
    for name in ("nnUNetTrainerSegAN", "nnUNetTrainerSegANDiceCE"):
        ratio = median[name] / reference
        rows.append({"benchmark": "segan", "case": f"{case}, {name}", "measure": measure,
                     "ours": median[name], "reference_name": "nnUNetTrainer", "reference": reference, "ratio": ratio,
                     "target": f"<= {TARGET}x", "ok": ratio <= TARGET})
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2D 96x96 instead of 3D 64^3")
    for row in run(parser.parse_args().quick):
        print(f"{row['case']:<70} {row['measure']:<46} ours {row['ours']:8.4g}  {row['reference_name']} "
              f"{row['reference']:8.4g}  ratio {row['ratio']:6.3f}  {row['target']}  {'ok' if row['ok'] else 'MISS'}")
