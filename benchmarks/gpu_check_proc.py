"""The GPU check's clocks, budget and child processes (``benchmarks/gpu_check.py``)."""

import os
import resource
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence, Tuple

BUDGET_EXHAUSTED = "budget exhausted"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float):
        self.seconds, self.started = float(seconds), time.perf_counter()

    def remaining(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def exhausted(self) -> bool:
        return self.remaining() <= 0


class StageFailed(Exception):
    """A stage that ran and failed; ``detail`` keeps what it measured before failing."""

    def __init__(self, message: str, detail: Optional[dict] = None):
        super().__init__(message)
        self.detail = detail or {}


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and the workers it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start(command: Sequence[str], env: Dict[str, str], log: str) -> subprocess.Popen:
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        return subprocess.Popen(list(command), env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run_all(commands: Dict[str, Tuple[List[str], Dict[str, str], str]], jobs: int, budget: Budget) -> Dict[str, dict]:
    """Run ``{name: (command, env, log)}`` ``jobs`` at a time within the budget: ``{name: {returncode,
    wall_seconds, stopped}}``; a command stopped by the budget has ``stopped`` True, one never started is absent."""
    pending, running, done = list(commands), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs and not budget.exhausted():
                name = pending.pop(0)
                running[name] = (start(*commands[name]), time.perf_counter())
            if budget.exhausted():
                break
            for name, (process, started) in list(running.items()):
                if process.poll() is not None:
                    done[name] = {"returncode": process.returncode, "wall_seconds": time.perf_counter() - started,
                                  "stopped": False}
                    del running[name]
            time.sleep(0.2)
    finally:  # the budget ran out, or this process is interrupted: its own sessions get no Ctrl-C
        for name, (process, started) in running.items():
            _stop(process)
            done[name] = {"returncode": process.returncode, "wall_seconds": time.perf_counter() - started,
                          "stopped": True}
    return done


def run_one(command: List[str], env: Dict[str, str], log: str, budget: Budget, what: str) -> float:
    """Run one command within the budget, return its wall seconds; StageFailed naming ``what`` and the log when it
    fails or is stopped."""
    result = run_all({what: (command, env, log)}, 1, budget).get(what)
    if result is None or result["stopped"]:
        raise StageFailed(f"{BUDGET_EXHAUSTED} during {what}")
    if result["returncode"] != 0:
        raise StageFailed(f"{what} exited with status {result['returncode']}; log: {log}")
    return result["wall_seconds"]
