"""Every trainer's ``train_step`` and ``validation_step`` under CPU autocast (bfloat16, float16).

nnU-Net turns autocast on only for CUDA (as does the SegAN trainer), and its GradScalers are None on the
CPU, so a CPU run never exercises the mixed-precision path. Here the tests wrap the steps in
``torch.autocast("cpu", dtype=...)`` themselves and, for float16, give the segmentor (nnU-Net's
``grad_scaler``) a CPU GradScaler; the SegAN critic gets one in both dtypes. Tiny networks: the
``2d_small`` / ``3d_fullres_small`` configurations of the session's prepared synthetic datasets (the
3D patch cut to 16^3: float16 convolutions run on the CPU's slow path), one synthetic batch drawn with
the dataset's own :class:`nnunet_mcc.synthetic.SyntheticSpec`. Loss, gradients and updated parameters
must be finite, and every parameter that got a gradient must change.
"""

import copy
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from nnunet_mcc import trainers
from nnunet_mcc.synthetic import SyntheticSpec, make_case

# preparing the datasets runs nnU-Net's planning and preprocessing (shared with the other e2e tests)
pytestmark = pytest.mark.e2e

CONFIGURATIONS = {"2d": ("2d_multiclass", "2d_small", None), "3d": ("3d_multiclass", "3d_fullres_small", 16)}
TRAINERS = [t.__name__ for t in trainers.MAIN_TRAINERS]
BRATS_NAMES = ("necrosis", "edema", "enhancing_tumor")  # the BraTS matrix is mapped by label name


def cpu_autocast_dtypes():
    dtypes = []
    for dtype in (torch.bfloat16, torch.float16):
        try:
            with torch.autocast("cpu", dtype=dtype):
                if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype:
                    dtypes.append(dtype)
        except (RuntimeError, AssertionError):
            pass
    return dtypes


def cpu_grad_scaler():
    """``torch.amp.GradScaler("cpu")`` where this torch has one, else None."""
    try:
        return torch.amp.GradScaler("cpu")
    except (AttributeError, RuntimeError, TypeError):
        return None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as nnU-Net's CPU runs here (OMP_NUM_THREADS=1): on 2 shared cores, two threads wait
    on each other for these tiny steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plans_and_datasets(prepared, e2e_cache):
    """{"2d" / "3d": (dataset name, configuration, plans, dataset.json)}, read once per module."""
    out = {}
    for dim, (key, configuration, patch) in CONFIGURATIONS.items():
        dataset = prepared(key)
        folder = os.path.join(e2e_cache, "preprocessed", dataset)
        with open(os.path.join(folder, "nnUNetPlans.json")) as f:
            plans = json.load(f)
        with open(os.path.join(folder, "dataset.json")) as f:
            dataset_json = json.load(f)
        if patch is not None:
            plans["configurations"][configuration]["patch_size"] = [patch] * 3
        out[dim] = (dataset, configuration, plans, dataset_json)
    return out


def build_trainer(name: str, plans_and_dataset, e2e_cache, results, monkeypatch):
    """Trainer ``name`` built and initialised in this process, on the CPU (seeded)."""
    _, configuration, plans, dataset_json = plans_and_dataset
    monkeypatch.setenv("nnUNet_preprocessed", os.path.join(e2e_cache, "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(results))
    dataset_json = copy.deepcopy(dataset_json)
    if "BraTS" in name:
        foreground = [label for label in dataset_json["labels"] if label != "background"]
        assert len(foreground) <= len(BRATS_NAMES)
        dataset_json["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(BRATS_NAMES[:len(foreground)])}}
    torch.manual_seed(0)
    trainer = trainers.trainer_class(name)({**copy.deepcopy(plans), "continue_training": False}, configuration, 0,
                                           dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def synthetic_batch(trainer, seed: int = 0, batch_size: int = 2) -> dict:
    """A batch like nnU-Net's loader gives: data (B, C, *patch) z-scored, the deep-supervision target list."""
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in trainer.dataset_json["synthetic_spec"].items()}
    patch = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    spec = dataclasses.replace(SyntheticSpec(**spec), shape=patch)
    rng = np.random.default_rng(seed)
    images, labels = zip(*(make_case(spec, rng) for _ in range(batch_size)))
    data = torch.from_numpy(np.stack(images)).float()
    data = (data - data.mean()) / data.std()
    target = torch.from_numpy(np.stack(labels)[:, None].astype(np.float32))
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        steps = tuple(slice(None, None, int(round(1 / s))) for s in scale)
        targets.append(target[(slice(None), slice(None)) + steps].contiguous())
    return {"data": data, "target": targets if trainer.enable_deep_supervision else target}


def _finite(value) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))


@pytest.mark.parametrize("dtype", cpu_autocast_dtypes(), ids=str)
@pytest.mark.parametrize("dim", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("name", TRAINERS)
def test_train_and_validation_step_under_cpu_autocast(name, dim, dtype, plans_and_datasets, e2e_cache, tmp_path,
                                                       monkeypatch):
    trainer = build_trainer(name, plans_and_datasets[dim], e2e_cache, tmp_path, monkeypatch)
    critic = getattr(trainer, "critic_module", None)
    if critic is not None:
        trainer.critic_grad_scaler = cpu_grad_scaler()
    if dtype == torch.float16:
        trainer.grad_scaler = cpu_grad_scaler()
    output_dtypes = []
    trainer.network.register_forward_hook(
        lambda module, args, out: output_dtypes.append((out[0] if isinstance(out, (list, tuple)) else out).dtype))

    trainer.on_train_epoch_start()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    critic_before = [p.detach().clone() for p in critic.parameters()] if critic is not None else []
    with torch.autocast("cpu", dtype=dtype):
        result = trainer.train_step(synthetic_batch(trainer, seed=0))
    # with fp16, nnU-Net's GradScaler skips a step whose scaled gradients overflow and halves its scale, as on CUDA
    # (the gates' log terms are active at initialisation, so the first steps of a gated loss may be skipped): step
    # again, on the same batch, until one is taken
    scaler, skipped = trainer.grad_scaler, 0
    while (scaler is not None and skipped < 12 and scaler.get_scale() < 2.0 ** 16 / 2 ** skipped
           and all(torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))):
        skipped += 1
        with torch.autocast("cpu", dtype=dtype):
            result = trainer.train_step(synthetic_batch(trainer, seed=0))
    assert output_dtypes[:1] == [dtype], "autocast did not reach the network"
    assert all(_finite(v) for v in result.values()), result
    with_grad = [(b, p) for b, p in zip(before, trainer.network.parameters()) if p.grad is not None]
    assert len(with_grad) >= len(before) - 2  # only the lowest deep-supervision head (weight 0) gets none
    for old, parameter in with_grad:
        assert torch.isfinite(parameter.grad).all() and torch.isfinite(parameter).all()
        assert not torch.equal(old, parameter), "a parameter with a gradient was not updated"
    if critic is not None:
        assert {"critic_loss", "adversarial_l1"} <= set(result)
        changed = [not torch.equal(old, p) for old, p in zip(critic_before, critic.parameters())]
        assert all(torch.isfinite(p).all() for p in critic.parameters()) and any(changed)

    trainer.on_validation_epoch_start()
    with torch.autocast("cpu", dtype=dtype):
        validation = trainer.validation_step(synthetic_batch(trainer, seed=1))
    assert _finite(validation["loss"])
    for key in ("tp_hard", "fp_hard", "fn_hard"):
        assert _finite(validation[key]) and len(validation[key]) == trainer.label_manager.num_segmentation_heads - 1
    assert validation["n_valid"] == int(np.prod(trainer.configuration_manager.patch_size)) * 2


@pytest.mark.parametrize("name,loss_name,expected", [
    ("nnUNetTrainerMCC", "soft MCC", {"missed_weight": 1.0, "eps": 1e-20, "include_background": False}),
    ("nnUNetTrainerMCC_CE", "soft MCC in DC_and_CE_loss", {"missed_weight": 0.0}),
    ("nnUNetTrainerGWDL_CE", "Generalized Wasserstein Dice in DC_and_CE_loss", {"weighting": "default"}),
    ("nnUNetTrainerTversky", "Tversky", {"alpha": 0.3, "beta": 0.7, "gamma": 1.0, "missed_weight": 1.0,
                                            "min_recall": 0.5, "min_specificity": 0.9}),
    ("nnUNetTrainerTversky_CE", "Tversky in DC_and_CE_loss", {"alpha": 0.3, "beta": 0.7, "missed_weight": 0.0}),
])
def test_the_trainer_records_the_settings_its_loss_reports(name, loss_name, expected, plans_and_datasets, e2e_cache,
                                                            tmp_path, monkeypatch):
    trainer = build_trainer(name, plans_and_datasets["2d"], e2e_cache, tmp_path, monkeypatch)
    record = trainer.provenance()["loss"]
    assert record["name"] == loss_name
    assert expected.items() <= record["settings"].items()
    assert record["settings"]["batch"] == bool(trainer.configuration_manager.batch_dice)
    identity = trainer.provenance()["identity"]
    assert all(record["settings"][k] == v for k, v in identity.items() if k in record["settings"])


def test_every_trainer_of_the_package_is_covered():
    named = {"nnUNetTrainerMCC", "nnUNetTrainerMCC_CE", "nnUNetTrainerGWDL", "nnUNetTrainerGWDL_CE",
             "nnUNetTrainerGWDL_BraTS", "nnUNetTrainerGWDL_CE_BraTS", "nnUNetTrainerGWDL_GDL", "nnUNetTrainerSegAN",
             "nnUNetTrainerSegANDiceCE", "nnUNetTrainerSegANPerLabel", "nnUNetTrainerSegANWeightedCE",
             "nnUNetTrainerWeightedCE", "nnUNetTrainerTversky", "nnUNetTrainerTversky_CE"}
    assert named <= set(TRAINERS)
    assert torch.bfloat16 in cpu_autocast_dtypes()
