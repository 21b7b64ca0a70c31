"""The GPU check's loss stage: each trainer's loss, built by the trainer itself, against nnU-Net's
(``benchmarks/gpu_check.py``).

Each trainer is constructed on the planned dataset and builds its loss with its own ``_build_loss`` (deep
supervision, nnU-Net's weights, and torch.compile wherever nnU-Net's ``_do_i_compile`` says so: the reference's
``loss.dc`` as nnU-Net compiles it, this package's losses through ``nnunet_mcc.trainers.compiling``). The loss
runs on logits of the plans' patch and batch at every deep-supervision scale, float16 under autocast on CUDA
(what the network gives there), float32 on the CPU; SegAN's row adds the segmentor's multi-scale L1 through a
critic built by the trainer. Time: median forward+backward after a warm-up (the compile), the losses
interleaved; peak memory above the inputs (CUDA).
"""

import math
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

REPEATS = {"cuda": 10, "cpu": 3}


class _Step:
    """A trainer's loss as its train_step runs it: under autocast on CUDA; SegAN adds the critic's L1."""

    def __init__(self, loss: Callable, device, critic=None, image=None, l1=None, scale_weights=None):
        self.loss, self.device, self.critic, self.image, self.l1 = loss, device, critic, image, l1
        self.scale_weights = scale_weights

    def __call__(self, logits: List, targets: List):
        import torch

        from nnunet_mcc.losses import adversarial_l1

        with torch.autocast("cuda", enabled=True) if self.device.type == "cuda" else nullcontext():
            value = self.loss(logits, targets)
            if self.critic is not None:
                onehot = torch.nn.functional.one_hot(targets[0][:, 0].long(), logits[0].shape[1]).movedim(-1, 1)
                probabilities = torch.softmax(logits[0].float(), 1)
                value = value + adversarial_l1(self.critic, self.image, probabilities, onehot.float(),
                                               scale_weights=self.scale_weights, l1_function=self.l1)
        return value


def build_trainer(name: str, plans: dict, configuration: str, dataset_json: dict, device):
    import copy

    from nnunet_mcc import trainers

    plans = {**copy.deepcopy(plans), "continue_training": False}  # what nnUNetv2_train adds (nnU-Net 2.8)
    return trainers.trainer_class(name)(plans, configuration, 0, dataset_json, device=device)


def trainer_loss(trainer, channels: int, patch, batch: int, device) -> _Step:
    import torch

    from nnunet_mcc.trainers import compiling

    loss = trainer.loss = trainer._build_loss()  # loss_settings() reads it
    if not hasattr(trainer, "build_critic"):
        return _Step(loss, device)
    trainer.num_input_channels = channels
    critic = trainer.build_critic().to(device)
    image = torch.randn((batch, channels, *patch), generator=torch.Generator().manual_seed(1)).to(device)
    return _Step(loss, device, critic, image, compiling.critic_l1(trainer), trainer.critic_scale_weights)


def pyramid(trainer, patch, batch: int, device) -> Tuple[List, List]:
    """Logits and label maps at every deep-supervision scale of the trainer (nnU-Net's network outputs)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    classes = trainer.label_manager.num_segmentation_heads
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else [[1] * len(patch)]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    logits, targets = [], []
    for scale in scales:
        shape = [int(round(p * s)) for p, s in zip(patch, scale)]
        logits.append((torch.randn((batch, classes, *shape), generator=generator) * 2).to(device=device, dtype=dtype))
        targets.append(torch.randint(0, classes, (batch, 1, *shape), generator=generator).float().to(device))
    return logits, targets


def measure(names: List[str], plans: dict, dataset_json: dict, dataset: dict, device) -> Tuple[List[dict], dict]:
    """Every trainer's loss value, median time and (CUDA) peak memory: the rows, and the inputs' form."""
    import torch
    from _measure import median_seconds, peak_bytes, step

    patch, batch = dataset["patch_size"], dataset["batch_size"]
    trainers = {name: build_trainer(name, plans, dataset["configuration"], dataset_json, device) for name in names}
    losses = {name: trainer_loss(t, dataset["spec"]["channels"], patch, batch, device) for name, t in trainers.items()}
    logits, targets = pyramid(trainers[names[0]], patch, batch, device)
    values = {name: step(loss, logits, targets) for name, loss in losses.items()}  # also the compile, on CUDA
    seconds = median_seconds(losses, logits, targets, device, REPEATS[device.type])
    peaks = {name: peak_bytes(loss, logits, targets, device) / 2 ** 20 if device.type == "cuda" else None
             for name, loss in losses.items()}
    rows = [{"trainer": name, "loss": trainers[name].loss_settings()["name"],
             "value": values[name] if math.isfinite(values[name]) else None, "seconds": seconds[name],
             "time_ratio": ratio(seconds[name], seconds[names[0]]), "peak_mb": peaks[name],
             "memory_ratio": ratio(peaks[name], peaks[names[0]])} for name in names]
    del trainers, losses
    if device.type == "cuda":  # the trainings run in other processes on the same GPU
        torch.cuda.empty_cache()
    return rows, {"logits": [list(t.shape) for t in logits], "dtype": str(logits[0].dtype).replace("torch.", "")}


def ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return value / reference if value is not None and reference else None


def by_trainer(rows: List[dict]) -> Dict[str, dict]:
    return {r["trainer"]: r for r in rows}
