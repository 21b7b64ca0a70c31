"""Variants built on demand: ``<Trainer>[_<N>epoch(s)][_seed<S>]``.

* ``_<N>epochs`` (``_1epoch`` for one; nnU-Net's naming style, any N >= 1) sets the class attribute
  ``budget_epochs``;
* ``_seed<S>`` (S >= 0 without leading zeros, always the last suffix: ``nnUNetTrainerMCC_50epochs_seed1``)
  sets ``trainer_seed``; the class is a subclass of the unseeded one (``nnUNetTrainerMCC_50epochs``).

nnU-Net finds a trainer with ``hasattr``/``getattr`` on a module, so a module-level ``__getattr__``
(PEP 562) can build ``nnUNetTrainerMCC_37epochs`` the first time it is asked for. The class lives in its
base's module (``nnunet_mcc.trainers.mcc``), which resolves it the same way, and is cached, so every lookup
(and pickling by reference, and the trainer name a checkpoint stores) returns the same object. The name
helpers (``split_seed``, ``seed_variant_name``) live in the import-light ``nnunet_mcc.budget``.
"""

import re
from typing import Dict, Iterable, Optional

from nnunet_mcc.budget import split_seed

# the lengths nnU-Net ships for its own trainer and that this package lists in __all__ (any N works)
EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250)
_PATTERN = re.compile(r"^(?P<base>\w+?)_(?P<n>[1-9][0-9]*)epochs?$")
_CACHE: Dict[str, type] = {}


def variant_name(trainer_name: str, epochs: int) -> str:
    return f"{trainer_name}_{epochs}epoch" + ("s" if epochs > 1 else "")


def variant(name: str, trainers: Dict[str, type]) -> Optional[type]:
    """The class called ``name`` if it is ``<one of trainers>[_<N>epoch(s)][_seed<S>]`` in nnU-Net's spelling
    (see the module docstring), else None."""
    if name in _CACHE:
        return _CACHE[name]
    unseeded, seed = split_seed(name)
    if seed is not None:
        parent = trainers.get(unseeded) or variant(unseeded, trainers)
        if parent is None or getattr(parent, "trainer_seed", None) is not None:
            return None
        cls = type(name, (parent,), {"trainer_seed": seed, "__module__": parent.__module__,
                                     "__doc__": f"{parent.__name__} with seed {seed}."})
        _CACHE[name] = cls
        return cls
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
