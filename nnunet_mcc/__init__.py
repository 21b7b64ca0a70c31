"""nnunet-mcc: class-imbalance losses as nnU-Net v2 trainers.

Kept import-light on purpose: ``nnunet_mcc._ext_hook`` imports this package at every Python
start-up (through a ``.pth`` file) to register the trainer folder with nnU-Net.
"""

__version__ = "0.1.0"
