"""Let nnU-Net's unmodified commands find this package's trainers.

nnU-Net (>= 2.8.0) looks for a trainer named by ``-tr`` in its own package first, then in every
folder listed in the environment variable ``nnUNet_extTrainer``. Each module in such a folder is
imported as a top-level module, so we point it at a dedicated folder (``nnunet_ext/``) holding one
uniquely named module that re-exports our trainer classes.

The wheel installs ``nnunet_mcc_trainers.pth`` into site-packages; Python runs it at start-up and
it calls ``register()``, which appends the folder to ``nnUNet_extTrainer`` while keeping whatever
the user already set. Set ``NNUNET_MCC_NO_AUTOREGISTER=1`` to switch this off.
"""

import os

ENV_VAR = "nnUNet_extTrainer"
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def registered_paths(environ=os.environ) -> list:
    return [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def is_registered(environ=os.environ) -> bool:
    return any(os.path.abspath(p) == TRAINER_FOLDER for p in registered_paths(environ))


def register(environ=os.environ) -> None:
    """Append our trainer folder to ``nnUNet_extTrainer`` (idempotent, keeps existing entries)."""
    if not is_registered(environ):
        environ[ENV_VAR] = os.pathsep.join(registered_paths(environ) + [TRAINER_FOLDER])

