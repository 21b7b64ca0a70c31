"""PROMISE12 (MICCAI 2012 prostate MR) -> $nnUNet_raw/Dataset502_PROMISE12.

Named as nnU-Net names its own conversion scripts (nnunetv2/dataset_conversion/DatasetXXX_Name.py):

    python dataset_conversion/Dataset502_PROMISE12.py SRC [options]
        # the same as: nnunet-mcc convert promise12 SRC [options]

The conversion itself is the packaged nnunet_mcc.dataset_conversion.promise12 (options: --help, and
docs/converters.md); this script puts the clone first on the path, so it also runs uninstalled.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the clone, uninstalled too

from nnunet_mcc.dataset_conversion.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("promise12"))
