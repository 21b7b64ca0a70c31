"""``nnunet-mcc crossval --slurm ... --submit`` on a real one-node SLURM cluster (munged, slurmctld and slurmd started
here from tests/slurm/slurm.conf.in), whenever SLURM is installed and the tests run as root (slurmd must be able
to start jobs as their user): a 2-task array at a tiny budget on the embedded dataset with its dependent compare
job, one task of which is warned mid-training (``scancel -b --signal=USR1``) and checkpoints, requeues, resumes
and finishes. The daemons are stopped afterwards, on failure too, and no process of theirs is left."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from nnunet_mcc import provenance
from nnunet_e2e import BIN, trainer_output

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
MISSING = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(MISSING), reason=f"SLURM is not installed (no {', '.join(MISSING)}; "
                                             "apt-get install slurm-wlm munge)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting slurmd needs root"),
    pytest.mark.xdist_group("slurm"),  # one cluster per session: its tests on one worker (make test: --dist loadgroup)
]
TRAINER = "nnUNetTrainerMCC"
CONFIG = "2d_small"


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster's environment (SLURM_CONF); its daemons run until the module's tests are done."""
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    template = open(os.path.join(os.path.dirname(__file__), "slurm", "slurm.conf.in")).read()
    conf = root / "slurm.conf"
    conf.write_text(template.format(root=root, host=host, ctld_port=_free_port(), d_port=_free_port(),
                                    cpus=os.cpu_count(), memory_mb=2000))
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = dict(os.environ, SLURM_CONF=str(conf))
    logs = open(root / "daemons.log", "w")
    daemons = []
    try:
        daemons.append(subprocess.Popen(
            [_tool("munged"), "--foreground", "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
             f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
            stdout=logs, stderr=subprocess.STDOUT))
        _wait(lambda: (root / "munge.socket").exists(), 30, "munged did not start")
        daemons.append(subprocess.Popen([_tool("slurmctld"), "-D", "-f", str(conf)], env=env, stdout=logs,
                                        stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen([_tool("slurmd"), "-D", "-f", str(conf), "-N", host], env=env, stdout=logs,
                                        stderr=subprocess.STDOUT))
        _wait(lambda: "idle" in subprocess.run([_tool("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True,
                                               text=True).stdout, 60, "the node did not come up")
        yield {"env": env, "root": root}
    finally:
        subprocess.run([_tool("scancel"), "--user", "root"], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        logs.close()


def _wait(condition, seconds: float, message: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(message)


def _queued(env, jobs) -> str:
    return subprocess.run([_tool("squeue"), "-h", "-j", ",".join(jobs), "-o", "%i %T %r"], env=env,
                          capture_output=True, text=True).stdout


def _submit(env, cwd, dataset, folds, epochs, name, iterations=10):
    script = os.path.join(cwd, f"{name}.sbatch")
    proc = subprocess.run([os.path.join(BIN, "nnunet-mcc"), "crossval", "-d", dataset, "-c", CONFIG, "-tr", TRAINER,
                           "-f", *map(str, folds), "-device", "cpu", f"--epochs={epochs}", f"--iterations={iterations}",
                           "--val-iterations=1", "--slurm", script, "--slurm-option=--cpus-per-task=1", "--submit"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"array as job (\d+) and the comparison as job (\d+)", proc.stdout).groups()


@pytest.fixture
def job_env(cluster, prepared, nnunet_env, tmp_path):
    """nnU-Net's folders and seeded CPU trainings; nnU-Net's worker counts left to the array's allocation."""
    env = {k: v for k, v in nnunet_env.items()
           if k not in ("nnUNet_def_n_proc", "nnUNet_n_proc_DA", "NNUNET_MCC_TORCH_THREADS")}
    env.update(cluster["env"], PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return env


def test_an_array_within_its_allocation_a_warned_task_requeued_and_the_compare_job_after_them(job_env, prepared,
                                                                                             tmp_path):
    dataset = prepared("2d_multiclass")
    array, comparison = _submit(job_env, str(tmp_path), dataset, [0, 1], epochs=30, name="array")
    folders = [trainer_output(job_env["nnUNet_results"], dataset, TRAINER, CONFIG, fold) for fold in (0, 1)]

    def epochs_logged(folder):
        try:
            with open(os.path.join(folder, provenance.LOG_FILE)) as f:
                return json.load(f)["epochs_completed"]
        except (OSError, ValueError, KeyError):
            return 0

    # task 1 is warned as SLURM warns before a time limit (to the batch shell only)
    _wait(lambda: epochs_logged(folders[1]) >= 1, 300, "task 1 did not start training")
    subprocess.run([_tool("scancel"), "-b", "--signal=USR1", f"{array}_1"], env=job_env, check=True)
    # requeued, it starts again once its old credential has expired (cred_expire in the test's slurm.conf)
    _wait(lambda: not _queued(job_env, [array, comparison]), 600, "the jobs did not end")

    records = []
    for folder in folders:
        assert os.path.isfile(os.path.join(folder, "validation", "summary.json")), folder
        with open(os.path.join(folder, provenance.PROVENANCE_FILE)) as f:
            records.append(json.load(f))
        allocation = records[-1]["allocation"]
        assert allocation["slurm_array_job_id"] == array and allocation["slurm_cpus_per_task"] == "1"
        assert (allocation["nnUNet_def_n_proc"], allocation["nnUNet_n_proc_DA"]) == ("1", "0")
        assert allocation["NNUNET_MCC_TORCH_THREADS"] == "1"
    assert records[0]["interruptions"] == [] and "slurm_restart_count" not in records[0]["allocation"]
    with open(os.path.join(folders[1], provenance.LOG_FILE)) as f:
        log = json.load(f)
    [stop] = log["interruptions"]
    assert stop["signal"] == "SIGUSR1" and 1 <= stop["after_epoch"] < 30 and log["epochs_completed"] == 30
    assert records[1]["started_at_epoch"] == stop["after_epoch"]
    assert records[1]["allocation"]["slurm_restart_count"] == "1"
    task_log = open(os.path.join(tmp_path, f"nnunet-mcc-crossval_{array}_1.log")).read()
    assert "SIGUSR1 received" in task_log and "requeueing" in task_log

    # the compare job ran after the array, requeue included: every run's state, then the report
    report = os.path.join(job_env["nnUNet_results"], dataset, f"nnunet_mcc_comparison_nnUNetPlans_{CONFIG}",
                          "report.md")
    assert os.path.isfile(report)
    log = open(os.path.join(tmp_path, f"nnunet-mcc-compare_{comparison}.log")).read()
    assert f"{TRAINER} fold 0: skip" in log and f"{TRAINER} fold 1: skip" in log
