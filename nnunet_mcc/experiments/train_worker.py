"""A long-lived process running several nnU-Net trainings one after another (``crossval --in-process``).

Each job calls ``nnunetv2.run.run_training.run_training``, the function behind ``nnUNetv2_train``, with
the same arguments, so the training is nnU-Net's own; only Python start-up and nnU-Net's imports (about
10 s per run on a small CPU) are paid once. Jobs arrive as JSON lines on stdin; each run's output goes
to its own log file; one JSON status line per job is written to the original stdout.
"""

import json
import os
import sys
import traceback


PARENT_OPTION = "--parent"
LOCK_SOCKET_OPTION = "--lock-socket"  # runner.LOCK_SOCKET_OPTION


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM to this process when the thread that started it ends, or at once if ``parent`` has ended
    already. Without it a worker whose ``crossval`` was killed trains on, orphaned, and writes into a fold
    folder that the next ``crossval`` has taken over; with it the run stops as a preempted run does (the
    trainers save a checkpoint on SIGTERM and the next ``crossval`` resumes or retrains it)."""
    import signal

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the call
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    if PARENT_OPTION in sys.argv[1:-1]:
        die_with_parent(int(sys.argv[sys.argv.index(PARENT_OPTION) + 1]))
    lock_socket = None
    if LOCK_SOCKET_OPTION in sys.argv[1:-1]:
        import socket

        lock_socket = socket.socket(fileno=int(sys.argv[sys.argv.index(LOCK_SOCKET_OPTION) + 1]))
    status = os.fdopen(os.dup(1), "w", buffering=1)
    from nnunet_mcc.budget import torch_threads_from_env

    threads = torch_threads_from_env()
    import torch
    import nnunetv2.run.run_training  # noqa: F401  (nnU-Net imported before the "ready" line)

    if threads > 0:
        # nnUNetv2_train takes every core on cpu; parallel jobs must share them instead
        torch.set_num_threads(threads)
    status.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        # the fold's lock (experiments.locks), held while this job trains: also if the crossval that sent it dies
        held = receive_lock(lock_socket) if job.get("lock") and lock_socket is not None else None
        try:
            code = run_job(job, threads)
        finally:
            if held is not None:
                os.close(held)
        status.write(json.dumps({"index": job["index"], "code": code}) + "\n")
        import gc

        gc.collect()
    return 0


def receive_lock(lock_socket) -> int:
    import socket

    _, fds, _, _ = socket.recv_fds(lock_socket, 1, 1)
    return fds[0]


def run_job(job: dict, threads: int) -> int:
    """One training, its output (nnU-Net's worker processes' too) into the job's log; 0 or 1."""
    import torch
    from nnunetv2.run.run_training import run_training

    with open(job["log"], "a") as log:
        log.write(f"$ (in process) nnUNetv2_train {' '.join(job['argv'])}\n")
        log.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)  # at the descriptor level, so nnU-Net's worker processes write there too
        os.dup2(log.fileno(), 2)
        code = 0
        try:
            device = torch.device(job["device"])
            if job["device"] == "cpu" and threads <= 0:
                torch.set_num_threads(os.cpu_count() or 1)
            run_training(job["dataset"], job["configuration"], job["fold"], job["trainer"], job["plans"],
                         None, 1, job["npz"], job["continue"], job["validate_only"], False, False, device)
        except BaseException:  # one failed run must not end the others
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
