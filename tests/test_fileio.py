"""The package's atomic, verified writers: a short write or a failed block never leaves a file or folder."""

import json
import os
import subprocess
import sys

import pytest

from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import atomic_folder, read_json, write_json, write_text


def test_write_json_round_trip_and_refuses_nan(tmp_path):
    path = tmp_path / "a.json"
    write_json(str(path), {"b": [1, 2.5], "a": "x"})
    assert json.loads(path.read_text()) == {"b": [1, 2.5], "a": "x"}
    with pytest.raises(UserError, match="not JSON"):
        write_json(str(path), {"x": float("nan")})
    assert json.loads(path.read_text()) == {"b": [1, 2.5], "a": "x"}  # the old file is untouched
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left behind


def test_size_limit_is_one_clear_error_and_leaves_no_file(tmp_path):
    """A write past ``ulimit -f`` (RLIMIT_FSIZE) must fail loudly, never leave a truncated file."""
    script = (
        "import resource, sys\n"
        "from nnunet_mcc.errors import UserError\n"
        "from nnunet_mcc.fileio import write_text\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    write_text(sys.argv[1], 'x' * 5000)\n"
        "except UserError as e:\n"
        "    print(e); sys.exit(2)\n")
    target = tmp_path / "big.txt"
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "file size limit exceeded" in proc.stdout and str(target) in proc.stdout
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_names_the_file(tmp_path):
    with pytest.raises(UserError, match="folder does not exist"):
        write_text(str(tmp_path / "missing" / "f.txt"), "hello")


def test_atomic_folder_swaps_in_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic_folder(str(target)) as tmp:
        (open(os.path.join(tmp, "x.txt"), "w")).write("1")
        assert not target.exists()
    assert (target / "x.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_folder(str(target)) as tmp:
            open(os.path.join(tmp, "y.txt"), "w").write("2")
            raise RuntimeError("boom")
    assert sorted(os.listdir(target)) == ["x.txt"]  # the previous folder stays as it was
    assert sorted(os.listdir(tmp_path / "deep")) == ["out"]
    fresh = tmp_path / "new_parent" / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(str(fresh)):
            raise RuntimeError("boom")
    assert not (tmp_path / "new_parent").exists()  # a parent this call created is removed again


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_json(str(bad), "summary")
    with pytest.raises(UserError, match="does not exist"):
        read_json(str(tmp_path / "none.json"), "summary")


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    """Not mkstemp's 0600: a report or run record is readable wherever nnU-Net's own files beside it are."""
    code = ("import os, sys\n"
            "os.umask(0o027)\n"
            "from nnunet_mcc.fileio import write_text\n"
            "write_text(sys.argv[1], 'x')\n"
            "open(sys.argv[2], 'w').close()\n")
    ours, plain = tmp_path / "ours.txt", tmp_path / "plain.txt"
    subprocess.run([sys.executable, "-c", code, str(ours), str(plain)], check=True)
    assert os.stat(ours).st_mode & 0o777 == os.stat(plain).st_mode & 0o777 == 0o640
