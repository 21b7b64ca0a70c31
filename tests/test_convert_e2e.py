"""The converters as a user runs them: the installed command and the scripts, a file-size limit, a full disk."""

import os
import re
import resource
import subprocess
import sys
import uuid

import pytest

from dataset_fixtures import make_podocyte

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(os.path.dirname(sys.executable), "nnunet-mcc")


def _run(argv, raw, file_size_limit=None, **env):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "nnUNet_raw": str(raw), "PYTHONDONTWRITEBYTECODE": "1", **env}
    env.pop("nnUNet_preprocessed", None)
    return subprocess.run([str(a) for a in argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


def test_short_write_under_ulimit(pristine, tmp_path):
    """``ulimit -f``: ITK's NIfTI writer cuts every image short without an error; the command refuses."""
    proc = _run([EXE, "convert", "brats15", pristine / "brats", "-j", "2", "--no-progress"], tmp_path / "raw",
                file_size_limit=1500)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write (file size limit exceeded)" in lines[0], proc.stderr
    assert str(tmp_path / "raw" / "Dataset501_BraTS15") in lines[0] and "NWAD" not in proc.stderr
    assert not (tmp_path / "raw").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB file system (tmpfs), or a skip where one cannot be mounted here."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny file system needs root")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


@pytest.mark.parametrize("dataset", ["brats15", "podocyte"])
def test_full_disk(dataset, pristine, tiny_disk):
    raw = tiny_disk / "raw"
    src = pristine / ("brats" if dataset == "brats15" else "podo")
    make_podocyte(str(tiny_disk / "filler"), "png", n_train=1, n_test=0, size=8)  # something of the user's there
    before = sorted(os.listdir(tiny_disk))
    with open(tiny_disk / "ballast", "wb") as f:  # leave less room than the dataset needs
        f.write(b"\0" * (72 << 10))
    proc = _run([EXE, "convert", dataset, src, "-j", "1", "--no-progress"], raw)
    os.remove(tiny_disk / "ballast")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write (no space left on device)" in lines[0], proc.stderr
    # named at the first image that did not fit (ITK's gzip writer says nothing), where it was to go
    folder = "Dataset501_BraTS15" if dataset == "brats15" else "Dataset503_Podocyte"
    assert re.search(f"error: {re.escape(str(raw / folder))}/(images|labels)T[rs]/", lines[0]), lines[0]
    assert "NWAD" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tiny_disk)) == before  # nnUNet_raw (created by the command) removed again


@pytest.mark.parametrize("script,args", [("Dataset501_BraTS15.py", ["brats", "--label-mode", "regions"]),
                                         ("Dataset502_PROMISE12.py", ["promise"]),
                                         ("Dataset503_Podocyte.py", ["podo"])])
def test_dataset_conversion_scripts(script, args, pristine, tmp_path):
    """The scripts of the clone's dataset_conversion/ folder run the packaged converters."""
    proc = _run([sys.executable, os.path.join("dataset_conversion", script), pristine / args[0], *args[1:], "-j", "1",
                 "--no-progress"], tmp_path / "raw", PYTHONPATH="", NNUNET_MCC_NO_AUTOREGISTER="1")
    assert proc.returncode == 0, proc.stderr
    [dataset] = os.listdir(tmp_path / "raw")
    assert dataset.startswith(script[:10]) and os.path.isfile(tmp_path / "raw" / dataset / "dataset.json")
    bad = _run([sys.executable, os.path.join("dataset_conversion", script), tmp_path / "missing"], tmp_path / "raw2",
               PYTHONPATH="", NNUNET_MCC_NO_AUTOREGISTER="1")
    assert bad.returncode == 2 and bad.stderr.strip() == \
        f"nnunet-mcc convert: error: {tmp_path / 'missing'}: source folder does not exist"


def test_export_command(pristine, tmp_path):
    raw = tmp_path / "raw"
    assert _run([EXE, "convert", "promise12", pristine / "promise", "-j", "1", "--no-progress"], raw).returncode == 0
    labels = raw / "Dataset502_PROMISE12" / "labelsTr"
    proc = _run([EXE, "export", "promise12", labels, tmp_path / "out", "--subset", "training"], raw)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out"))[:2] == ["Case00_segmentation.mhd", "Case00_segmentation.raw"]
    proc = _run([EXE, "export", "brats15", labels, tmp_path / "out2"], raw)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
