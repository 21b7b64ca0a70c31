"""``nnunet-mcc doctor``: versions, nnU-Net's paths, and whether nnU-Net's own lookup finds our trainers."""

import argparse
import contextlib
import io
import os
import sys
from typing import List, Tuple

from nnunet_mcc import __version__

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="also check the listed short variants (<trainer>_<N>epochs for N in 1 5 10 20 50 100 "
                             "250), not just the main trainers (slower)")


def _versions() -> List[Tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    rows = [("python", sys.version.split()[0]), ("nnunet-mcc", __version__)]
    for dist in ("nnunetv2", "torch", "SimpleITK", "numpy"):
        try:
            rows.append((dist, version(dist)))
        except PackageNotFoundError:
            rows.append((dist, "NOT INSTALLED"))
    return rows


def check_trainers(names: List[str]) -> List[Tuple[str, str]]:
    """Problems found by nnU-Net's own lookup: [(trainer, problem)]; empty when all are found as ours."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    problems = []
    for name in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints every folder it searches
                found = recursive_find_trainer_class_by_name(name)
        except Exception as e:  # nnU-Net raises RuntimeError when not found; anything else is a broken import
            problems.append((name, f"not found ({type(e).__name__}: {str(e).splitlines()[0][:160]})"))
            continue
        if not found.__module__.startswith("nnunet_mcc."):
            problems.append((name, f"nnU-Net resolves it to {found.__module__}.{found.__name__}, not ours "
                                   "(a built-in trainer of that name wins)"))
    return problems


def run(args: argparse.Namespace) -> int:
    from nnunet_mcc import _ext_hook

    ok = True
    print("nnunet-mcc doctor")
    print("\nVersions")
    for name, value in _versions():
        print(f"  {name:<12} {value}")
        ok &= value != "NOT INSTALLED"

    print("\nnnU-Net paths")
    for variable in PATH_VARIABLES:
        value = os.environ.get(variable)
        state = "not set" if value is None else ("ok" if os.path.isdir(value) else "folder does not exist yet")
        print(f"  {variable:<20} {value or '-'}  [{state}]")
    if any(os.environ.get(v) is None for v in PATH_VARIABLES):
        print("  (nnU-Net needs all three to plan, train and predict: export them, see nnU-Net's "
              "documentation/setting_up_paths.md)")

    print("\nTrainer discovery")
    print(f"  our trainer folder    {_ext_hook.TRAINER_FOLDER}")
    print(f"  nnUNet_extTrainer     {os.environ.get(_ext_hook.ENV_VAR, '-')}")
    if not _ext_hook.is_registered():
        ok = False
        print("  PROBLEM: our folder is not in nnUNet_extTrainer, so nnUNetv2_train/-predict will not find our trainers.\n"
              "  The package's start-up hook (nnunet_mcc_trainers.pth in site-packages) did not run: reinstall with\n"
              "  `pip install nnunet-mcc` (or `pip install -e .`), check NNUNET_MCC_NO_AUTOREGISTER is unset, or add it by hand:\n"
              f"    export nnUNet_extTrainer=\"${{nnUNet_extTrainer:+$nnUNet_extTrainer{os.pathsep}}}{_ext_hook.TRAINER_FOLDER}\"")
    else:
        from nnunet_mcc import trainers

        main_names = [t.__name__ for t in trainers.MAIN_TRAINERS]
        names = list(trainers.__all__) if args.all else main_names
        problems = check_trainers(names)
        for name in names:
            problem = dict(problems).get(name)
            print(f"  {'ok ' if problem is None else 'BAD'}  {name}" + (f": {problem}" if problem else ""))
        if problems:
            ok = False
            print("  PROBLEM: nnU-Net's lookup does not give our class for the names marked BAD (see above).")
        elif not args.all:
            print(f"  ({len(trainers.__all__) - len(names)} listed short variants not checked; --all checks them too; "
                  "any <trainer>_<N>epochs works)")
    print("\n" + ("All checks passed." if ok else "Some checks FAILED (see PROBLEM lines)."))
    return 0 if ok else 1
