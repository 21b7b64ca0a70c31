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
