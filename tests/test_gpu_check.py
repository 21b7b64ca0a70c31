"""``benchmarks/gpu_check.py`` on the CPU with tiny sizes: every stage, the JSON and the Markdown table, the
targets, the budget, and bad arguments."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
# the suite trains the reference and the MCC (each of the others trains through nnU-Net in its own tests); on the day
# the check trains all six
TRAINERS = ["nnUNetTrainerBaseline", "nnUNetTrainerMCC"]
NOT_APPLICABLE = "not applicable: targets are for CUDA"


def run_check(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_MCC_"))}
    return subprocess.run([sys.executable, SCRIPT, *args], env={**env, "MPLBACKEND": "agg"}, capture_output=True,
                          text=True, timeout=timeout)


def markdown_tables(text):
    """``{section heading: [row cells, ...]}`` of the Markdown tables (header row included, separator left out)."""
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip()[1:-1].split(" | ")]
            tables.setdefault(heading, []).append(cells)
    return tables


def rows_by_first_cell(table):
    header, *rows = table
    return {row[0]: dict(zip(header, row)) for row in rows}


def positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def finite(values):
    return bool(values) and all(isinstance(v, float) and math.isfinite(v) for v in values)


@pytest.mark.e2e
def test_gpu_check_tiny_on_cpu(tmp_path):
    """Every stage ok, finite losses, positive ratios, targets marked not applicable on the CPU, per trainer the
    timed epochs and a timed prediction read back, and the Markdown table saying what the JSON says."""
    import SimpleITK as sitk

    out = tmp_path / "check"
    proc = run_check("--device", "cpu", "--tiny", "--output", str(out), "--budget-s", "900",
                     "--trainers", "nnUNetTrainerMCC")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["dataset", "losses", "training", "predict", "ratios"]
    assert {name: s["status"] for name, s in stages.items()} == dict.fromkeys(stages, "ok")
    assert all(s["wall_seconds"] >= 0 and s["cpu_seconds"] >= 0 for s in stages.values())
    assert stages["training"]["wall_seconds"] > 0 and stages["training"]["cpu_seconds"] > 0
    assert report["ok"] and report["over_target"] == {} and report["device"] == "cpu"
    assert report["versions"]["gpu"] is None and report["versions"]["torch"] and report["versions"]["nnunetv2"]
    settings = report["settings"]
    assert settings["losses"]["memory"] == "not measured on cpu" and "never compiles" in settings["losses"]["compile"]
    assert settings["training"]["trainers"] == TRAINERS and settings["training"]["nnUNet_compile"] == "0"
    assert not os.path.exists(settings["work_dir"])  # the temporary work folder is removed
    dataset = stages["dataset"]
    assert dataset["configuration"] == "3d_fullres_small" and dataset["patch_size"] == [16, 16, 16]
    assert dataset["batch_size"] == 2
    # the losses run at the plans' patch and batch, at every deep-supervision scale
    assert stages["losses"]["inputs"]["logits"][0] == [2, 4, 16, 16, 16]

    trainers = report["trainers"]
    assert list(trainers) == TRAINERS
    for name, record in trainers.items():
        loss, run, predict = record["loss"], record["training"], record["predict"]
        assert finite([loss["value"], loss["seconds"], loss["time_ratio"]]) and loss["memory_ratio"] is None
        assert run["status"] == "ok" and run["returncode"] == 0, run
        assert len(run["train_losses"]) == 2 and finite(run["train_losses"] + run["val_losses"]), run
        assert run["cost"]["train_iterations"] == 4 and os.path.isfile(run["log"])
        assert record["timed_epochs"] == run["timed_epochs"] == 1  # the epoch after the first
        assert run["epoch_median_seconds"] == run["epoch_seconds"][1]
        assert positive(record["ratios"]["epoch_ratio"]) and positive(record["ratios"]["memory_ratio"])
        assert record["over_target"] is None  # targets are for CUDA
        assert positive(predict["seconds"]) and predict["status"] == "ok"
        assert predict["command"].startswith("nnUNetv2_predict ") and f"-f 0 -tr {name}" in predict["command"]
        (case,) = predict["read_back"]["cases"]
        assert predict["read_back"]["ok"] and case["message"] == ""
        assert case["shape"] == case["expected_shape"] == [16, 16, 16] and set(case["labels"]) <= {0, 1, 2, 3}
        assert sitk.GetArrayFromImage(sitk.ReadImage(case["file"])).shape == (16, 16, 16)
        assert os.path.dirname(case["file"]) == str(out / "prediction" / name)
    reference = trainers["nnUNetTrainerBaseline"]
    assert reference["loss"]["time_ratio"] == 1.0 and reference["ratios"]["epoch_ratio"] == 1.0
    assert "MCC" in trainers["nnUNetTrainerMCC"]["loss"]["loss"]

    # the Markdown table says what the JSON says
    text = (out / "gpu_check.md").read_text()
    assert text.strip() in proc.stdout
    tables = markdown_tables(text)
    assert {k: v["status"] for k, v in rows_by_first_cell(tables["Stages"]).items()} == dict.fromkeys(stages, "ok")
    cells = rows_by_first_cell(tables["Trainers against the reference"])
    assert {name: (c["loss ratio"], c["epoch ratio"], c["timed epochs"], c["read back"], c["over target"])
            for name, c in cells.items()} == \
        {name: (f"{t['loss']['time_ratio']:.3f}", f"{t['ratios']['epoch_ratio']:.3f}", "1", "ok", NOT_APPLICABLE)
         for name, t in trainers.items()}


def test_targets_mark_the_rows_over_target():
    """On CUDA every row is judged: loss time <= 1.0x, memory <= 1.1x, epochs of MCC, GWDL, Tversky <= 1.02x and
    SegAN <= 1.35x; an unmeasured ratio is over target; off CUDA nothing is judged."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from gpu_check_report import over_target

    loss, ratios = {"time_ratio": 0.99, "memory_ratio": 1.1}, {"epoch_ratio": 1.02, "memory_ratio": 1.05}
    assert over_target("nnUNetTrainerMCC", loss, ratios, "cuda") == []
    assert over_target("nnUNetTrainerMCC", loss, {**ratios, "epoch_ratio": 1.03}, "cuda") == \
        ["epoch time 1.030x > 1.02x"]
    assert over_target("nnUNetTrainerSegAN", loss, {**ratios, "epoch_ratio": 1.3}, "cuda") == []
    assert over_target("nnUNetTrainerGWDL", {"time_ratio": 1.2, "memory_ratio": None}, ratios, "cuda") == \
        ["loss time 1.200x > 1.0x", "loss memory not measured > 1.1x"]
    assert over_target("nnUNetTrainerMCC_CE", loss, {**ratios, "epoch_ratio": 2.0}, "cuda") == []  # no epoch target
    assert over_target("nnUNetTrainerBaseline", {}, {}, "cuda") == []
    assert over_target("nnUNetTrainerMCC", {}, {}, "cpu") is None


@pytest.mark.e2e  # a fresh interpreter that writes a dataset
def test_gpu_check_budget_exhausted_skips_later_stages(tmp_path):
    out = tmp_path / "check"
    proc = run_check("--device", "cpu", "--tiny", "--output", str(out), "--budget-s", "0.5", timeout=300)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = {name: (s["status"], s["message"]) for name, s in report["stages"].items()}
    assert statuses["dataset"] == ("failed", "budget exhausted during nnUNetv2_plan_and_preprocess")
    assert statuses["training"] == statuses["ratios"] == statuses["predict"] == ("skipped", "budget exhausted")
    assert report["ok"] is False
    cells = rows_by_first_cell(markdown_tables((out / "gpu_check.md").read_text())["Stages"])
    assert [cells[name]["status"] for name in ("training", "predict", "ratios")] == \
        ["skipped: budget exhausted"] * 3
    assert all(t["predict"]["read_back"] is None and t["timed_epochs"] == 0 for t in report["trainers"].values())


@pytest.mark.parametrize("args, message", [
    (["--budget-s", "0"], "gpu_check: --budget-s must be a positive number of seconds, got 0"),
    (["--budget-s", "nan"], "gpu_check: --budget-s must be a positive number of seconds, got nan"),
    (["--trainers", "nnUNetTrainerMCC", "nnUNetTrainerNope"], "gpu_check: --trainers: nnUNetTrainerNope not among the "
     "checked trainers (nnUNetTrainerBaseline nnUNetTrainerMCC nnUNetTrainerGWDL nnUNetTrainerTversky "
     "nnUNetTrainerSegAN nnUNetTrainerMCC_CE nnUNetTrainerTversky_CE nnUNetTrainerGWDL_CE)"),
    (["--epochs", "1"], "gpu_check: --epochs must be at least 2 (the first compiles and is not timed), got 1"),
])
def test_gpu_check_bad_budget(tmp_path, args, message):
    proc = run_check(*args, "--device", "cpu", "--output", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_gpu_check_bad_device_and_output(tmp_path):
    proc = run_check("--device", "tpu", timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'tpu'" in proc.stderr and "Traceback" not in proc.stderr
    afile = tmp_path / "a_file"
    afile.write_text("x")
    proc = run_check("--device", "cpu", "--output", str(afile), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"gpu_check: --output {afile} is a file, not a folder"


def test_gpu_check_cuda_unavailable(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = run_check("--device", "cuda", "--output", str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_check: --device cuda: CUDA is not available here") and "--device cpu --tiny" in line
    assert not (tmp_path / "out").exists()
