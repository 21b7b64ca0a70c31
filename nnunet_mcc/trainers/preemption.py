"""Stopping at an epoch boundary when a scheduler warns of a kill: no finished epoch is lost to preemption or a
time limit. A mixin of ``ComparisonTrainer``.

SLURM sends ``SIGUSR1`` a chosen time before a job's time limit (``--signal=B:USR1@<seconds>``, forwarded to the
training by the script ``nnunet-mcc crossval --slurm`` writes) and ``SIGTERM`` when it preempts or ends a job.
On either, this package's trainers finish the epoch they are in, write ``checkpoint_latest.pth`` (nnU-Net's own
checkpoint: it holds no mid-epoch or generator state, so an epoch boundary is the only exact resume point), record
the interruption in ``nnunet_mcc_log.json`` and exit with status 75 (``EX_TEMPFAIL``: try again). ``nnUNetv2_train
... --c`` resumes from there with the budget the run started with. Under DDP every rank stops after the same epoch
(the ranks' flags are reduced each epoch) and only rank 0 writes. A signal during the last epoch lets the run end
normally. Stock nnU-Net trainers install no handler: a signal ends them at once, and they resume from their last
periodic checkpoint (``save_every``).
"""

import os
import signal
import sys
import threading
import time
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_mcc import provenance
from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the caller is invited to retry


class Preemption:
    """Signal handlers for the training loop; needs nnU-Net's trainer attributes."""

    _stop_signal: Optional[int] = None
    _previous_handlers: Optional[dict] = None
    interruptions: Sequence[dict] = ()  # a list once training starts

    def _install_stop_handlers(self) -> None:
        """At the start of training (the main thread only: Python delivers signals there)."""
        self._stop_signal = None
        self._previous_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_signal = signum  # acted on at the end of the epoch; nothing else is safe in a handler

    def _restore_handlers(self) -> None:
        for sig, handler in (self._previous_handlers or {}).items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def _load_interruptions(self) -> None:
        """The interruptions of the processes before this one (a resumed run), from the training log."""
        self.interruptions = []
        if self.current_epoch > 0 and self.local_rank == 0:
            try:
                earlier = read_json(join(self.output_folder, provenance.LOG_FILE), "training log").get("interruptions")
                self.interruptions = [i for i in earlier or [] if isinstance(i, dict)]
            except (UserError, AttributeError):
                pass

    def stop_requested(self) -> Optional[str]:
        """The name of the stop signal received by this process or (under DDP) any rank, else None."""
        flag = int(self._stop_signal or 0)
        if self.is_ddp:
            reduced = torch.tensor([flag], device=self.device)
            dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
            flag = int(reduced.item())
        return signal.Signals(flag).name if flag else None

    def stop_at_epoch_boundary(self, name: str) -> None:
        """After ``on_epoch_end`` (nnU-Net has counted the epoch): checkpoint, record, shut down, exit 75."""
        self.current_epoch -= 1  # nnU-Net's checkpoint stores current_epoch + 1, as in its on_train_end
        self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        self.current_epoch += 1
        self.interruptions = [*self.interruptions, {"signal": name, "after_epoch": int(self.current_epoch),
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        if self.local_rank == 0:
            self._write_log()
        self.print_to_log_file(f"{name}: stopped after epoch {self.current_epoch} of {self.num_epochs}; "
                               f"checkpoint_latest.pth written, resume with nnUNetv2_train ... --c")
        self._shut_down_dataloaders()
        self._restore_handlers()
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def _shut_down_dataloaders(self) -> None:
        """As nnU-Net's ``on_train_end`` does: its augmentation workers would otherwise keep the process alive."""
        stdout = sys.stdout
        with open(os.devnull, "w") as sink:
            sys.stdout = sink
            try:
                for loader in (self.dataloader_train, self.dataloader_val):
                    if hasattr(loader, "_finish"):
                        loader._finish()
            finally:
                sys.stdout = stdout
