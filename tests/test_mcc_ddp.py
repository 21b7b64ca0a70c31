"""DDP exactness: W gloo processes with parts of the batch give the loss and gradients of one process."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from ddp_harness import run_ranks
from nnunet_mcc.losses import MCCLoss

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


def _worker(rank, world):
    results = {}
    for batch, split in CASES:
        model = DistributedDataParallel(_model())
        x, y = _data()
        start, stop = SPLITS[split][rank]
        loss = MCCLoss(batch=batch, ddp=True)(model(x[start:stop]), y[start:stop])
        loss.backward()
        results[(batch, split)] = {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}
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
