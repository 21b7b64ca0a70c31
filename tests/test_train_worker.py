"""The in-process training worker ends with the crossval that started it (Linux)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# a stand-in for crossval: starts the real worker as WorkerPool does, waits for its "ready" line, says the worker's
# pid, then waits to be killed. The worker's stdin is a pipe the test holds open, as a busy worker's would be.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    read_end = int(sys.argv[1])
    worker = subprocess.Popen([sys.executable, "-m", "nnunet_mcc.experiments.train_worker", "--parent",
                               str(os.getpid())], stdin=read_end, stdout=subprocess.PIPE, text=True,
                              pass_fds=(read_end,))
    assert worker.stdout.readline()
    print(worker.pid, flush=True)
    time.sleep(300)
""")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_whose_crossval_was_killed_stops():
    read_end, write_end = os.pipe()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(read_end)], stdout=subprocess.PIPE, text=True,
                              pass_fds=(read_end,))
    os.close(read_end)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the worker outlived the crossval that started it"
    finally:
        os.close(write_end)
        if parent.poll() is None:
            parent.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
