"""``benchmarks/gpu_check.py`` on the CPU with tiny sizes: every stage, the JSON and the Markdown table, the
budget, and bad arguments."""

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
    """Every stage ok, finite losses, positive ratios, targets marked not applicable on the CPU, the prediction
    read back, and the Markdown table saying what the JSON says."""
    import SimpleITK as sitk

    out = tmp_path / "check"
    proc = run_check("--device", "cpu", "--tiny", "--output", str(out), "--budget-s", "900",
                     "--trainers", "nnUNetTrainerMCC")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["losses", "training", "epoch_ratios", "predict"]
    assert {name: s["status"] for name, s in stages.items()} == dict.fromkeys(stages, "ok")
    assert all(s["wall_seconds"] >= 0 and s["cpu_seconds"] >= 0 for s in stages.values())
    assert stages["training"]["wall_seconds"] > 0 and stages["training"]["cpu_seconds"] > 0
    assert report["ok"] and report["failed_targets"] == [] and report["device"] == "cpu"
    assert report["versions"]["gpu"] is None and report["versions"]["torch"] and report["versions"]["nnunetv2"]
    settings = report["settings"]
    assert settings["losses"]["shape"] == [2, 4, 16, 16, 16] and settings["losses"]["memory"] == "not measured on cpu"
    assert "not compiled" in settings["losses"]["reference"]
    assert settings["training"]["trainers"] == TRAINERS and settings["training"]["nnUNet_compile"] == "0"
    assert not os.path.exists(settings["work_dir"])  # the temporary work folder is removed

    # losses: finite values, positive time ratios, no memory on the CPU, targets not applicable
    losses = {r["loss"]: r for r in stages["losses"]["rows"]}
    assert set(losses) == {"nnU-Net DC_and_CE", "MCC gated", "MCC plain", "GWDL gated", "Tversky gated",
                           "masked BCE", "SegAN multi-scale L1"}
    assert finite([r["value"] for r in losses.values()])
    assert all(positive(r["time_ratio"]) and positive(r["seconds"]) for r in losses.values())
    assert losses["nnU-Net DC_and_CE"]["time_ratio"] == 1.0
    assert all(r["peak_mb"] is None and r["memory_ratio"] is None for r in losses.values())
    assert {name: r.get("result") for name, r in losses.items() if "target" in r} == \
        {"MCC gated": NOT_APPLICABLE, "GWDL gated": NOT_APPLICABLE}

    # training: every trainer ran its epoch with finite losses
    runs = {r["trainer"]: r for r in stages["training"]["runs"]}
    assert list(runs) == TRAINERS
    for run in runs.values():
        assert run["status"] == "ok" and run["returncode"] == 0, run
        assert len(run["train_losses"]) == 1 and finite(run["train_losses"] + run["val_losses"]), run
        assert run["cost"]["train_iterations"] == 2 and os.path.isfile(run["log"])
    assert stages["training"]["dataset"]["configuration"] == "3d_fullres_small"

    # epoch ratios against the reference trainer
    ratios = {r["trainer"]: r for r in stages["epoch_ratios"]["rows"]}
    assert list(ratios) == TRAINERS and ratios["nnUNetTrainerBaseline"]["epoch_ratio"] == 1.0
    assert all(positive(r["epoch_ratio"]) and positive(r["epoch_seconds"]) for r in ratios.values())
    assert all(positive(r["memory_ratio"]) for r in ratios.values())
    assert ratios["nnUNetTrainerMCC"]["result"] == NOT_APPLICABLE

    # the prediction: one test case, read back with the input's shape and known labels
    (case,) = stages["predict"]["cases"]
    assert case["shape"] == case["expected_shape"] == [16, 16, 16] and case["message"] == ""
    assert set(case["labels"]) <= {0, 1, 2, 3}
    command = stages["predict"]["command"]
    assert command.startswith("nnUNetv2_predict ") and "-f 0 -tr nnUNetTrainerMCC" in command
    assert "-npp 0 -nps 0 " in command + " "
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(case["file"]))
    assert prediction.shape == (16, 16, 16) and os.path.dirname(case["file"]) == str(out / "prediction")

    # the Markdown table says what the JSON says
    text = (out / "gpu_check.md").read_text()
    assert text.strip() in proc.stdout
    tables = markdown_tables(text)
    assert {k: v["status"] for k, v in rows_by_first_cell(tables["Stages"]).items()} == dict.fromkeys(stages, "ok")
    loss_cells = rows_by_first_cell(tables["Losses against nnU-Net's DC_and_CE_loss"])
    assert {name: cells["time ratio"] for name, cells in loss_cells.items()} == \
        {name: f"{r['time_ratio']:.3f}" for name, r in losses.items()}
    assert loss_cells["MCC gated"]["result"] == NOT_APPLICABLE and loss_cells["MCC gated"]["peak MB"] == "-"
    training_cells = rows_by_first_cell(tables["Smoke training and epoch ratios"])
    assert {name: (cells["status"], cells["epoch ratio"], cells["final train loss"])
            for name, cells in training_cells.items()} == \
        {name: ("ok", f"{ratios[name]['epoch_ratio']:.3f}", f"{runs[name]['train_losses'][-1]:.3f}")
         for name in TRAINERS}
    prediction_cells = rows_by_first_cell(tables["Prediction"])
    assert prediction_cells[case["case"]]["shape"] == "[16, 16, 16]"


@pytest.mark.e2e  # a fresh interpreter that measures the losses
def test_gpu_check_budget_exhausted_skips_later_stages(tmp_path):
    out = tmp_path / "check"
    proc = run_check("--device", "cpu", "--tiny", "--output", str(out), "--budget-s", "0.5", timeout=300)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = {name: (s["status"], s["message"]) for name, s in report["stages"].items()}
    assert statuses["losses"] == ("ok", "")  # the first stage starts within the budget
    assert statuses["training"] == statuses["epoch_ratios"] == statuses["predict"] == ("skipped", "budget exhausted")
    assert report["ok"] is False
    cells = rows_by_first_cell(markdown_tables((out / "gpu_check.md").read_text())["Stages"])
    assert [cells[name]["status"] for name in ("training", "epoch_ratios", "predict")] == \
        ["skipped: budget exhausted"] * 3


@pytest.mark.parametrize("args, message", [
    (["--budget-s", "0"], "gpu_check: --budget-s must be a positive number of seconds, got 0"),
    (["--budget-s", "nan"], "gpu_check: --budget-s must be a positive number of seconds, got nan"),
    (["--trainers", "nnUNetTrainerMCC", "nnUNetTrainerNope"], "gpu_check: --trainers: nnUNetTrainerNope not among the "
     "checked trainers (nnUNetTrainerBaseline nnUNetTrainerMCC nnUNetTrainerMCC_CE nnUNetTrainerGWDL "
     "nnUNetTrainerTversky nnUNetTrainerSegAN)"),
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
