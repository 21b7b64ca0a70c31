"""One writer per run folder, across processes: an OS lock (``flock``) on a lock file beside the fold folder.

``<trainer folder>/.fold_<f>.nnunet_mcc.lock`` is taken (exclusively, ``fcntl.flock``) by whatever trains, resumes or
validates ``fold_<f>``: crossval (its runs in ``nnUNetv2_train`` processes and in its in-process workers) and the
script / SLURM array task that ``crossval --write-script / --slurm`` writes (``flock(1)``). The lock belongs to the
open file, which the training process inherits: it is held while any process that could write into the fold is
alive (also a training orphaned by a killed crossval) and released by the kernel when the last of them ends; no
stale lock is ever left behind, and nothing has to be cleaned up after a crash.

The file lies beside the fold folder, not in it, so that it locks the name (a folder moved aside by
``--retrain-mismatched`` does not take its lock with it) and leaves nnU-Net's folder as nnU-Net wrote it. It holds
the holder's pid and host (``<pid> <host>``, rewritten in place by each holder), which a process finding it locked
names. The file is never removed: removing it could let two processes hold locks on two different files of one
name. ``flock`` works across hosts where the shared file system supports it (NFSv4, Lustre and GPFS do, as
locks; NFSv3 with ``local_lock`` does not).
"""

import fcntl
import os
import socket
from typing import Callable, Optional

SUFFIX = ".nnunet_mcc.lock"
SKIP, WAIT = "skip", "wait"
CHOICES = (SKIP, WAIT)


def lock_path(folder: str) -> str:
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}{SUFFIX}")


class FoldLock:
    """The lock of one fold folder (``lock_path``); ``fd`` is the open lock file while held."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.path = lock_path(folder)
        self.fd: Optional[int] = None

    def _open(self) -> int:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def acquire(self, block: bool) -> bool:
        """Take the lock (waiting for it with ``block``); False when another process holds it."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.record(os.getpid())
        return True

    def record(self, pid: int, what: str = "") -> None:
        """Say who holds the lock (``<pid> <host>[ <what>]``), for a process that finds it taken."""
        text = f"{pid} {socket.gethostname()}{' ' + what if what else ''}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text, 0)

    def holder(self) -> str:
        """``pid 123 on node01`` as the lock file says (``an unknown process`` while it is being rewritten)."""
        try:
            with open(self.path) as handle:
                parts = handle.read().split(maxsplit=2)
        except OSError:
            parts = []
        if len(parts) < 2 or not parts[0].isdigit():
            return "an unknown process"
        return f"pid {parts[0]} on {parts[1]}" + (f" ({parts[2].strip()})" if len(parts) > 2 else "")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock ends with the last descriptor of the file (a training may still hold one)
            self.fd = None


def take(folder: str, if_locked: str = SKIP, log: Callable[[str], None] = print,
         label: str = "") -> Optional[FoldLock]:
    """The lock of ``folder``, or None when another process holds it and ``if_locked`` is ``skip``; with ``wait``,
    once it is released. Either way one line names the folder and the holder (``label`` before it)."""
    if if_locked not in CHOICES:
        raise ValueError(f"if_locked must be one of {CHOICES}, got {if_locked!r}")
    lock = FoldLock(folder)
    if lock.acquire(block=False):
        return lock
    then = "waiting for it" if if_locked == WAIT else "skipped, not trained here"
    log(f"{label}{lock.folder} is in use by {lock.holder()} (lock {os.path.basename(lock.path)}): {then}")
    if if_locked == SKIP:
        return None
    lock.acquire(block=True)
    return lock
