"""The package's one home for writing files: atomic, verified, and failing with one clear line.

Every file the package writes goes to a temporary name beside its target, is flushed to disk, read
back (its size, and for JSON its content) and only then renamed into place, so a reader never sees
a half-written file and a short write (full disk, ``ulimit -f``) never passes silently. A folder is
written the same way: :func:`atomic_folder` fills a temporary folder beside the target and swaps it
in when the block succeeds, removing it when the block fails.

Failures raise :class:`nnunet_mcc.errors.UserError` naming the file and the cause.
"""

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

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


def os_error_cause(error: OSError) -> str:
    """A short, human cause for an OSError ("no space left on device", "file size limit exceeded", ...)."""
    return _CAUSES.get(error.errno) or error.strerror or str(error)


def _sync_write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        written = f.write(data)
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
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
        os.close(fd)
        os.chmod(tmp, FILE_MODE)
        _sync_write(tmp, data)
        with open(tmp, "rb") as f:
            read_back = f.read()
        if read_back != data:
            raise OSError(errno.EIO, f"read back {len(read_back)} bytes that differ from the {len(data)} written")
        if check is not None:
            check(read_back)
        os.replace(tmp, path)
        tmp = None
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
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.partial-", dir=parent)
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
        old = None
        if os.path.lexists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.replace(target, os.path.join(old, "previous"))
        os.replace(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise UserError(f"{target}: cannot write the {what} ({os_error_cause(e)})") from None


def _remove_empty(folders) -> None:
    for folder in folders:  # deepest first
        try:
            os.rmdir(folder)
        except OSError:
            return
