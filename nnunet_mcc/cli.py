"""The ``nnunet-mcc`` command: convert, crossval, compare, demo, doctor.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``nnunet-mcc doctor`` stays fast.
"""

import argparse
import importlib
import sys
from typing import List, Optional

from nnunet_mcc import __version__
from nnunet_mcc.errors import UserError

SUBCOMMANDS = {
    "convert": ("nnunet_mcc.dataset_conversion.cli", "convert a downloaded dataset into an nnU-Net raw dataset"),
    "export": ("nnunet_mcc.dataset_conversion.export", "write nnU-Net predictions in a challenge's format "
               "(BraTS .mha, PROMISE12 .mhd/.raw)"),
    "crossval": ("nnunet_mcc.experiments.crossval", "train every (trainer, fold) with nnUNetv2_train"),
    "compare": ("nnunet_mcc.experiments.compare", "compare trainers from their cross-validation results"),
    "demo": ("nnunet_mcc.experiments.demo", "synthetic dataset -> 5-fold cross-validation of one trainer per loss family -> report"),
    "doctor": ("nnunet_mcc.doctor", "check the installation and that nnU-Net finds every trainer"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    full = build_parser_for(argv)
    args = full.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as e:
        print(f"nnunet-mcc {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"nnunet-mcc {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser_for(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-mcc", description="Class-imbalance losses for nnU-Net v2: "
                                     "convert datasets, train, cross-validate and compare.")
    parser.add_argument("--version", action="version", version=f"nnunet-mcc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == chosen:  # import a subcommand's module only when it runs (keeps `doctor` fast)
            importlib.import_module(module_name).add_arguments(p)
    return parser


if __name__ == "__main__":
    sys.exit(main())
