"""The one DDP harness of the tests: W gloo processes on CPU joined by a file rendezvous.

A file in the test's own folder instead of a TCP port: no port can be taken twice when tests run in
parallel (pytest-xdist), and nothing listens on the network.
"""

import os
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, worker: Callable, world: int, folder: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(folder, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        torch.save(worker(rank, world, *args), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(worker: Callable, world: int, folder, *args) -> List[Any]:
    """Run ``worker(rank, world, *args)`` (a module-level function) in ``world`` processes of one gloo
    group; return what each rank returned, in rank order."""
    folder = str(folder)
    mp.spawn(_entry, args=(worker, world, folder, args), nprocs=world, join=True)
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def mean_loss_and_grads(value: torch.Tensor, module: torch.nn.Module) -> dict:
    """In a rank: backpropagate ``value`` and return the loss averaged over the ranks and ``module``'s
    gradients (which DDP has averaged), to compare with :func:`assert_one_process_matches`."""
    value.backward()
    total = value.detach().clone()
    dist.all_reduce(total)
    return {"loss": total / dist.get_world_size(), "grads": [p.grad.clone() for p in module.parameters()]}


def assert_one_process_matches(rank: dict, value: torch.Tensor, module: torch.nn.Module) -> None:
    """One process with the whole batch: ``value`` backpropagated through ``module`` gives the loss and
    gradients a rank reported (:func:`mean_loss_and_grads`)."""
    import pytest

    value.backward()
    assert rank["loss"].item() == pytest.approx(value.item(), rel=1e-6)
    for got, expected in zip(rank["grads"], [p.grad for p in module.parameters()]):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
