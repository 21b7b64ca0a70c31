"""Short variants in nnU-Net's naming style, ``<Trainer>_<N>epochs`` (``_1epoch`` for one), built on demand.

nnU-Net finds a trainer with ``hasattr``/``getattr`` on a module, so a module-level ``__getattr__``
(PEP 562) can build ``nnUNetTrainerMCC_37epochs`` the first time it is asked for, for any N >= 1. The
class lives in its base's module (``nnunet_mcc.trainers.mcc``), which resolves it the same way, and is
cached, so every lookup (and pickling by reference) returns the same object.
"""

import re
from typing import Dict, Iterable, Optional

# the lengths nnU-Net ships for its own trainer and that this package lists in __all__ (any N works)
EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250)
_PATTERN = re.compile(r"^(?P<base>\w+?)_(?P<n>[1-9][0-9]*)epochs?$")
_CACHE: Dict[str, type] = {}


def variant_name(trainer_name: str, epochs: int) -> str:
    return f"{trainer_name}_{epochs}epoch" + ("s" if epochs > 1 else "")


def variant(name: str, trainers: Dict[str, type]) -> Optional[type]:
    """The class called ``name`` if it is ``<one of trainers>_<N>epoch(s)`` in nnU-Net's spelling, else None."""
    if name in _CACHE:
        return _CACHE[name]
    match = _PATTERN.match(name)
    if not match or match.group("base") not in trainers:
        return None
    epochs = int(match.group("n"))
    if variant_name(match.group("base"), epochs) != name:  # "_1epochs" / "_5epoch" are not nnU-Net's spelling
        return None
    base = trainers[match.group("base")]
    cls = type(name, (base,), {"budget_epochs": epochs, "__module__": base.__module__,
                               "__doc__": f"{base.__name__} for {epochs} epoch{'s' if epochs > 1 else ''}."})
    _CACHE[name] = cls
    return cls


def module_getattr(module_name: str, trainers: Dict[str, type]):
    """A PEP 562 ``__getattr__`` for ``module_name``: the short variants of its own trainers."""

    def __getattr__(name: str):
        cls = variant(name, trainers)
        if cls is None or cls.__module__ != module_name:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return cls

    return __getattr__


def listed_variant_names(trainers: Iterable[type]) -> list:
    return [variant_name(t.__name__, n) for t in trainers for n in EPOCH_VARIANTS]
