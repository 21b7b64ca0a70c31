"""DDP exactness: W gloo processes with parts of the batch give the loss and gradients of one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from nnunet_mcc.losses import MCCLoss

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [(batch, split) for batch in (True, False) for split in SPLITS]


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for batch, split in CASES:
            model = DistributedDataParallel(_model())
            x, y = _data()
            start, stop = SPLITS[split][rank]
            loss = MCCLoss(batch=batch, ddp=True)(model(x[start:stop]), y[start:stop])
            loss.backward()
            results[(batch, split)] = {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One spawn of two gloo ranks computes every case (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


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
