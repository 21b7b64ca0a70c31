"""Bad input: one line naming the file and the problem, exit code 2, no traceback, nothing in nnUNet_raw."""

import errno
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from dataset_fixtures import PALETTE, convert, make_brats15, make_podocyte, make_promise12

HGG0 = os.path.join("BRATS2015_Training", "HGG", "brats_2013_pat0001_1")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_brats15(str(root / "brats"), n_hgg=2, n_lgg=1, n_test=1, shape=(8, 12, 12))
    make_promise12(str(root / "promise"), per_part=(1, 1, 1), n_test=1)
    make_podocyte(str(root / "podo"), "hail", n_train=2, n_test=1, size=16)
    make_podocyte(str(root / "podo_rgb"), "rgb", n_train=2, n_test=0, size=16)
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    return raw


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


BRATS_CASES = {"missing modality": _missing_modality, "missing ground truth": _missing_gt,
               "two ground truths": _two_gt, "shape": _shape_mismatch, "spacing": _spacing_mismatch,
               "label values": _bad_label_value, "truncated": _truncated, "corrupt": _corrupt, "nan": _nan,
               "real 4D": _real_4d, "empty grade folder": _empty_grade}


@pytest.mark.parametrize("case", list(BRATS_CASES))
def test_brats_bad_input(case, pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "brats")
    fragments = BRATS_CASES[case](src)
    before = {p: (os.path.getmtime(p), p.stat().st_size) for p in src.rglob("*")}
    _expect_error(capsys, env, ["brats15", src], *fragments)
    assert before == {p: (os.path.getmtime(p), p.stat().st_size) for p in src.rglob("*")}  # source untouched


def test_singleton_4d_is_squeezed(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "brats")
    f = _file(src, HGG0, "T1")
    a = sitk.GetArrayFromImage(sitk.ReadImage(f))
    _rewrite(f, a[None])  # a 4D file whose fourth axis has size 1
    assert sitk.ReadImage(f).GetDimension() == 4
    rc, _, err = convert(capsys, "brats15", src, "-j", "1")
    assert rc == 0, err
    out = sitk.ReadImage(str(env / "Dataset501_BraTS15" / "imagesTr" / "HGG_brats_2013_pat0001_1_0000.nii.gz"))
    assert out.GetDimension() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), a)


def test_missing_and_empty_source(tmp_path, env, capsys):
    _expect_error(capsys, env, ["brats15", tmp_path / "nowhere"], str(tmp_path / "nowhere"), "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, env, ["promise12", tmp_path / "empty"], str(tmp_path / "empty"), "is empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    _expect_error(capsys, env, ["brats15", tmp_path / "other"], "no BRATS2015_Training folder")


def test_nnunet_raw_unset(pristine, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    rc, _, err = convert(capsys, "brats15", pristine / "brats")
    assert rc == 2 and err.strip() == "nnunet-mcc convert: error: nnUNet_raw is not set: export " \
        "nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's documentation/set_environment_variables.md)"


def test_dataset_id_taken_by_another_name(pristine, env, capsys):
    (env / "Dataset501_Other").mkdir(parents=True)
    rc, _, err = convert(capsys, "brats15", pristine / "brats", "--overwrite")
    assert rc == 2 and "dataset id 501 is already taken by Dataset501_Other" in err
    assert os.listdir(env) == ["Dataset501_Other"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_no_space_left_leaves_nothing(pristine, env, capsys, monkeypatch, jobs):
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
    assert not env.exists()


def test_unreadable_file(pristine, tmp_path, env, capsys, monkeypatch):
    src = _copy(pristine, tmp_path, "brats")
    t1 = _file(src, HGG0, "T1")
    if os.geteuid() != 0:
        os.chmod(t1, 0)
    else:  # root reads everything: make the permission check see what a normal user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == t1 else real_access(p, mode, **kw))
    try:
        _expect_error(capsys, env, ["brats15", src], t1, "not readable (permission denied)")
    finally:
        os.chmod(t1, 0o644)


# ---------------------------------------------------------------- PROMISE12
def test_promise_truncated_raw(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "promise")
    raw_file = src / "TrainingData_Part2" / "Case01.raw"
    os.truncate(raw_file, 100)
    _expect_error(capsys, env, ["promise12", src], str(src / "TrainingData_Part2" / "Case01.mhd"),
                  "data incomplete: 100 of")


def test_promise_missing_raw(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "promise")
    os.remove(src / "TrainingData_Part1" / "Case00_segmentation.raw")
    _expect_error(capsys, env, ["promise12", src], "Case00_segmentation.mhd: its data file Case00_segmentation.raw "
                  "is missing")


def test_promise_missing_and_duplicate_ground_truth(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "promise")
    part = src / "TrainingData_Part3"
    shutil.copy(part / "Case02_segmentation.mhd", part / "Case02-Segmentation.mhd")  # a naming variant
    _expect_error(capsys, env, ["promise12", src], "TrainingData_Part3: two ground-truth files for case case02")
    for f in ("Case02_segmentation.mhd", "Case02-Segmentation.mhd"):
        os.remove(part / f)
    _expect_error(capsys, env, ["promise12", src], str(part / "Case02.mhd"), "no ground truth")


def test_promise_label_values(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "promise")
    seg_path = str(src / "TrainingData_Part1" / "Case00_segmentation.mhd")
    img = sitk.ReadImage(seg_path)
    a = sitk.GetArrayFromImage(img)
    a[a == 1] = 2
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    sitk.WriteImage(out, seg_path)
    _expect_error(capsys, env, ["promise12", src], seg_path, "label values [2] outside the expected set [0, 1]")


# ---------------------------------------------------------------- Podocyte
def test_podocyte_unknown_colour(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "podo_rgb")
    mask_path = src / "train" / "masks" / "S001_glom_1.png"
    m = np.array(Image.open(mask_path))
    m[0, 0] = (12, 34, 56)
    Image.fromarray(m).save(mask_path)
    palette = ",".join(f"{r}-{g}-{b}={i}" for i, (r, g, b) in enumerate(PALETTE))
    _expect_error(capsys, env, ["podocyte", src, "--mask-map", palette], str(mask_path),
                  "unknown mask colour #0c2238 (12-34-56) in 1 pixels")


def test_podocyte_corrupt_png_and_missing_mask(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "podo")
    mask_path = src / "train" / "masks" / "S000_glom_0.png"
    data = open(mask_path, "rb").read()
    open(mask_path, "wb").write(data[:len(data) // 2])
    _expect_error(capsys, env, ["podocyte", src], str(mask_path), "truncated or corrupt")
    os.remove(mask_path)
    _expect_error(capsys, env, ["podocyte", src], str(src / "train" / "regions" / "S000_glom_0.jpeg"),
                  "image has no mask")


def test_podocyte_mask_size_and_values(pristine, tmp_path, env, capsys):
    src = _copy(pristine, tmp_path, "podo")
    mask_path = src / "train" / "masks" / "S001_glom_1.png"
    Image.fromarray(np.zeros((16, 15), np.uint8)).save(mask_path)
    _expect_error(capsys, env, ["podocyte", src], str(mask_path), "mask size (15, 16) differs from image size (16, 16)")
    Image.fromarray(np.full((16, 16), 85, np.uint8)).save(mask_path)
    _expect_error(capsys, env, ["podocyte", src], str(mask_path), "mask values [85] are not class indices 0..3",
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
