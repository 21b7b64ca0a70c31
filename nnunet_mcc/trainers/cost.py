"""What a run costs: wall time, training iterations per second, parallel jobs, threads and peak memory, recorded
as ``cost`` in ``nnunet_mcc_log.json`` (docs/experiments.md). A mixin of ``ComparisonTrainer``."""

import os
import time
from typing import List, Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_mcc import provenance
from nnunet_mcc.budget import JOBS_VARIABLE
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json


class RunCost:
    """Clocks and the memory high-water mark of the run in this process (and of the processes before it, for a
    resumed run). Needs nnU-Net's trainer attributes (``device``, ``current_epoch``, ``output_folder``)."""

    def _start_cost(self) -> None:
        """At the start of training in this process: clocks, the memory high-water mark, and for a resumed run
        (``--c``) the cost recorded by the processes before this one."""
        self._cost_started = time.perf_counter()
        self._cost_train_seconds = 0.0
        self._cost_iterations = 0
        self._cost_epoch_started = None
        self._cost_resumed = self.current_epoch > 0
        self._cost_before = {}
        if self._cost_resumed and self.local_rank == 0:
            try:
                before = read_json(join(self.output_folder, provenance.LOG_FILE), "training log").get("cost") or {}
                self._cost_before = {k: before[k] for k in ("wall_seconds", "train_seconds", "train_iterations")
                                     if isinstance(before.get(k), (int, float))}
            except (UserError, AttributeError):
                pass  # no log of the earlier processes: this process's cost only
        self._peak_kind = None
        if self.device.type == "cuda":
            # this runs before nnU-Net moves the network to the device: CUDA is still uninitialised, and torch then
            # refuses the reset ("Invalid device argument"; seen on an H200 with torch 2.11)
            torch.cuda.init()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._peak_kind = "CUDA max allocated"
        elif self.device.type == "cpu":
            try:  # Linux: "5" resets the RSS high-water mark (VmHWM), which --in-process workers carry across runs
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
                self._peak_kind = "process RSS (this run)"
            except OSError:
                pass

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._cost_epoch_started = time.perf_counter()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        started = getattr(self, "_cost_epoch_started", None)
        if started is not None:  # the training loop of this epoch only (no validation, no epoch end)
            self._cost_train_seconds += time.perf_counter() - started
            self._cost_iterations += len(train_outputs)
            self._cost_epoch_started = None
        super().on_train_epoch_end(train_outputs)

    def _peak_memory_mb(self) -> Optional[float]:
        if self._peak_kind == "CUDA max allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        if self._peak_kind == "process RSS (this run)":
            try:
                with open("/proc/self/status") as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) / 1024  # kB
            except (OSError, ValueError, IndexError):
                pass
        return None

    def cost(self) -> dict:
        """What the run has cost so far (``cost`` in ``nnunet_mcc_log.json``; docs/experiments.md)."""
        if not hasattr(self, "_cost_started"):
            return {}
        before = self._cost_before
        train_seconds = self._cost_train_seconds + before.get("train_seconds", 0.0)
        iterations = self._cost_iterations + int(before.get("train_iterations", 0))
        peak = self._peak_memory_mb()
        jobs = os.environ.get(JOBS_VARIABLE, "").strip()
        record = {"device": str(self.device),
                  "wall_seconds": round(time.perf_counter() - self._cost_started + before.get("wall_seconds", 0.0), 3),
                  "train_seconds": round(train_seconds, 3), "train_iterations": iterations,
                  "iterations_per_second": round(iterations / train_seconds, 3) if train_seconds > 0 else None,
                  "jobs": int(jobs) if jobs.isdigit() else None, "torch_threads": torch.get_num_threads(),
                  "peak_memory_mb": None if peak is None else round(peak, 1),
                  "peak_memory_kind": self._peak_kind if peak is not None else None}
        if self._cost_resumed:
            record["resumed"] = True
        return record
