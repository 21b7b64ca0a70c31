"""A long-lived process running several nnU-Net trainings one after another (``crossval --in-process``).

Each job calls ``nnunetv2.run.run_training.run_training``, the function behind ``nnUNetv2_train``, with
the same arguments, so the training is nnU-Net's own; only Python start-up and nnU-Net's imports (about
10 s per run on a small CPU) are paid once. Jobs arrive as JSON lines on stdin; each run's output goes
to its own log file; one JSON status line per job is written to the original stdout.
"""

import json
import os
import sys
import traceback


def main() -> int:
    status = os.fdopen(os.dup(1), "w", buffering=1)
    from nnunet_mcc.budget import torch_threads_from_env

    threads = torch_threads_from_env()
    import torch
    from nnunetv2.run.run_training import run_training

    if threads > 0:
        # nnUNetv2_train takes every core on cpu; parallel jobs must share them instead
        torch.set_num_threads(threads)
    status.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        with open(job["log"], "a") as log:
            log.write(f"$ (in process) nnUNetv2_train {' '.join(job['argv'])}\n")
            log.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)  # at the descriptor level, so nnU-Net's worker processes write there too
            os.dup2(log.fileno(), 2)
            code = 0
            try:
                device = torch.device(job["device"])
                if job["device"] == "cpu" and threads <= 0:
                    torch.set_num_threads(os.cpu_count() or 1)
                run_training(job["dataset"], job["configuration"], job["fold"], job["trainer"], job["plans"],
                             None, 1, job["npz"], job["continue"], job["validate_only"], False, False, device)
            except BaseException:  # one failed run must not end the others
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        status.write(json.dumps({"index": job["index"], "code": code}) + "\n")
        import gc

        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
