"""Short variants in nnU-Net's naming style: ``<Trainer>_<N>epochs`` for every trainer of the package."""

from typing import Dict, Iterable

EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250)


def epoch_variants(trainers: Iterable[type], epochs: Iterable[int] = EPOCH_VARIANTS) -> Dict[str, type]:
    """Subclasses that only set ``budget_epochs``; named like nnU-Net's ``nnUNetTrainer_5epochs``."""
    made = {}
    for trainer in trainers:
        for n in epochs:
            name = f"{trainer.__name__}_{n}epoch" + ("s" if n > 1 else "")
            made[name] = type(name, (trainer,), {"budget_epochs": n, "__module__": trainer.__module__,
                                                 "__doc__": f"{trainer.__name__} for {n} epoch(s)."})
    return made
