"""Throughput of the BRATS 2015 converter against the floor of plain SimpleITK reading and writing.

Fixtures have the real size and type (4 MR sequences of 240x240x155 int16 plus the ground truth,
compressed MetaImage, skull-stripped: zero outside an ellipsoidal brain). The floor reads the same
five files per case and writes them as .nii.gz with SimpleITK, one process per core; the converter
runs with its default of every core. Ratio = converter cases/s / floor cases/s (target >= 0.9);
best of two timings each, alternating which runs first.

Run: ``python benchmarks/bench_convert.py [--quick]`` (quick: 4 cases instead of 20).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPE = (155, 240, 240)  # numpy order (z, y, x) of 240x240x155 voxels


def _brain_case(case_dir: str, seed: int) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    brain = ((z - 77) / 65.0) ** 2 + ((y - 120) / 95.0) ** 2 + ((x - 120) / 75.0) ** 2 <= 1
    tumour = ((z - 80) / 20.0) ** 2 + ((y - 100) / 25.0) ** 2 + ((x - 140) / 22.0) ** 2
    seg = np.zeros(SHAPE, np.uint8)
    seg[tumour <= 1] = 2
    seg[tumour <= 0.4] = 4
    seg[(tumour <= 0.2) & (x < 140)] = 1
    seg[(tumour <= 0.2) & (x >= 140)] = 3
    for i, mod in enumerate(("Flair", "T1", "T1c", "T2")):
        img = (rng.normal(400 + 50 * i, 30, SHAPE) + 150 * seg) * brain
        name = f"VSD.Brain.XX.O.MR_{mod}.{seed * 10 + i}"
        os.makedirs(os.path.join(case_dir, name))
        sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.int16)), os.path.join(case_dir, name, name + ".mha"),
                        useCompression=True)
    name = f"VSD.Brain_3more.XX.O.OT.{seed * 10 + 4}"
    os.makedirs(os.path.join(case_dir, name))
    sitk.WriteImage(sitk.GetImageFromArray(seg), os.path.join(case_dir, name, name + ".mha"), useCompression=True)


def make_source(root: str, n_cases: int) -> List[str]:
    dirs = [os.path.join(root, "BRATS2015_Training", "HGG" if i % 4 else "LGG", f"brats_tcia_pat{i:03d}_0001")
            for i in range(n_cases)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_brain_case, dirs, range(n_cases)))
    return dirs


def _floor_case(case_dir: str, out_dir: str) -> None:
    import SimpleITK as sitk

    name = os.path.basename(case_dir)
    for i, sub in enumerate(sorted(os.listdir(case_dir))):
        img = sitk.ReadImage(os.path.join(case_dir, sub, sub + ".mha"))
        sitk.WriteImage(img, os.path.join(out_dir, f"{name}_{i:04d}.nii.gz"), useCompression=True)


def floor(case_dirs: List[str], out_dir: str) -> float:
    os.makedirs(out_dir)
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_floor_case, case_dirs, [out_dir] * len(case_dirs)))
    return time.perf_counter() - start


def converter(src: str, raw: str) -> float:
    from nnunet_mcc.dataset_conversion import brats15

    os.environ["nnUNet_raw"] = raw
    os.environ.pop("nnUNet_preprocessed", None)
    parser = argparse.ArgumentParser()
    brats15.add_arguments(parser)
    args = parser.parse_args([src, "--no-progress"])
    start = time.perf_counter()
    devnull = open(os.devnull, "w")
    stdout, sys.stdout = sys.stdout, devnull
    try:
        brats15.run(args)
    finally:
        sys.stdout = stdout
        devnull.close()
    return time.perf_counter() - start


def run(quick: bool = False, repeats: int = 2) -> list:
    """Best of ``repeats`` timings each, alternating which goes first; the disk is synced before every
    timed run and each run's output deleted after it, so neither pays for the other's write-back."""
    n = 4 if quick else 20
    root = tempfile.mkdtemp(prefix="bench_convert_")
    times = {"floor": [], "ours": []}
    try:
        dirs = make_source(os.path.join(root, "src"), n)
        for rep in range(repeats):
            for which in (("floor", "ours") if rep % 2 == 0 else ("ours", "floor")):
                out = os.path.join(root, "out")
                os.sync()
                if which == "floor":
                    times["floor"].append(floor(dirs, out))
                else:
                    times["ours"].append(converter(os.path.join(root, "src"), out))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours, ref = n / min(times["ours"]), n / min(times["floor"])
    ratio = ours / ref
    return [{"benchmark": "convert", "case": f"BRATS15 {n} cases 4x240x240x155 int16, {os.cpu_count()} cores, "
                                             f"best of {repeats}",
             "measure": "cases/s", "ours": round(ours, 4), "reference_name": "SimpleITK read+write floor",
             "reference": round(ref, 4), "ratio": round(ratio, 3), "target": ">= 0.9x", "ok": bool(ratio >= 0.9)}]


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--quick", action="store_true", help="4 cases instead of 20")
    cli.add_argument("--repeats", type=int, default=2, help="timed runs of each (best is kept)")
    opts = cli.parse_args()
    for row in run(quick=opts.quick, repeats=opts.repeats):
        print("  ".join(f"{k}={v}" for k, v in row.items()))
