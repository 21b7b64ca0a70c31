"""Imported by nnU-Net's trainer lookup as a top-level module (see nnunet_mcc/_ext_hook.py).

Only re-exports: the classes keep their home in ``nnunet_mcc.trainers``, which stays importable
after nnU-Net drops this module from ``sys.modules``.
"""

from nnunet_mcc.trainers import *  # noqa: F401,F403
