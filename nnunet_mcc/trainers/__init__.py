"""nnU-Net trainers of this package, found by nnU-Net's ``-tr`` lookup through ``nnunet_ext/``.

Each module of this package lists its main trainers in a module-level ``TRAINERS`` list; this file
collects them. Short variants in nnU-Net's style (``<name>_5epochs``, any number of epochs) and seeded
variants (``<name>_seed1``, ``<name>_5epochs_seed1``) are built on first use by the module-level
``__getattr__`` below (``variants.py``). Every name is unique against nnunetv2's own
trainers (checked by the tests and ``nnunet-mcc doctor``).
"""

import importlib
import pkgutil

from nnunet_mcc.trainers.base import ComparisonTrainer  # noqa: F401  (the base for users' own trainers)
from nnunet_mcc.trainers.variants import listed_variant_names, module_getattr, variant

MAIN_TRAINERS = []
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _cls in getattr(_module, "TRAINERS", ()):
        MAIN_TRAINERS.append(_cls)
        globals()[_cls.__name__] = _cls
_BY_NAME = {t.__name__: t for t in MAIN_TRAINERS}
for _cls in MAIN_TRAINERS:  # a variant lives in its base's module, which resolves it on demand too
    _home = importlib.import_module(_cls.__module__)
    if not hasattr(_home, "__getattr__"):
        _home.__getattr__ = module_getattr(_home.__name__, _BY_NAME)

# the main trainers and the conventional short variants (1, 5, 10, ... epochs); any other N works too
__all__ = [t.__name__ for t in MAIN_TRAINERS] + listed_variant_names(MAIN_TRAINERS)


def __getattr__(name: str):
    """``<Trainer>[_<N>epochs][_seed<S>]``, built on first use (PEP 562); anything else is an AttributeError."""
    cls = variant(name, _BY_NAME)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


def trainer_class(name: str) -> type:
    """A trainer of this package by name (main trainer, short or seeded variant); KeyError if there is none."""
    try:
        return _BY_NAME[name] if name in _BY_NAME else __getattr__(name)
    except AttributeError:
        raise KeyError(name) from None
