"""Kill -9 and full-disk helpers shared by the fault tests and benchmarks/bench_faults.py.

A command runs in a forked child of this process (a real process, killed for real, without paying Python's and
nnU-Net's imports again), with a fault armed by ``nnunet_mcc.fileio.arm_faults``: ``kill@N`` (SIGKILL at its N-th
write step) or ``enospc@N``. Output trees are compared byte for byte after normalising what legitimately differs
between two runs (``normalise``), and every file found is checked to parse (JSON, CSV, images, text).
"""

import io
import json
import os
import random
import signal
import sys
import traceback
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from nnunet_mcc import fileio
from nnunet_mcc.experiments import locks

# a train command standing in for nnUNetv2_train (sh: a few ms a run): a checkpoint, then validation/summary.json,
# each to a temporary name and renamed, as a crash-safe trainer would; $STUB_GO: wait for that file first;
# $STUB_STARTED: append "<trainer>:<fold>" there when it starts
STUB_TRAIN = r'''#!/bin/sh
dataset="$1"; config="$2"; fold="$3"; shift 3
while [ $# -gt 0 ]; do case "$1" in -tr) trainer="$2"; shift 2;; -p) plans="$2"; shift 2;; *) shift;; esac; done
folder="$nnUNet_results/$dataset/${trainer}__${plans}__${config}/fold_$fold"
mkdir -p "$folder/validation"
if [ -n "${STUB_STARTED:-}" ]; then echo "$trainer:$fold" >> "$STUB_STARTED"; fi
if [ -n "${STUB_GO:-}" ]; then while [ ! -e "$STUB_GO" ]; do sleep 0.05; done; fi
printf 'checkpoint of %s fold %s\n' "$trainer" "$fold" > "$folder/.ck"; mv "$folder/.ck" "$folder/checkpoint_final.pth"
printf '{"metric_per_case": [], "foreground_mean": {"Dice": 0.%s}}\n' "$fold" > "$folder/validation/.s"
mv "$folder/validation/.s" "$folder/validation/summary.json"
'''


def stub_results(tmp_path, dataset: str = "Dataset556_Stub", configuration: str = "2d") -> Dict[str, str]:
    """nnU-Net folders with a plans file (what crossval checks) and the stub train command; sets the variables."""
    roots = {k: str(tmp_path / k) for k in ("raw", "preprocessed", "results")}
    for k, v in roots.items():
        os.environ[f"nnUNet_{k}"] = v
    os.makedirs(os.path.join(roots["preprocessed"], dataset), exist_ok=True)
    with open(os.path.join(roots["preprocessed"], dataset, "nnUNetPlans.json"), "w") as f:
        json.dump({"configurations": {configuration: {}}}, f)
    stub = tmp_path / "stub_train.sh"
    stub.write_text(STUB_TRAIN)
    return dict(roots, command=f"sh {stub}", dataset=dataset, configuration=configuration)


def in_child(fn: Callable[[], Optional[int]], fault: Optional[str] = None, log: Optional[str] = None,
             steps_file: Optional[str] = None, wait: bool = True):
    """Run ``fn`` in a forked child with ``fault`` armed; its stdout and stderr go to ``log``. Returns its exit code
    (a negative signal number when killed), or its pid with ``wait=False``. ``steps_file``: the write steps it
    passed are written there when it ends normally."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        code = 1
        try:
            sink = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(sink, 1)
            os.dup2(sink, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            fileio.arm_faults(fault)
            try:
                code = fn() or 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            if steps_file:
                with open(steps_file, "w") as f:
                    f.write(str(fileio.fault_steps()))
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)
    if not wait:
        return pid
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def steps_of(fn: Callable[[], Optional[int]], tmp_path, log: Optional[str] = None) -> Tuple[int, int]:
    """(exit code, write steps) of an uninterrupted run of ``fn`` in a child."""
    steps = str(tmp_path / "steps.txt")
    code = in_child(fn, None, log, steps)
    with open(steps) as f:
        return code, int(f.read())


def kill_points(steps: int, n: int, seed: int) -> List[int]:
    """``n`` distinct write steps of ``1..steps`` (all of them when there are fewer), seeded."""
    return sorted(random.Random(seed).sample(range(1, steps + 1), min(n, steps)))


def is_temporary(name: str) -> bool:
    return name.endswith(".partial") or name.endswith(locks.SUFFIX)


def tree(root: str, skip: Iterable[str] = ()) -> Dict[str, bytes]:
    """{relative path: bytes} of every file under ``root``, without lock files and the folders named in ``skip``."""
    out = {}
    skip = set(skip)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.relpath(os.path.join(folder, d), root) not in skip)
        for name in files:
            if name.endswith(locks.SUFFIX):
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def leftovers(root: str) -> List[str]:
    """Temporary files and folders (``*.partial``) under ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.join(folder, n) for n in dirs + files if n.endswith(".partial")]
    return found


def half_written(files: Dict[str, bytes]) -> List[str]:
    """The files that do not parse as what their name says (JSON, CSV, NIfTI/MetaImage, PNG, text)."""
    bad = []
    for rel, data in files.items():
        if ".partial" in rel:
            continue  # a temporary name, not a file a reader takes
        try:
            _parse(rel, data)
        except Exception:  # any failure to parse is a half-written file
            bad.append(rel)
    return bad


def _parse(rel: str, data: bytes) -> None:
    if rel.endswith(".json"):
        json.loads(data.decode("utf-8"))
    elif rel.endswith(".csv"):
        import pandas as pd

        pd.read_csv(io.BytesIO(data))
    elif rel.endswith(".png"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
    elif rel.endswith((".nii.gz", ".mha", ".nii")):
        import tempfile

        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "x" + rel[rel.index("."):])
            with open(path, "wb") as f:
                f.write(data)
            sitk.ReadImage(path)
    elif rel.endswith((".md", ".tex", ".txt", ".log")):
        data.decode("utf-8")


def differences(expected: Dict[str, bytes], found: Dict[str, bytes],
                normalise: Callable[[str, bytes], bytes] = lambda rel, data: data) -> List[str]:
    """Paths missing, extra or with other content (after ``normalise``)."""
    out = [f"missing {p}" for p in sorted(set(expected) - set(found))]
    out += [f"extra {p}" for p in sorted(set(found) - set(expected))]
    out += [f"differs {p}" for p in sorted(set(expected) & set(found))
            if normalise(p, expected[p]) != normalise(p, found[p])]
    return out


def sweep(run: Callable[[Optional[str]], int], points: Sequence[int], snapshot: Callable[[], Dict[str, bytes]],
          expected: Dict[str, bytes], normalise=lambda rel, data: data,
          rerun: Optional[Callable[[], int]] = None) -> Dict[str, object]:
    """For each kill point: run with ``kill@N`` (``run(fault)``), check that what it left parses, rerun
    (``rerun`` or ``run(None)``), check that the rerun ends with 0 and its outputs equal ``expected``. Returns the
    counts and the problems found."""
    found = {"kill_points": 0, "killed": 0, "finished_after_restart": 0, "half_written": [], "problems": []}
    for n in points:
        found["kill_points"] += 1
        code = run(f"kill@{n}")
        found["killed"] += code == -signal.SIGKILL
        found["half_written"] += [f"kill@{n}: {p}" for p in half_written(snapshot())]
        code = rerun() if rerun else run(None)
        diff = differences(expected, snapshot(), normalise)
        if code == 0 and not diff:
            found["finished_after_restart"] += 1
        else:
            found["problems"].append(f"kill@{n}: rerun exit {code}; {diff[:5]}")
    return found
