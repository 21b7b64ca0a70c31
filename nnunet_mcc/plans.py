"""Extra nnU-Net plans configurations, written into the plans file the way nnU-Net reads them.

A smaller network for CPU smoke runs and demos is a *configuration* of the existing plans (as nnU-Net
intends custom configurations), not an edit of nnU-Net: it shares the base configuration's
preprocessed data (same ``data_identifier``) and only narrows the network and, optionally, the patch.
"""

import copy
import os
from typing import Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mcc.fileio import write_json


def plans_path(preprocessed_root: str, dataset_name: str, plans_identifier: str = "nnUNetPlans") -> str:
    return os.path.join(preprocessed_root, dataset_name, plans_identifier + ".json")


def add_small_configuration(plans_file: str, base: str = "3d_fullres", name: Optional[str] = None,
                            max_features: int = 32, base_features: int = 8, batch_size: Optional[int] = None,
                            n_stages: Optional[int] = None) -> str:
    """Add (or replace) configuration ``name`` = ``base`` with a narrower, optionally shallower U-Net.

    Works on nnU-Net's plain plans (``PlainConvUNet``: ``n_conv_per_stage``) and on its residual-encoder
    presets (``nnUNetPlannerResEncM/L/XL``, ``ResidualEncoderUNet``: ``n_blocks_per_stage``); the encoder's
    per-stage list and the decoder's ``n_conv_per_stage_decoder`` (one entry fewer) are cut together.

    ``base_features`` is the width of the first stage (nnU-Net: 32), doubled per stage up to
    ``max_features``. ``n_stages`` drops the deepest stages (the patch must still be divisible by the
    remaining strides, which holds because dropping stages only removes downsampling).
    Returns the configuration name.

    Raises:
        ValueError: a missing configuration, or an architecture whose per-stage lists this function does
            not know (named with the plans file).
    """
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"plans file {plans_file} does not exist: run nnUNetv2_plan_and_preprocess first")
    plans = load_json(plans_file)
    configurations = plans["configurations"]
    if base not in configurations:
        raise ValueError(f"{plans_file} has no configuration {base!r} (has: {', '.join(configurations)})")
    name = name or f"{base}_small"
    config = copy.deepcopy(configurations[base])
    parent = config.pop("inherits_from", None)
    if parent is not None:  # resolve inheritance so the new entry stands alone
        resolved = copy.deepcopy(configurations[parent])
        resolved.update(config)
        config = resolved
    architecture = config["architecture"]
    arch = architecture["arch_kwargs"]
    encoder_key = encoder_depth_key(architecture, plans_file)
    stages = arch["n_stages"] if n_stages is None else max(2, min(int(n_stages), arch["n_stages"]))
    for key in ("kernel_sizes", "strides", encoder_key, "features_per_stage"):
        arch[key] = arch[key][:stages]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][:stages - 1]
    arch["n_stages"] = stages
    arch["features_per_stage"] = [min(base_features * 2 ** i, max_features) for i in range(stages)]
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    configurations[name] = config
    write_json(plans_file, plans, "nnU-Net plans", indent=4)
    return name


# the per-stage encoder depth of each architecture nnU-Net's planners write
ENCODER_DEPTH_KEYS = {
    "PlainConvUNet": "n_conv_per_stage",
    "ResidualEncoderUNet": "n_blocks_per_stage",
}


def encoder_depth_key(architecture: dict, plans_file: str = "plans") -> str:
    """The ``arch_kwargs`` key holding the encoder's per-stage depth of a plans ``architecture`` entry.

    The network class decides (``network_class_name``, e.g.
    ``dynamic_network_architectures.architectures.unet.ResidualEncoderUNet``); an entry without a class name
    (hand-written plans) is read by its keys. Raises ValueError for a class this package does not know.
    """
    arch = architecture.get("arch_kwargs", {})
    class_name = str(architecture.get("network_class_name", "")).rsplit(".", 1)[-1]
    if class_name:
        key = ENCODER_DEPTH_KEYS.get(class_name)
        if key is None or key not in arch:
            raise ValueError(f"{plans_file}: architecture {architecture['network_class_name']!r} is not one "
                             f"add_small_configuration knows ({', '.join(ENCODER_DEPTH_KEYS)}, with their "
                             f"per-stage lists {', '.join(ENCODER_DEPTH_KEYS.values())})")
        return key
    keys = [k for k in ENCODER_DEPTH_KEYS.values() if k in arch]
    if len(keys) != 1:
        raise ValueError(f"{plans_file}: the architecture names no network_class_name and has "
                         f"{'none' if not keys else 'both'} of {', '.join(ENCODER_DEPTH_KEYS.values())}")
    return keys[0]


def configuration_names(plans_file: str) -> Sequence[str]:
    return list(load_json(plans_file)["configurations"])


DEFAULT_PLANNER = "ExperimentPlanner"  # nnUNetv2_plan_and_preprocess's default -pl, which writes nnUNetPlans


def planner_class(planner: str) -> type:
    """nnU-Net's experiment planner class named ``planner``, found as ``nnUNetv2_plan_and_preprocess -pl`` finds
    it. Raises ValueError naming the planner when nnU-Net has none of that name."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                        "nnunetv2.experiment_planning")
    if found is None:
        raise ValueError(f"nnU-Net has no experiment planner {planner!r} (its presets: {DEFAULT_PLANNER}, "
                         "nnUNetPlannerResEncM, nnUNetPlannerResEncL, nnUNetPlannerResEncXL)")
    return found


def planner_plans(planner: str) -> str:
    """The plans identifier ``planner`` writes by default (``nnUNetPlannerResEncM`` -> ``nnUNetResEncUNetMPlans``),
    read from the planner's own ``plans_name`` default."""
    import inspect

    parameter = inspect.signature(planner_class(planner).__init__).parameters.get("plans_name")
    if parameter is None or not isinstance(parameter.default, str):
        raise ValueError(f"experiment planner {planner!r} names no default plans identifier: give -p")
    return parameter.default


def add_planner_argument(parser) -> None:
    """``-pl/--planner``: nnU-Net's planner whose plans to use, as in ``nnUNetv2_plan_and_preprocess -pl``; it sets
    ``plans`` to the identifier the planner writes (after ``-p``, it wins)."""
    import argparse

    class _PlannerAction(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            try:
                namespace.plans = planner_plans(value)
            except ValueError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            setattr(namespace, self.dest, value)

    parser.add_argument("-pl", "--planner", action=_PlannerAction, metavar="PLANNER",
                        help="nnU-Net experiment planner whose plans to use (e.g. nnUNetPlannerResEncM -> "
                             "nnUNetResEncUNetMPlans); sets -p to the plans it writes")
