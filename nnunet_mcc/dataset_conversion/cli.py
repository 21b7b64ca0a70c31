"""``nnunet-mcc convert {brats15,promise12,podocyte} SRC ...``: one sub-command per converter module."""

import argparse
import importlib

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
