"""nnU-Net trainers of this package, found by nnU-Net's ``-tr`` lookup through ``nnunet_ext/``.

Every name here is unique against nnunetv2's own trainers (checked by the tests and by
``nnunet-mcc doctor``).
"""

import sys

from nnunet_mcc.trainers.base import ComparisonTrainer
from nnunet_mcc.trainers.baselines import nnUNetTrainerBaseline, nnUNetTrainerBaselineCE, nnUNetTrainerBaselineDice
from nnunet_mcc.trainers.mcc import nnUNetTrainerMCC, nnUNetTrainerMCC_CE
from nnunet_mcc.trainers.variants import epoch_variants

MAIN_TRAINERS = [
    nnUNetTrainerBaseline, nnUNetTrainerBaselineCE, nnUNetTrainerBaselineDice,
    nnUNetTrainerMCC, nnUNetTrainerMCC_CE,
]

_variants = epoch_variants(MAIN_TRAINERS)
for _name, _cls in _variants.items():
    # the class must be an attribute of its __module__ too, so pickling and nnU-Net's lookup agree
    setattr(sys.modules[_cls.__module__], _name, _cls)
globals().update(_variants)

ALL_TRAINERS = MAIN_TRAINERS + list(_variants.values())
__all__ = [t.__name__ for t in ALL_TRAINERS]
