"""The converters' one command line: ``nnunet-mcc convert {brats15,promise12,podocyte} SRC ...``.

The same command line runs from the scripts of a clone's ``dataset_conversion/`` folder
(``Dataset501_BraTS15.py`` ...) and as ``python -m nnunet_mcc.dataset_conversion.<name>``, through
:func:`script_main`.
"""

import argparse
import importlib
import sys
from typing import Optional, Sequence


CONVERTERS = {
    "brats15": ("nnunet_mcc.dataset_conversion.brats15", "BRATS 2015 brain tumour MRI (4 channels), default id 501"),
    "promise12": ("nnunet_mcc.dataset_conversion.promise12", "PROMISE12 prostate MRI (.mhd/.raw), default id 502"),
    "podocyte": ("nnunet_mcc.dataset_conversion.podocyte", "2D podocyte histology tiles, default id 503"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET")
    sub.required = True
    for name, (module_name, help_text) in CONVERTERS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_converter=module_name)
        importlib.import_module(module_name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args._converter).run(args)


def script_main(dataset: str, argv: Optional[Sequence[str]] = None) -> int:
    """One converter run as a script: exactly ``nnunet-mcc convert DATASET ARGV`` (options, messages, exit codes)."""
    from nnunet_mcc.cli import main

    return main(["convert", dataset, *(sys.argv[1:] if argv is None else argv)])
