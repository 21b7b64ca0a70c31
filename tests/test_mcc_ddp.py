"""DDP exactness: W gloo processes with parts of the batch give the loss and gradients of one process."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from ddp_harness import run_ranks
from nnunet_mcc.losses import MCCLoss
from test_mcc_rare_class import logits_with_class_3_gap, nested_labels

# spawns gloo processes; one worker computes the module fixture for every case
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("mcc_ddp")]

WORLD = 2
SPLITS = {"equal": [(0, 2), (2, 4)], "unequal": [(0, 3), (3, 4)]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 3, 3, padding=1)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 6, 6, 6, generator=g)
    y = torch.randint(0, 3, (4, 1, 6, 6, 6), generator=g)
    y[3] = 0  # one sample without foreground: per-sample and pooled MCC differ
    return x, y


CASES = [(batch, split) for batch in (True, False) for split in SPLITS]


class _Logits(torch.nn.Module):
    """Learnable logits for 4 samples in which class 3 is predicted nowhere except in samples 2-3 (rank 1's
    half of the batch): the missed-class gate must pool over the ranks as the counts do."""

    def __init__(self):
        super().__init__()
        y = nested_labels(batch=4, size=16)
        z = logits_with_class_3_gap(y, 20.0)
        z[2:, 3] += 30 * (y[2:, 0] == 3)
        self.z = torch.nn.Parameter(z)

    def forward(self, start: int, stop: int) -> torch.Tensor:
        return self.z[start:stop]


def _worker(rank, world):
    results = {}
    for batch, split in CASES:
        model = DistributedDataParallel(_model())
        x, y = _data()
        start, stop = SPLITS[split][rank]
        loss = MCCLoss(batch=batch, ddp=True)(model(x[start:stop]), y[start:stop])
        loss.backward()
        results[(batch, split)] = {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}
    for batch in (True, False):
        model = DistributedDataParallel(_Logits())
        start, stop = SPLITS["equal"][rank]
        loss = MCCLoss(batch=batch, ddp=True, missed_weight=1.0)(model(start, stop),
                                                                 nested_labels(batch=4, size=16)[start:stop])
        loss.backward()
        results[("missed", batch)] = {"loss": loss.detach(), "grads": [model.module.z.grad]}
    return results


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One spawn of two gloo ranks computes every case (process start-up dominates the cost)."""
    return run_ranks(_worker, WORLD, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_ddp_matches_single_process(ddp_results, batch, split):
    ranks = [r[(batch, split)] for r in ddp_results]

    model = _model()
    x, y = _data()
    loss = MCCLoss(batch=batch, ddp=True)(model(x), y)  # no process group: plain single-process loss
    loss.backward()

    # nnU-Net reports the mean of the ranks' losses; with pooled counts every rank holds the full loss
    reported = torch.stack([r["loss"] for r in ranks]).mean()
    assert reported.item() == pytest.approx(loss.item(), abs=1e-6)
    if batch:
        assert all(r["loss"].item() == pytest.approx(loss.item(), abs=1e-6) for r in ranks)
    for rank in ranks:  # DDP has averaged the gradients: every rank holds the single-process gradient
        for got, expected in zip(rank["grads"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch", [True, False], ids=["pooled", "per_sample"])
def test_ddp_missed_class_penalty_matches_single_process(ddp_results, batch):
    """Pooled, class 3 is found in the global batch (on rank 1), so no rank adds the penalty although
    rank 0 alone misses it; per sample, rank 0's samples miss it. Either way the ranks give the single
    process's loss and gradients."""
    model = _Logits()
    y = nested_labels(batch=4, size=16)
    loss = MCCLoss(batch=batch, missed_weight=1.0)(model(0, 4), y)
    loss.backward()
    plain = MCCLoss(batch=batch)(model(0, 4).detach(), y)
    assert (loss.item() == plain.item()) is batch  # the penalty applies only per sample
    ranks = [r[("missed", batch)] for r in ddp_results]
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(loss.item(), abs=1e-6)
    for rank in ranks:
        torch.testing.assert_close(rank["grads"][0], model.z.grad, rtol=1e-4, atol=1e-7)
