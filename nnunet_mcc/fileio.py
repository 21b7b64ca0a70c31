"""The package's one home for writing files: atomic, verified, and failing with one clear line.

Every file the package writes goes to a temporary name beside its target, is flushed to disk, read
back (its size, and for JSON its content) and only then renamed into place, so a reader never sees
a half-written file and a short write (full disk, ``ulimit -f``) never passes silently. A folder is
written the same way: :func:`atomic_folder` fills a temporary folder beside the target and swaps it
in when the block succeeds (one ``renameat2(RENAME_EXCHANGE)`` on Linux, so the target is never missing),
removing it when the block fails.

A process killed mid-write (``kill -9``, out of memory, a node lost) leaves only its temporary names, which
carry its pid and host (``.<name>.<pid>@<host>.<random>.partial``); the next write of the same name on that
host removes those whose process has ended.

Fault hooks for tests (:func:`fault_point`, ``NNUNET_MCC_FAULT``): ``kill@N`` makes the process SIGKILL itself
at its N-th write step, ``enospc@N`` makes the N-th and every later write step fail with "no space left on
device". The variable is read once, at import, and removed from the environment (children do not inherit it).

Failures raise :class:`nnunet_mcc.errors.UserError` naming the file and the cause.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

from nnunet_mcc.errors import UserError

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file size limit exceeded",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "folder does not exist",
    errno.ENOTDIR: "a parent path is a file, not a folder",
    errno.EISDIR: "is a folder",
}


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file, 0o666 less the umask (read once, at import: setting the umask to read it
    is process-wide)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp's temporary files are 0600: renamed into place as they are, reports and run records would be unreadable by
# the rest of a lab's group, unlike nnU-Net's own files beside them
FILE_MODE = _new_file_mode()


FAULT_VARIABLE = "NNUNET_MCC_FAULT"


class _Faults:
    """The armed fault (``kill`` or ``enospc`` at step ``at``) and the steps passed so far in this process."""
    kind: Optional[str] = None
    at = 0
    count = 0


def arm_faults(spec: Optional[str]) -> None:
    """``kill@N``, ``enospc@N`` or None (disarmed); the step counter restarts at 0."""
    _Faults.count = 0
    _Faults.kind, _Faults.at = None, 0
    if not spec:
        return
    match = re.fullmatch(r"(kill|enospc)@([1-9][0-9]*)", spec.strip())
    if not match:
        raise UserError(f"{FAULT_VARIABLE}={spec!r}: expected kill@N or enospc@N (N >= 1)")
    _Faults.kind, _Faults.at = match.group(1), int(match.group(2))


def fault_steps() -> int:
    """How many write steps this process has passed (since :func:`arm_faults`)."""
    return _Faults.count


def fault_point(path: str = "", can_fail: bool = True) -> None:
    """One step of a write (temporary file made, half written, flushed, renamed, ...): counted, and where a fault
    is armed for this step, the process is killed (SIGKILL, no clean-up) or, at a step that writes (``can_fail``),
    the write fails as on a full disk."""
    _Faults.count += 1
    if _Faults.kind == "kill" and _Faults.count == _Faults.at:
        os.kill(os.getpid(), signal.SIGKILL)
    if _Faults.kind == "enospc" and can_fail and _Faults.count >= _Faults.at:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


arm_faults(os.environ.pop(FAULT_VARIABLE, None))


# ---- temporary names: <pid>@<host>, so that a later writer can remove a dead process's leftovers ----------------
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"
_OWNED = re.compile(r"\.(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9_-]+)\..*\.partial\Z", re.S)


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.{os.getpid()}@{_HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_leftovers(path: str) -> List[str]:
    """Remove the temporary files and folders of ``path`` that a process on this host left when it was killed (it
    has ended); those of living processes (another writer at work) are kept. Returns what was removed."""
    folder = os.path.dirname(os.path.abspath(path))
    head = f".{os.path.basename(path)}"
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _OWNED.match(name[len(head):]) if name.startswith(head) else None
        if not match or match.group("host") != _HOST or _alive(int(match.group("pid"))):
            continue
        leftover = os.path.join(folder, name)
        if os.path.isdir(leftover) and not os.path.islink(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            try:
                os.remove(leftover)
            except OSError:
                continue
        removed.append(leftover)
    return removed


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def os_error_cause(error: OSError) -> str:
    """A short, human cause for an OSError ("no space left on device", "file size limit exceeded", ...)."""
    return _CAUSES.get(error.errno) or error.strerror or str(error)


def _sync_write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        half = len(data) // 2
        written = f.write(data[:half])
        f.flush()
        fault_point(path)  # half written
        written += f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    if written != len(data):
        raise OSError(errno.EIO, f"wrote {written} of {len(data)} bytes")


def write_bytes(path: str, data: bytes, what: str = "file", check: Optional[Callable[[bytes], None]] = None) -> None:
    """Write ``data`` to ``path`` atomically and verify it by reading it back.

    ``check(read_back)`` may raise ValueError for a content check beyond the byte comparison.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    tmp = None
    try:
        remove_leftovers(path)
        fault_point(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".partial", dir=folder)
        os.close(fd)
        os.chmod(tmp, FILE_MODE)
        _sync_write(tmp, data)
        with open(tmp, "rb") as f:
            read_back = f.read()
        if read_back != data:
            raise OSError(errno.EIO, f"read back {len(read_back)} bytes that differ from the {len(data)} written")
        if check is not None:
            check(read_back)
        fault_point(path)  # complete, not yet in place
        os.replace(tmp, path)
        tmp = None
        fault_point(path, can_fail=False)  # in place
    except OSError as e:
        raise UserError(f"{path}: cannot write {what} ({os_error_cause(e)})") from None
    except ValueError as e:
        raise UserError(f"{path}: {what} failed its check after writing ({e})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str, what: str = "file") -> None:
    """UTF-8 text, atomically and verified."""
    write_bytes(path, text.encode("utf-8"), what)


def write_json(path: str, obj, what: str = "JSON file", indent: int = 2, sort_keys: bool = False) -> None:
    """JSON (NaN and infinity refused: other readers cannot parse them), atomically and verified."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: cannot write {what}: content is not JSON ({e})") from None

    def parses_back(data: bytes) -> None:
        if json.loads(data.decode("utf-8")) != json.loads(text):
            raise ValueError("the JSON read back differs from what was written")

    write_bytes(path, text.encode("utf-8"), what, check=parses_back)


def read_json(path: str, what: str = "file") -> dict:
    """A JSON file, or one clear line naming the file and what is wrong with it."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({os_error_cause(e)})") from None
    except ValueError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None


@contextmanager
def atomic_folder(target: str, what: str = "folder") -> Iterator[str]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on failure it is removed.

    The parent folder is created when missing (and removed again on failure when this call created it
    and it is still empty). The previous ``target``, if any, is removed only after the new one is in place.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    created = []
    probe = parent
    while probe and not os.path.isdir(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_leftovers(target)
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".partial", dir=parent)
    except OSError as e:
        _remove_empty(created)
        raise UserError(f"{parent}: cannot create the {what} here ({os_error_cause(e)})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        fault_point(target)  # complete, not yet in place
        _swap_in(tmp, target, parent)
        fault_point(target, can_fail=False)  # in place, the previous one not yet removed
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise UserError(f"{target}: cannot write the {what} ({os_error_cause(e)})") from None


def _swap_in(tmp: str, target: str, parent: str) -> None:
    """``tmp`` becomes ``target``: in one step where the file system can swap two names, so a reader (or a kill at
    any point) finds the previous folder or the new one, never neither; the previous one is removed afterwards."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous folder; a kill here leaves a leftover of ours
        return
    old = tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".partial", dir=parent)
    os.replace(target, os.path.join(old, "previous"))
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_empty(folders) -> None:
    for folder in folders:  # deepest first
        try:
            os.rmdir(folder)
        except OSError:
            return
