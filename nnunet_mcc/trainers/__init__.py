"""nnU-Net trainers of this package, found by nnU-Net's ``-tr`` lookup through ``nnunet_ext/``.

Each module of this package lists its main trainers in a module-level ``TRAINERS`` list; this file
collects them, adds nnU-Net-style short variants (``<name>_5epochs``, ...) and exports them all.
Every name is unique against nnunetv2's own trainers (checked by the tests and ``nnunet-mcc doctor``).
"""

import importlib
import pkgutil
import sys

from nnunet_mcc.trainers.base import ComparisonTrainer  # noqa: F401  (the base for users' own trainers)
from nnunet_mcc.trainers.variants import epoch_variants

MAIN_TRAINERS = []
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _cls in getattr(_module, "TRAINERS", ()):
        MAIN_TRAINERS.append(_cls)
        globals()[_cls.__name__] = _cls

VARIANTS = epoch_variants(MAIN_TRAINERS)
for _name, _cls in VARIANTS.items():
    # the class must be an attribute of its __module__ too, so pickling and nnU-Net's lookup agree
    setattr(sys.modules[_cls.__module__], _name, _cls)
globals().update(VARIANTS)

ALL_TRAINERS = MAIN_TRAINERS + list(VARIANTS.values())
__all__ = [t.__name__ for t in ALL_TRAINERS]
