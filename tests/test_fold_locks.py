"""One writer per fold folder across processes (``experiments/locks.py``): a second crossval that finds a fold being
trained by another process skips it or waits for it, names the folder and the holder, and never trains into it;
the lock outlives a killed crossval as long as its training runs."""

import os
import signal
import time

import pytest

from fault_helpers import in_child, stub_results
from nnunet_mcc.cli import main as cli_main
from nnunet_mcc.experiments import locks

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the processes are forked")


@pytest.fixture(scope="module", autouse=True)
def imported():
    """nnU-Net's trainer lookup imported once here, not in every forked crossval."""
    from nnunet_mcc.experiments.crossval import trainer_classes

    trainer_classes(["T1"], required=False)  # walks every trainer module (not found)


@pytest.fixture
def stub(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "NNUNET_MCC_TRAIN_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    s = stub_results(tmp_path)
    monkeypatch.setenv("STUB_STARTED", str(tmp_path / "started.txt"))
    monkeypatch.setenv("STUB_GO", str(tmp_path / "go"))
    s["started"], s["go"], s["tmp"] = tmp_path / "started.txt", tmp_path / "go", tmp_path
    s["folder"] = os.path.join(s["results"], s["dataset"], f"T1__nnUNetPlans__{s['configuration']}", "fold_0")
    return s


def crossval(s, *extra):
    return lambda: cli_main(["crossval", "-d", s["dataset"], "-c", s["configuration"], "-tr", "T1", "-f", "0",
                             "-device", "cpu", "--train-command", s["command"], *extra])


def started(s, count=1, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if s["started"].exists() and len(s["started"].read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the stub training did not start")


def read(path):
    return path.read_text() if path.exists() else ""


def reap(pid, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process {pid} did not end")


def test_a_second_crossval_skips_or_waits_and_never_trains_into_a_held_fold(stub):
    first = in_child(crossval(stub), log=str(stub["tmp"] / "first.log"), wait=False)
    try:
        started(stub)
        second_log = stub["tmp"] / "second.log"
        assert in_child(crossval(stub), log=str(second_log)) == 3  # skipped: nothing failed, not all finished
        text = second_log.read_text()
        held = [line for line in text.splitlines() if "is in use by" in line]
        assert len(held) == 1, text
        assert stub["folder"] in held[0] and "skipped" in held[0] and f"on {os.uname().nodename}" in held[0]
        pid = int(held[0].split("in use by pid ")[1].split()[0])
        assert pid != first and os.path.exists(f"/proc/{pid}")  # the training command, started by the first one
        waiting = in_child(crossval(stub, "--if-locked", "wait"), log=str(stub["tmp"] / "third.log"), wait=False)
        deadline = time.time() + 60
        while "waiting for it" not in read(stub["tmp"] / "third.log") and time.time() < deadline:
            time.sleep(0.05)
        assert os.waitpid(waiting, os.WNOHANG) == (0, 0)  # still waiting
        stub["go"].touch()
        assert reap(first) == 0
        assert reap(waiting) == 0
    finally:
        stub["go"].touch()
    third = (stub["tmp"] / "third.log").read_text()
    assert "waiting for it" in third and "finished meanwhile by another process" in third, third
    assert stub["started"].read_text().splitlines() == ["T1:0"]  # trained once, by the first crossval only


def test_the_lock_outlives_a_killed_crossval_while_its_training_runs(stub):
    first = in_child(crossval(stub), log=str(stub["tmp"] / "first.log"), wait=False)
    try:
        started(stub)
        os.kill(first, signal.SIGKILL)
        assert reap(first) == -signal.SIGKILL
        # the orphaned training still holds the fold: a new crossval must not train into it
        log = stub["tmp"] / "second.log"
        assert in_child(crossval(stub), log=str(log)) == 3
        assert "is in use by pid" in log.read_text()
    finally:
        stub["go"].touch()
    deadline = time.time() + 30
    while not os.path.isfile(os.path.join(stub["folder"], "validation", "summary.json")) and time.time() < deadline:
        time.sleep(0.05)
    lock = locks.FoldLock(stub["folder"])
    deadline = time.time() + 30
    while not lock.acquire(block=False):  # released by the kernel once the orphan has ended
        assert time.time() < deadline, "the lock was never released"
        time.sleep(0.05)
    lock.release()
    log = stub["tmp"] / "third.log"
    assert in_child(crossval(stub), log=str(log)) == 0
    assert "finished already" in log.read_text()
    assert stub["started"].read_text().splitlines() == ["T1:0"]
