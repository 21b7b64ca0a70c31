"""2D podocyte histology tiles (Lutnick et al. 2019) -> $nnUNet_raw/Dataset503_Podocyte.

Named as nnU-Net names its own conversion scripts (nnunetv2/dataset_conversion/DatasetXXX_Name.py):

    python dataset_conversion/Dataset503_Podocyte.py SRC [options]
        # the same as: nnunet-mcc convert podocyte SRC [options]

The conversion itself is the packaged nnunet_mcc.dataset_conversion.podocyte (options: --help, and
docs/converters.md); this script puts the clone first on the path, so it also runs uninstalled.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the clone, uninstalled too

from nnunet_mcc.dataset_conversion.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("podocyte"))
