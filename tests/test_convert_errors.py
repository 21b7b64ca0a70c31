"""Bad input: one line naming the file and the problem, exit code 2, no traceback, nothing in nnUNet_raw."""

import errno
import os
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from dataset_fixtures import PALETTE, convert, make_podocyte, store_flipped

HGG0 = os.path.join("BRATS2015_Training", "HGG", "brats_2013_pat0001_1")


def _copy(pristine, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(pristine / name, dst)
    return dst


def _file(root, rel_case, kind):
    """The .mha of one modality ('T2', 'OT', ...) inside a BraTS case folder."""
    case = os.path.join(root, rel_case)
    for d in sorted(os.listdir(case)):
        if d.endswith(("MR_" + kind, "." + kind)) or f"MR_{kind}." in d or f".{kind}." in d:
            return os.path.join(case, d, d + ".mha")
    raise FileNotFoundError(kind)


def _rewrite(path, array, spacing=(1.0, 1.0, 1.0), is_vector=False):
    img = sitk.GetImageFromArray(array, isVector=is_vector)
    img.SetSpacing(spacing + (1.0,) * (img.GetDimension() - len(spacing)))
    sitk.WriteImage(img, path, useCompression=True)


def _expect_error(capsys, raw, argv, *fragments):
    rc, out, err = convert(capsys, *argv, "-j", "1")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not os.path.exists(raw) or os.listdir(raw) == [], os.listdir(raw)
    return lines[0]


# ---------------------------------------------------------------- BRATS15
def _missing_modality(src):
    t2 = _file(src, HGG0, "T2")
    shutil.rmtree(os.path.dirname(t2))
    return ["missing the T2 image", HGG0]


def _missing_gt(src):
    shutil.rmtree(os.path.dirname(_file(src, HGG0, "OT")))
    return ["has no ground truth", HGG0]


def _two_gt(src):
    ot = os.path.dirname(_file(src, HGG0, "OT"))
    shutil.copytree(ot, ot.replace("OT.", "OT.9"))
    return ["2 ground-truth files", HGG0]


def _shape_mismatch(src):
    ot = _file(src, HGG0, "OT")
    _rewrite(ot, np.zeros((8, 12, 10), np.uint8))
    return [ot, "label size (10, 12, 8) differs from (12, 12, 8)"]


def _spacing_mismatch(src):
    ot = _file(src, HGG0, "OT")
    _rewrite(ot, np.zeros((8, 12, 12), np.uint8), spacing=(1.0, 1.0, 2.0))
    return [ot, "label spacing (1.0, 1.0, 2.0) differs"]


def _bad_label_value(src):
    ot = _file(src, HGG0, "OT")
    a = sitk.GetArrayFromImage(sitk.ReadImage(ot))
    a[0, 0, 0] = 5
    _rewrite(ot, a)
    return [ot, "label values [5] outside the expected set [0, 1, 2, 3, 4]"]


def _truncated(src):
    f = _file(src, HGG0, "Flair")
    data = open(f, "rb").read()
    open(f, "wb").write(data[:len(data) - 200])
    return [f, "cannot read image", "truncated or corrupt"]


def _corrupt(src):
    f = _file(src, HGG0, "T1")
    open(f, "wb").write(b"this is not a MetaImage\n" * 10)
    return [f, "cannot read image"]


def _nan(src):
    f = _file(src, HGG0, "T1c")
    a = sitk.GetArrayFromImage(sitk.ReadImage(f)).astype(np.float32)
    a[1, 2, 3] = np.nan
    a[2, 2, 3] = np.inf
    _rewrite(f, a)
    return [f, "2 NaN or Inf voxels"]


def _real_4d(src):
    f = _file(src, HGG0, "T1")
    a = sitk.GetArrayFromImage(sitk.ReadImage(f))
    _rewrite(f, np.stack([a, a]))
    return [f, "is a 4D image of size (12, 12, 8, 2)"]


def _empty_grade(src):
    shutil.rmtree(src / "BRATS2015_Training" / "LGG")
    os.makedirs(src / "BRATS2015_Training" / "LGG")
    return [str(src / "BRATS2015_Training" / "LGG"), "folder is empty"]


def _corrupt_stream(src):
    f = _file(src, HGG0, "T2")
    data = bytearray(open(f, "rb").read())
    middle = len(data) - (len(data) - data.index(b"ElementDataFile = LOCAL\n")) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])  # ITK reads this without a word
    open(f, "wb").write(bytes(data))
    return [f, "the compressed data are corrupt"]  # from ITK's "Uncompress failed", or from the data check


def _compressed_flag_over_plain_data(src):
    ot = _file(src, HGG0, "OT")
    sitk.WriteImage(sitk.ReadImage(ot), ot, useCompression=False)
    header = open(ot, "rb").read().replace(b"CompressedData = False", b"CompressedData = True")
    open(ot, "wb").write(header)
    return [ot, "the compressed data are corrupt"]  # from ITK's "Uncompress failed", or from the data check


def _flipped_label_elsewhere(src):
    ot = _file(src, HGG0, "OT")
    store_flipped(ot, axis=2, keep_origin=True)  # direction flipped, origin kept: another region of space
    return [ot, "label covers another region than", "resample it onto the image first"]


BRATS_CASES = {"missing modality": _missing_modality, "missing ground truth": _missing_gt,
               "two ground truths": _two_gt, "shape": _shape_mismatch, "spacing": _spacing_mismatch,
               "label values": _bad_label_value, "truncated": _truncated, "corrupt": _corrupt, "nan": _nan,
               "real 4D": _real_4d, "empty grade folder": _empty_grade, "corrupt stream": _corrupt_stream,
               "compressed flag over plain data": _compressed_flag_over_plain_data,
               "flipped label elsewhere": _flipped_label_elsewhere}


@pytest.mark.parametrize("case", list(BRATS_CASES))
def test_brats_bad_input(case, pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "brats")
    fragments = BRATS_CASES[case](src)
    before = {p: (os.path.getmtime(p), p.stat().st_size) for p in src.rglob("*")}
    _expect_error(capsys, raw, ["brats15", src], *fragments)
    assert before == {p: (os.path.getmtime(p), p.stat().st_size) for p in src.rglob("*")}  # source untouched


def test_singleton_4d_is_squeezed(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "brats")
    f = _file(src, HGG0, "T1")
    a = sitk.GetArrayFromImage(sitk.ReadImage(f))
    _rewrite(f, a[None])  # a 4D file whose fourth axis has size 1
    assert sitk.ReadImage(f).GetDimension() == 4
    rc, _, err = convert(capsys, "brats15", src, "-j", "1")
    assert rc == 0, err
    out = sitk.ReadImage(str(raw / "Dataset501_BraTS15" / "imagesTr" / "HGG_brats_2013_pat0001_1_0000.nii.gz"))
    assert out.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), a)


def test_missing_and_empty_source(tmp_path, raw, capsys):
    _expect_error(capsys, raw, ["brats15", tmp_path / "nowhere"], str(tmp_path / "nowhere"), "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, raw, ["promise12", tmp_path / "empty"], str(tmp_path / "empty"), "is empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    _expect_error(capsys, raw, ["brats15", tmp_path / "other"], "no BRATS2015_Training folder")


def test_nnunet_raw_unset(pristine, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    rc, _, err = convert(capsys, "brats15", pristine / "brats")
    assert rc == 2 and err.strip() == "nnunet-mcc convert: error: nnUNet_raw is not set: export " \
        "nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's documentation/set_environment_variables.md)"


def test_dataset_id_taken_by_another_name(pristine, raw, capsys):
    (raw / "Dataset501_Other").mkdir(parents=True)
    rc, _, err = convert(capsys, "brats15", pristine / "brats", "--overwrite")
    assert rc == 2 and "dataset id 501 is already taken by Dataset501_Other" in err
    assert os.listdir(raw) == ["Dataset501_Other"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_no_space_left_leaves_nothing(pristine, raw, capsys, monkeypatch, jobs):
    calls = {"n": 0}
    real_write = sitk.WriteImage

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # the second case fails mid-way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    rc, _, err = convert(capsys, "brats15", pristine / "brats", "-j", jobs)
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err
    assert not raw.exists()


def test_unreadable_file(pristine, tmp_path, raw, capsys, monkeypatch):
    src = _copy(pristine, tmp_path, "brats")
    t1 = _file(src, HGG0, "T1")
    if os.geteuid() != 0:
        os.chmod(t1, 0)
    else:  # root reads everything: make the permission check see what a normal user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == t1 else real_access(p, mode, **kw))
    try:
        _expect_error(capsys, raw, ["brats15", src], t1, "not readable (permission denied)")
    finally:
        os.chmod(t1, 0o644)


# ---------------------------------------------------------------- PROMISE12
def test_promise_truncated_raw(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "promise")
    raw_file = src / "TrainingData_Part2" / "Case01.raw"
    os.truncate(raw_file, 100)
    _expect_error(capsys, raw, ["promise12", src], str(src / "TrainingData_Part2" / "Case01.mhd"),
                  "data incomplete: 100 of")


def test_promise_missing_raw(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "promise")
    os.remove(src / "TrainingData_Part1" / "Case00_segmentation.raw")
    _expect_error(capsys, raw, ["promise12", src], "Case00_segmentation.mhd: its data file Case00_segmentation.raw "
                  "is missing")


def test_promise_missing_and_duplicate_ground_truth(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "promise")
    part = src / "TrainingData_Part3"
    shutil.copy(part / "Case02_segmentation.mhd", part / "Case02-Segmentation.mhd")  # a naming variant
    _expect_error(capsys, raw, ["promise12", src], "TrainingData_Part3: two ground-truth files for case case02")
    for f in ("Case02_segmentation.mhd", "Case02-Segmentation.mhd"):
        os.remove(part / f)
    _expect_error(capsys, raw, ["promise12", src], str(part / "Case02.mhd"), "no ground truth")


def test_promise_label_values(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "promise")
    seg_path = str(src / "TrainingData_Part1" / "Case00_segmentation.mhd")
    img = sitk.ReadImage(seg_path)
    a = sitk.GetArrayFromImage(img)
    a[a == 1] = 2
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    sitk.WriteImage(out, seg_path)
    _expect_error(capsys, raw, ["promise12", src], seg_path, "label values [2] outside the expected set [0, 1]")


# ---------------------------------------------------------------- Podocyte
def test_podocyte_unknown_colour(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "podo_rgb")
    mask_path = src / "train" / "masks" / "S001_glom_1.png"
    m = np.array(Image.open(mask_path))
    m[0, 0] = (12, 34, 56)
    Image.fromarray(m).save(mask_path)
    palette = ",".join(f"{r}-{g}-{b}={i}" for i, (r, g, b) in enumerate(PALETTE))
    _expect_error(capsys, raw, ["podocyte", src, "--mask-map", palette], str(mask_path),
                  "unknown mask colour #0c2238 (12-34-56) in 1 pixels")


def test_podocyte_corrupt_png_and_missing_mask(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "podo")
    mask_path = src / "train" / "masks" / "S000_glom_0.png"
    data = open(mask_path, "rb").read()
    open(mask_path, "wb").write(data[:len(data) // 2])
    _expect_error(capsys, raw, ["podocyte", src], str(mask_path), "truncated or corrupt")
    os.remove(mask_path)
    _expect_error(capsys, raw, ["podocyte", src], str(src / "train" / "regions" / "S000_glom_0.jpeg"),
                  "image has no mask")


def test_podocyte_mask_size_and_values(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "podo")
    mask_path = src / "train" / "masks" / "S001_glom_1.png"
    Image.fromarray(np.zeros((16, 15), np.uint8)).save(mask_path)
    _expect_error(capsys, raw, ["podocyte", src], str(mask_path), "mask size (15, 16) differs from image size (16, 16)")
    Image.fromarray(np.full((16, 16), 85, np.uint8)).save(mask_path)
    _expect_error(capsys, raw, ["podocyte", src], str(mask_path), "mask values [85] are not class indices 0..3",
                  "--mask-map")


def test_cli_subprocess_bad_input(tmp_path):
    """Through the installed command: exit code 2, one line, no traceback."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-mcc")
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw")}
    proc = subprocess.run([exe, "convert", "podocyte", str(tmp_path / "missing")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"nnunet-mcc convert: error: {tmp_path / 'missing'}: source folder does not exist"
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------- reads that ITK lets pass
def test_unreadable_case_folder_is_named(pristine, tmp_path, raw, capsys, monkeypatch):
    src = _copy(pristine, tmp_path, "brats")
    t1_folder = os.path.dirname(_file(src, HGG0, "T1"))
    real_listdir = os.listdir

    def listdir(path="."):  # root reads every folder: make this one behave as for a normal user
        if str(path) == t1_folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    _expect_error(capsys, raw, ["brats15", src], t1_folder, "not readable (permission denied)")


@pytest.mark.parametrize("change", ["element type", "dim size", "bytes appended"])
def test_promise_header_and_data_disagree(change, pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "promise")
    header = src / "TrainingData_Part1" / ("Case00_segmentation.mhd" if change == "bytes appended" else "Case00.mhd")
    text = header.read_text()
    if change == "element type":  # MET_SHORT data read as bytes: twice as many bytes as the header describes
        header.write_text(text.replace("MET_SHORT", "MET_CHAR"))
    elif change == "dim size":
        dims = text.split("DimSize = ")[1].split("\n")[0].split()
        header.write_text(text.replace(f"DimSize = {' '.join(dims)}", f"DimSize = {dims[0]} {dims[1]} 2"))
    else:
        with open(src / "TrainingData_Part1" / "Case00_segmentation.raw", "ab") as f:
            f.write(b"\0" * 7)
    _expect_error(capsys, raw, ["promise12", src], str(header), "header and data disagree", "bytes of voxel data")


@pytest.mark.parametrize("kind", ["negative int32", "float32 halves"])
def test_podocyte_mask_types_are_not_cast(kind, pristine, tmp_path, raw, capsys):
    src = tmp_path / "tif"
    make_podocyte(str(src), "tif", n_train=2, n_test=0, size=16)
    mask_path = src / "train" / "labels" / "S001_glom_1.tif"
    m = np.asarray(Image.open(mask_path)).astype(np.int32 if kind == "negative int32" else np.float32)
    if kind == "negative int32":
        m[0, :3] = -1  # would wrap to 255 in uint8
        fragments = ["mask values [-1] are not class indices 0..3"]
    else:
        m[m == 1] = 0.5  # would truncate to background
        fragments = ["mask holds", "non-integer values (e.g. 0.5)"]
    Image.fromarray(m).save(mask_path)
    _expect_error(capsys, raw, ["podocyte", src], str(mask_path), *fragments)


def test_podocyte_float_image_tile_names_the_source(pristine, tmp_path, raw, capsys):
    src = tmp_path / "tif"
    make_podocyte(str(src), "tif", n_train=2, n_test=0, size=16)
    tile = src / "train" / "images" / "S000_glom_0.tif"
    gray = np.asarray(Image.open(tile).convert("L")).astype(np.float32) / 255
    for other in (src / "train" / "images").iterdir():  # all tiles gray, so only the pixel type is wrong
        Image.fromarray(np.asarray(Image.open(other).convert("L"))).save(other)
    Image.fromarray(gray).save(tile)
    _expect_error(capsys, raw, ["podocyte", src], str(tile), "float32 pixels")


def test_corrupt_stream_that_itk_reads_silently(tmp_path, capfd):
    """Flipped bytes in a compressed .mha: ITK often reads wrong voxels without any message; the check refuses."""
    from nnunet_mcc.dataset_conversion.common import read_sitk
    from nnunet_mcc.errors import UserError

    good = tmp_path / "good.mha"
    original = np.random.default_rng(0).normal(300, 40, (16, 24, 24)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(original), str(good), useCompression=True)
    data = good.read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    silent = 0
    for k, where in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
        bad = bytearray(data)
        at = start + int(where * (len(data) - start))
        bad[at:at + 4] = bytes(b ^ 0xFF for b in bad[at:at + 4])
        path = tmp_path / f"bad{k}.mha"
        path.write_bytes(bytes(bad))
        capfd.readouterr()
        voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        silent += not capfd.readouterr().err.strip() and (voxels != original).any()
        with pytest.raises(UserError, match="the compressed data are corrupt"):
            read_sitk(str(path))
    assert silent  # the case the check exists for: wrong voxels, no exception, no message


# ---------------------------------------------------------------- refused before anything is moved into place
def test_refused_split_leaves_nothing(pristine, tmp_path, raw, capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    _expect_error(capsys, raw, ["promise12", pristine / "promise", "--split", "10/50/40"],
                  "--split: 3 training cases are too few for a 10%/50%/40% split")
    assert not (tmp_path / "pre").exists()


def test_preprocessed_is_a_file(pristine, tmp_path, raw, capsys, monkeypatch):
    (tmp_path / "pre").write_text("not a folder")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    _expect_error(capsys, raw, ["promise12", pristine / "promise", "--split", "70/20/10"],
                  f"nnUNet_preprocessed={tmp_path / 'pre'}: is a file, not a folder")


def test_sigterm_cleans_up_like_ctrl_c(pristine, raw, capsys, monkeypatch):
    import signal

    from nnunet_mcc.dataset_conversion import brats15

    real_convert, calls = brats15.convert_case, []

    def convert_then_terminated(case, **kwargs):
        calls.append(case.case_id)
        if len(calls) == 2:  # as `kill PID` would, half-way through the dataset
            os.kill(os.getpid(), signal.SIGTERM)
        return real_convert(case, **kwargs)

    def unhandled(signum, frame):  # what the default action (ending pytest) is replaced by here
        raise RuntimeError("SIGTERM reached the default handler")

    monkeypatch.setattr(brats15, "convert_case", convert_then_terminated)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        rc, _, err = convert(capsys, "brats15", pristine / "brats", "-j", "1")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert rc == 130 and err.strip() == "nnunet-mcc convert: interrupted", (rc, err)
    assert len(calls) == 2 and not raw.exists()


# ---------------------------------------------------------------- writes that ITK lets pass
def _in_child_with_file_size_limit(limit: int, argv, out_dir) -> tuple:
    """``nnunet-mcc ARGV`` in a forked child whose files may not exceed ``limit`` bytes (``ulimit -f``):
    (exit code, stdout, stderr)."""
    import resource

    from nnunet_mcc.cli import main

    out, err = out_dir / "stdout", out_dir / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: its own output files, the limit, the command
        rc = 99
        try:
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            rc = main([str(a) for a in argv])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.read_text(), err.read_text()


@pytest.mark.parametrize("dataset", ["brats15", "podocyte"])
def test_short_write_under_file_size_limit(dataset, pristine, tmp_path, raw):
    src = pristine / ("brats" if dataset == "brats15" else "podo")
    limit = 1000 if dataset == "brats15" else 200  # below the size of one written image
    rc, out, err = _in_child_with_file_size_limit(limit, ["convert", dataset, src, "-j", "1", "--no-progress"],
                                                  tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Wrote" not in out, (rc, out, err)
    folder = "Dataset501_BraTS15" if dataset == "brats15" else "Dataset503_Podocyte"
    assert f"{raw / folder / 'imagesTr'}{os.sep}" in lines[0], lines[0]  # where it was to go, not a temporary name
    assert "cannot write (file size limit exceeded)" in lines[0], lines[0]
    assert not raw.exists()


def test_podocyte_16_bit_rgb_tile_is_not_cut_to_8_bits(pristine, tmp_path, raw, capsys):
    src = _copy(pristine, tmp_path, "podo")
    tile = src / "train" / "regions" / "S001_glom_1.jpeg"
    wide = np.asarray(Image.open(tile)).astype(np.uint16) * 257  # 16-bit samples: Pillow keeps only the high byte
    os.remove(tile)
    png = src / "train" / "regions" / "S001_glom_1.png"
    sitk.WriteImage(sitk.GetImageFromArray(wide, isVector=True), str(png))
    _expect_error(capsys, raw, ["podocyte", src], str(png), "16-bit colour samples")
