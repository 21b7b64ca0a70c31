"""Measuring helpers shared by the loss benchmarks: forward+backward time and peak memory.

Time: median of several passes after a warm-up, the candidates interleaved so that load from other
processes hits them alike. Peak memory: bytes allocated above the inputs during one forward+backward,
from ``torch.cuda.max_memory_allocated`` on a GPU, else from the CPU allocator events that
``torch.profiler`` records with ``profile_memory=True`` (summed in time order).
"""

import statistics
import time
from typing import Callable, Dict, Sequence

import torch


def _detached(inputs):
    if isinstance(inputs, (list, tuple)):
        return [_detached(i) for i in inputs]
    return inputs.detach().requires_grad_() if inputs.is_floating_point() else inputs


def step(loss: Callable, prediction, target) -> float:
    """One forward + backward of ``loss(prediction, target)`` on fresh leaf copies of the prediction."""
    value = loss(_detached(prediction), target)
    value.backward()
    return float(value.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(losses: Dict[str, Callable], prediction, target, device: torch.device,
                   repeats: int = 3) -> Dict[str, float]:
    for loss in losses.values():  # warm-up
        step(loss, prediction, target)
    times = {name: [] for name in losses}
    for _ in range(repeats):
        for name, loss in losses.items():
            _sync(device)
            start = time.perf_counter()
            step(loss, prediction, target)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(loss: Callable, prediction, target, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step(loss, prediction, target)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(loss, prediction, target)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()  # negative for frees
        peak = max(peak, current)
    return float(peak)


def memory_label(device: torch.device) -> str:
    return "peak memory (MB above inputs, " + ("cuda max_memory_allocated)" if device.type == "cuda"
                                               else "torch.profiler CPU allocations)")


def row(benchmark: str, case: str, measure: str, ours: float, reference_name: str, reference: float,
        target_ratio: float, enforced: bool = True) -> dict:
    ratio = ours / reference if reference else float("nan")
    return {"benchmark": benchmark, "case": case, "measure": measure, "ours": ours,
            "reference_name": reference_name, "reference": reference, "ratio": ratio,
            "target": f"<= {target_ratio}x" if enforced else "info", "ok": (ratio <= target_ratio) or not enforced}


def print_rows(rows: Sequence[dict]) -> None:
    for r in rows:
        print(f"{r['benchmark']:<8} {r['case']:<44} {r['measure']:<44} ours {r['ours']:.4g} vs "
              f"{r['reference_name']} {r['reference']:.4g}: {r['ratio']:.2f}x (target {r['target']}) "
              f"{'ok' if r['ok'] else 'MISSED'}")
