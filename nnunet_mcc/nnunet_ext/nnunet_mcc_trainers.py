"""Imported by nnU-Net's trainer lookup as a top-level module (see nnunet_mcc/_ext_hook.py).

Only re-exports: the classes keep their home in ``nnunet_mcc.trainers``, which stays importable
after nnU-Net drops this module from ``sys.modules``. Short variants (``<Trainer>_<N>epochs``) are
resolved on demand through ``nnunet_mcc.trainers``' module ``__getattr__``.
"""

import nnunet_mcc.trainers as _trainers
from nnunet_mcc.trainers import MAIN_TRAINERS

globals().update({t.__name__: t for t in MAIN_TRAINERS})
__all__ = [t.__name__ for t in MAIN_TRAINERS]


def __getattr__(name: str):
    return getattr(_trainers, name)
