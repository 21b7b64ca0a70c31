"""The run's cost record on a CUDA device, with torch's CUDA state simulated on the CPU."""

import types

import torch

from nnunet_mcc.trainers.cost import RunCost


class _LazyCuda:
    """torch.cuda as it behaves before anything was allocated: the allocator knows no device until CUDA is
    initialised, and resetting its peak then raises (what every run did on an H200 with torch 2.11)."""

    def __init__(self):
        self.initialised = False
        self.calls = []

    def init(self):
        self.initialised = True
        self.calls.append("init")

    def reset_peak_memory_stats(self, device=None):
        if not self.initialised:
            raise RuntimeError("Invalid device argument ")
        self.calls.append("reset")

    def max_memory_allocated(self, device=None):
        return 3 * 2 ** 20


def test_the_peak_is_reset_on_an_uninitialised_cuda_device(monkeypatch):
    fake = _LazyCuda()
    for name in ("init", "reset_peak_memory_stats", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    run = RunCost()
    run.device, run.current_epoch, run.local_rank = torch.device("cuda"), 0, 0
    run._start_cost()
    assert fake.calls == ["init", "reset"]
    assert run._peak_kind == "CUDA max allocated"
    assert run._peak_memory_mb() == 3.0
