"""Running planned trainings: ``jobs`` at a time, each as a ``nnUNetv2_train`` process or in a long-lived worker
process (``--in-process``), with the progress a person reads meanwhile. crossval plans the runs; this runs them."""

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nnunet_mcc import provenance
from nnunet_mcc.budget import Budget, JOBS_VARIABLE
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import locks, results
from nnunet_mcc.fileio import fault_point, read_json

LOCK_SOCKET_OPTION = "--lock-socket"  # train_worker's: the socket its fold locks arrive on

# what happens to a run, decided by its folder's state
TRAIN, RESUME, VALIDATE, SKIP = "train", "resume", "validate", "skip"


@dataclass
class Run:
    trainer: str
    fold: int
    folder: str
    action: str
    command: List[str]
    recorded: Optional[Budget] = None   # the budget an existing fold was trained with
    mismatch: Optional[str] = None              # why its record does not match the asked budget or settings
    aside_tag: Optional[str] = None             # the suffix of its folder when moved aside
    note: Optional[str] = None                  # what could not be checked


def state_text(r: Run) -> str:
    """What a run's folder says about it, for ``crossval --dry-run``: finished, trained but not validated,
    interrupted (after which epoch, by what), or not started."""
    if r.action == SKIP:
        return "finished"
    if r.action == VALIDATE:
        return "trained, not validated"
    if r.action == RESUME:
        try:
            log = read_json(os.path.join(r.folder, provenance.LOG_FILE), "training log")
            stops = [i for i in log.get("interruptions") or [] if isinstance(i, dict)]
            by = f", stopped by {stops[-1].get('signal')}" if stops else ""
            return f"interrupted after epoch {int(log['epochs_completed'])}{by}"
        except (UserError, AttributeError, KeyError, TypeError, ValueError):
            return "interrupted"
    return "started, no checkpoint" if os.path.isdir(r.folder) and os.listdir(r.folder) else "not started"


def run_pending(pending: Sequence[Run], env: Dict[str, str], jobs: int, log_folder: str, *, in_process: bool = False,
                epochs: Optional[Dict[str, Optional[int]]] = None, log=print,
                worker_job: Optional[Dict[str, object]] = None, if_locked: str = locks.SKIP,
                replan: Optional[Callable[[Run], None]] = None,
                skipped: Optional[List[Tuple[Run, str]]] = None) -> List[Tuple[Run, str, str]]:
    """Run ``pending`` ``jobs`` at a time, each logging to ``<log_folder>/<trainer>__<plans>__<configuration>_fold_<f>.log``;
    a run has succeeded when it exits 0 and its fold is finished. Returns the failures as
    ``(run, reason, log file)``. Each run gets ``env`` (with its share of the cores where the caller set it,
    ``budget.cpu_run_environment``) and ``NNUNET_MCC_JOBS``. ``worker_job``: what an in-process worker needs
    besides the run (dataset, configuration, plans, device, npz).

    Each run first takes its fold's lock (``locks``), held by its training process too; a fold another process holds
    is skipped (added to ``skipped`` as ``(run, line)``) or waited for, as ``if_locked`` says. Once the lock is held,
    ``replan(run)`` decides the run again from its folder as it is now (another process may have moved it on)."""
    os.makedirs(log_folder, exist_ok=True)
    failures = []
    run_env = dict(env, **{JOBS_VARIABLE: str(jobs)})  # recorded in each run's cost
    progress = Progress(len(pending), log, epochs)
    job = dict(worker_job or {})

    def execute(r: Run) -> None:
        lines = []
        lock = locks.take(r.folder, if_locked, log=lambda line: (lines.append(line), progress.say(line)))
        if lock is None:
            if skipped is not None:
                skipped.append((r, lines[-1]))
            progress.finished(r, f"{r.trainer} fold {r.fold}: skipped (in use by another process)")
            return
        try:
            fault_point(r.folder, can_fail=False)  # a kill point for the fault tests (fileio)
            if replan is not None:
                replan(r)
            if r.action == SKIP:
                progress.finished(r, f"{r.trainer} fold {r.fold}: finished meanwhile by another process")
                return
            train(r, lock)
        finally:
            lock.release()

    def train(r: Run, lock: "locks.FoldLock") -> None:
        # <trainer>__<plans>__<configuration>_fold_<f>.log
        log_file = os.path.join(log_folder, f"{os.path.basename(os.path.dirname(r.folder))}_fold_{r.fold}.log")
        progress.started(r)
        t0 = time.time()
        if workers is None:
            code = run_command(r.command, run_env, log_file, lock)
        else:
            code = workers.train(r, log_file, lock=lock, **job)
        finished = results.fold_status(r.folder) == results.FINISHED
        if code == 0 and finished:
            progress.finished(r, f"{r.trainer} fold {r.fold}: {DONE[r.action]} in {time.time() - t0:.0f} s")
        else:
            reason = f"exit status {code}" if code != 0 else "no validation/summary.json afterwards"
            failures.append((r, reason, log_file))
            progress.finished(r, f"{r.trainer} fold {r.fold}: FAILED ({reason}), log: {log_file}")

    workers = WorkerPool(run_env) if in_process else None  # threads: crossval's share (budget.cpu_run_environment)
    try:
        if jobs == 1:
            for r in pending:
                execute(r)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(execute, pending))
    finally:
        progress.close()
        if workers is not None:
            workers.close()
    return failures


def run_command(command: List[str], env: Dict[str, str], log_file: str, lock: "locks.FoldLock") -> int:
    """One training command, its output appended to ``log_file``. It inherits the fold's lock: the lock stays held
    while it runs, also when this process is killed."""
    with open(log_file, "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        try:
            child = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, pass_fds=(lock.fd,))
        except OSError as e:
            handle.write(f"cannot start: {e}\n")
            return 127
        lock.record(child.pid, f"{os.path.basename(command[0])}, started by pid {os.getpid()}")
        fault_point(log_file, can_fail=False)
        try:
            code = child.wait()
            fault_point(log_file, can_fail=False)
            return code
        except BaseException:  # as subprocess.run does
            child.kill()
            child.wait()
            raise


DONE = {TRAIN: "trained", RESUME: "resumed and trained", VALIDATE: "validated"}


class Progress:
    """What a person reads while the runs go on.

    When stderr is not a terminal (CI, SLURM logs, tests): one plain line per finished run,
    ``[3/20] nnUNetTrainerMCC_seed1 fold 2: trained in 41 s``, written whole under one lock, so parallel
    runs never interleave. On a terminal: one tqdm bar over the runs, with the epochs of the running ones
    read from their ``nnunet_mcc_log.json`` (``epochs_completed``) every second by a small thread; the
    finished lines are printed above it.
    """

    def __init__(self, total: int, log=print, epochs: Optional[Dict[str, Optional[int]]] = None,
                 interactive: Optional[bool] = None, poll_seconds: float = 1.0):
        self.total, self.log, self.epochs, self.done = total, log, epochs or {}, 0
        self.lock = threading.Lock()
        self.running: Dict[int, tuple] = {}  # id(run) -> (run, start time)
        self.interactive = _stderr_is_terminal() if interactive is None else interactive
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="run", desc="crossval", file=sys.stderr, dynamic_ncols=True)
            self.stop = threading.Event()
            self.poller = threading.Thread(target=self._poll, args=(poll_seconds,), daemon=True)
            self.poller.start()

    def say(self, line: str) -> None:
        """A line that is not a finished run's (a locked fold), printed whole, above the bar on a terminal."""
        with self.lock:
            if self.bar is None:
                self.log(line)
            else:
                with self.bar.external_write_mode():
                    self.log(line)

    def started(self, r: Run) -> None:
        with self.lock:
            self.running[id(r)] = (r, time.time())

    def finished(self, r: Run, text: str) -> None:
        with self.lock:
            self.running.pop(id(r), None)
            self.done += 1
            line = f"[{self.done}/{self.total}] {text}"
            if self.bar is None:
                self.log(line)
            else:
                with self.bar.external_write_mode():
                    self.log(line)
                self.bar.update(1)

    def running_text(self) -> str:
        """``MCC_seed1 f2 12/50, GWDL f0 3/50``: the running runs and their completed epochs."""
        with self.lock:
            running = list(self.running.values())
        parts = []
        for r, since in running:
            name = r.trainer[len("nnUNetTrainer"):] if r.trainer.startswith("nnUNetTrainer") and \
                r.trainer != "nnUNetTrainer" else r.trainer
            done = _epochs_completed(r.folder, since)
            total = self.epochs.get(r.trainer)
            state = {VALIDATE: "validating"}.get(r.action) or (
                "starting" if done is None else f"{done}/{total}" if total else f"epoch {done}")
            parts.append(f"{name} f{r.fold} {state}")
        return ", ".join(parts)

    def _poll(self, seconds: float) -> None:
        while not self.stop.wait(seconds):
            self.bar.set_postfix_str(self.running_text(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.stop.set()
            self.poller.join()
            self.bar.close()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _epochs_completed(folder: str, since: float) -> Optional[int]:
    """``epochs_completed`` of a fold's training log written since ``since`` (an older one is a former run's)."""
    path = os.path.join(folder, provenance.LOG_FILE)
    try:
        if os.stat(path).st_mtime < since - 1:
            return None
        return int(read_json(path, "training log")["epochs_completed"])
    except (OSError, UserError, ValueError, KeyError, TypeError):
        return None  # not written yet, or being rewritten right now


class WorkerPool:
    """One ``train_worker`` process per calling thread, started on first use and restarted if it dies. Its torch
    threads are ``NNUNET_MCC_TORCH_THREADS`` of ``env`` (crossval sets each run's share of the cores on the CPU)."""

    def __init__(self, env: Dict[str, str]):
        self.env = dict(env)
        self.local = threading.local()
        self.all: List[subprocess.Popen] = []
        self.lock = threading.Lock()

    def _worker(self) -> subprocess.Popen:
        worker = getattr(self.local, "worker", None)
        if worker is None or worker.poll() is not None:
            # the fold locks travel to the worker over a socket (SCM_RIGHTS), so that it holds each one while it trains
            ours, theirs = socket.socketpair()
            try:
                worker = subprocess.Popen([sys.executable, "-m", "nnunet_mcc.experiments.train_worker", "--parent",
                                           str(os.getpid()), LOCK_SOCKET_OPTION, str(theirs.fileno())], env=self.env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True, bufsize=1, pass_fds=(theirs.fileno(),))
            finally:
                theirs.close()
            if not worker.stdout.readline():  # the "ready" line: nnU-Net imported
                worker.wait()
                ours.close()
                raise OSError("the training worker process did not start")
            self.local.worker, self.local.socket = worker, ours
            with self.lock:
                self.all.append(worker)
        return worker

    def train(self, r: Run, log_file: str, dataset_name: str, configuration: str, plans: str, device: str,
              npz: bool, lock: Optional["locks.FoldLock"] = None) -> int:
        job = {"index": 0, "argv": r.command[1:], "log": log_file, "dataset": dataset_name,
               "configuration": configuration, "fold": str(r.fold), "trainer": r.trainer, "plans": plans,
               "device": device, "npz": npz, "continue": r.action == RESUME, "validate_only": r.action == VALIDATE,
               "lock": lock is not None}
        try:
            worker = self._worker()
            if lock is not None:
                socket.send_fds(self.local.socket, [b"L"], [lock.fd])
                lock.record(worker.pid, f"in-process training worker of pid {os.getpid()}")
            worker.stdin.write(json.dumps(job) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
        except OSError as e:
            with open(log_file, "a") as handle:
                handle.write(f"training worker failed: {e}\n")
            return 127
        if not line:  # the worker died (killed, out of memory): this run failed, the next one gets a new worker
            return worker.wait() or 1
        return int(json.loads(line)["code"])

    def close(self) -> None:
        for worker in self.all:
            try:
                worker.stdin.close()
                worker.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                worker.kill()
