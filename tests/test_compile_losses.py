"""torch.compile of every loss of the package on the CPU, and a compiled network inside the trainers.

Each loss compiles to ONE graph (``fullgraph=True``, ``dynamic=False``) when its target check is off, as
the trainers run it (``check_target=False``): the checks of label values decide on the host whether to
raise, so ``check_target=True`` costs a graph break (and still agrees with eager). The fullgraph checks use
``backend="aot_eager"`` (tracing and autograd as inductor sees them, seconds in all); one inductor test per
loss (cold compiles take 2-20 s each on 2 CPU cores) is marked ``e2e``. Compiled and eager agree in value
and gradient within float tolerance.
"""

import copy
import json
import os

import pytest
import torch
import torch._dynamo

from nnunet_mcc.losses import GeneralizedWassersteinDiceLoss, MaskedBCEWithLogits, MCCLoss, TverskyLoss, multiscale_l1

MATRIX = [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]


def _inputs(seed: int = 0, shape=(2, 3, 8, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)
    return logits, labels, g


def _missed_class_logits():
    """Logits where class 2 is present but never the argmax: the missed-class penalty is active."""
    logits, labels, _ = _inputs(1)
    logits[:, 2] -= 20
    return logits, labels


def _cases():
    logits, labels, g = _inputs()
    with_ignore = labels.clone()
    with_ignore[:, :, :2] = 3  # an ignore label
    regions = (torch.rand(2, 4, 8, 8, 8, generator=g) > 0.6).float()  # 3 regions + the ignore channel
    missed_logits, missed_labels = _missed_class_logits()
    return {
        "mcc": (MCCLoss("softmax", check_target=False), logits, labels),
        "mcc_missed_weight_1": (MCCLoss("softmax", missed_weight=1.0, min_specificity=0.9, check_target=False),
                                missed_logits, missed_labels),  # the hard TP and the direct TN of the gate
        "mcc_per_sample_ignore": (MCCLoss("softmax", batch=False, ignore_index=3, missed_weight=1.0,
                                          check_target=False), logits, with_ignore),
        "mcc_sigmoid_regions": (MCCLoss("sigmoid", region_ignore_channel=True, missed_weight=1.0, check_target=False),
                                logits, regions),
        "gwdl": (GeneralizedWassersteinDiceLoss(MATRIX, check_target=False), logits, labels),
        "gwdl_gdl_pooled_ignore": (GeneralizedWassersteinDiceLoss(MATRIX, weighting="GDL", batch=True, ignore_index=3,
                                                                  missed_weight=1.0, min_specificity=0.5,
                                                                  check_target=False), missed_logits, with_ignore),
        "tversky_focal_missed": (TverskyLoss("softmax", gamma=4 / 3, batch=True, missed_weight=1.0, check_target=False),
                                 missed_logits, missed_labels),
        "masked_bce": (MaskedBCEWithLogits(pos_weight=torch.tensor([2.0, 1.0, 3.0]), ignore_channel=True),
                       logits, regions),
    }


CASES = sorted(_cases())


def _multiscale_l1(a0, a1, b0, b1):
    return multiscale_l1([a0, a1], [b0, b1], scale_weights=[1.0, 0.5])


def _l1_inputs():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=g) for s in ((2, 3, 8, 8), (2, 5, 4, 4), (2, 3, 8, 8), (2, 5, 4, 4))]


def _value_and_grads(function, differentiable, *rest):
    leaves = [t.clone().requires_grad_() for t in differentiable]
    value = function(*leaves, *rest)
    value.backward()
    return value.detach(), [leaf.grad for leaf in leaves]


def _compare(function, differentiable, rest, backend: str, fullgraph: bool = True):
    torch._dynamo.reset()
    compiled = torch.compile(function, backend=backend, dynamic=False, fullgraph=fullgraph)
    value, grads = _value_and_grads(compiled, differentiable, *rest)
    expected, expected_grads = _value_and_grads(function, differentiable, *rest)
    assert torch.isfinite(value) and value.dtype == expected.dtype
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        assert expected_grad.abs().max() > 0
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_each_loss_compiles_to_one_graph_and_matches_eager(case):
    loss, x, y = _cases()[case]
    _compare(loss, [x], [y], backend="aot_eager")


def test_multiscale_l1_compiles_to_one_graph_and_matches_eager():
    a0, a1, b0, b1 = _l1_inputs()
    _compare(_multiscale_l1, [a0, a1], [b0, b1], backend="aot_eager")


def test_the_missed_class_case_is_the_gated_one():
    logits, labels = _missed_class_logits()
    with_gate = MCCLoss("softmax", missed_weight=1.0, batch=True, reduction="none")(logits, labels)
    plain = MCCLoss("softmax", batch=True, reduction="none")(logits, labels)
    assert with_gate[0, 1] > plain[0, 1] and with_gate[0, 0] == plain[0, 0]


def test_target_checks_break_the_graph_but_still_agree_and_still_refuse():
    logits, labels, _ = _inputs()
    for loss in (MCCLoss("softmax"), GeneralizedWassersteinDiceLoss(MATRIX)):
        _compare(loss, [logits], [labels], backend="aot_eager", fullgraph=False)
        compiled = torch.compile(loss, backend="aot_eager", dynamic=False)
        with pytest.raises(ValueError, match="outside the 3 classes"):
            compiled(logits, torch.full_like(labels, 5))


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["mcc", "mcc_missed_weight_1", "gwdl", "masked_bce"])
def test_inductor_compiled_loss_matches_eager(case):
    loss, x, y = _cases()[case]
    _compare(loss, [x], [y], backend="inductor")


@pytest.mark.e2e
def test_inductor_compiled_multiscale_l1_matches_eager():
    a0, a1, b0, b1 = _l1_inputs()
    _compare(_multiscale_l1, [a0, a1], [b0, b1], backend="inductor")


# ---------------------------------------------------------------- the switch: where nnU-Net compiles
class _Trainer:
    """What the switch reads of a trainer: nnU-Net's own ``_do_i_compile`` on a device, and its log."""

    def __init__(self, device: str):
        self.device, self.lines = torch.device(device), []

    def _do_i_compile(self):
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer._do_i_compile(self)

    def print_to_log_file(self, *args, **kwargs):
        self.lines.append(" ".join(map(str, args)))


def _compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("variable, expected", [(None, True), ("1", True), ("0", False), ("false", False)])
def test_the_losses_compile_where_nnunet_compiles(monkeypatch, variable, expected):
    """nnU-Net's ``_do_i_compile`` decides (``nnUNet_compile=0`` turns it off, the CPU never compiles); every
    ConfusionLoss inside the built loss (alone, or in the Dice slot of nnU-Net's compound loss, deep supervision
    around) is compiled in place, keeping its identity and settings; cross-entropy stays eager; the critic's L1
    follows the same switch. Only the decision is tested here (compiling for CUDA needs a GPU)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_mcc.trainers.compiling import compile_losses, critic_l1

    if variable is None:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    else:
        monkeypatch.setenv("nnUNet_compile", variable)
    for device, expect in (("cuda", expected), ("cpu", False)):
        alone = MCCLoss("softmax", missed_weight=1.0, check_target=False)
        settings = alone.settings()
        compound = DC_and_CE_loss({"check_target": False}, {}, dice_class=TverskyLoss)
        trainer = _Trainer(device)
        assert compile_losses(trainer, DeepSupervisionWrapper(alone, [1.0])).loss is alone
        assert compile_losses(trainer, compound) is compound
        assert (_compiled(alone), _compiled(compound.dc), _compiled(compound.ce)) == (expect, expect, False)
        assert alone.settings() == settings
        assert (critic_l1(trainer) is multiscale_l1) == (not expect)
        assert any(line.startswith("Using torch.compile") for line in trainer.lines) == expect


def test_a_loss_compiled_by_the_switch_matches_eager():
    """On the CPU (nnU-Net never compiles there, so the decision is forced): the in-place compile of the switch
    gives the eager loss's value and gradient."""
    from nnunet_mcc.trainers.compiling import compile_losses

    trainer = _Trainer("cpu")
    trainer._do_i_compile = lambda: True
    loss, x, y = _cases()["tversky_focal_missed"]
    expected, expected_grads = _value_and_grads(loss, [x], y)
    torch._dynamo.reset()
    compile_losses(trainer, loss)
    assert _compiled(loss)
    value, grads = _value_and_grads(loss, [x], y)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- a compiled network inside the trainers
@pytest.mark.e2e
@pytest.mark.parametrize("name", ["nnUNetTrainerMCC", "nnUNetTrainerSegAN"])
def test_trainer_with_compiled_network_on_the_cpu(name, prepared, e2e_cache, tmp_path, monkeypatch):
    """nnU-Net's ``_do_i_compile`` refuses the CPU whatever ``nnUNet_compile`` says; overridden here, the
    network is compiled with inductor, trains a few iterations and gives the eager network's first loss."""
    from test_autocast_trainers import synthetic_batch  # tests/ is on sys.path (conftest.py)

    from nnunet_mcc import trainers

    dataset = prepared("2d_multiclass")
    folder = os.path.join(e2e_cache, "preprocessed", dataset)
    monkeypatch.setenv("nnUNet_preprocessed", os.path.join(e2e_cache, "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    base = trainers.trainer_class(name)
    compiled_class = type(name + "CompiledOnCPU", (base,), {"_do_i_compile": lambda self: True})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = {}
        for cls in (base, compiled_class):
            torch.manual_seed(0)
            torch._dynamo.reset()
            trainer = cls({**copy.deepcopy(plans), "continue_training": False}, "2d_small", 0, dataset_json,
                          device=torch.device("cpu"))
            trainer.initialize()
            assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule) == (cls is compiled_class)
            trainer.on_train_epoch_start()
            losses[cls] = [float(trainer.train_step(synthetic_batch(trainer, seed=i))["loss"]) for i in range(3)]
            trainer.on_validation_epoch_start()
            validation = trainer.validation_step(synthetic_batch(trainer, seed=9))
            assert torch.isfinite(torch.as_tensor(validation["loss"]))
            assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    finally:
        torch.set_num_threads(threads)
    eager, compiled = losses[base], losses[compiled_class]
    assert all(torch.isfinite(torch.tensor(compiled)))
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4, abs=1e-5)
    assert compiled == pytest.approx(eager, rel=2e-2, abs=2e-3)  # float drift after updates
