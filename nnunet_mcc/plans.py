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

    ``base_features`` is the width of the first stage (nnU-Net: 32), doubled per stage up to
    ``max_features``. ``n_stages`` drops the deepest stages (the patch must still be divisible by the
    remaining strides, which holds because dropping stages only removes downsampling).
    Returns the configuration name.
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
    arch = config["architecture"]["arch_kwargs"]
    stages = arch["n_stages"] if n_stages is None else max(2, min(int(n_stages), arch["n_stages"]))
    for key in ("kernel_sizes", "strides", "n_conv_per_stage", "features_per_stage"):
        arch[key] = arch[key][:stages]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][:stages - 1]
    arch["n_stages"] = stages
    arch["features_per_stage"] = [min(base_features * 2 ** i, max_features) for i in range(stages)]
    if batch_size is not None:
        config["batch_size"] = int(batch_size)
    configurations[name] = config
    write_json(plans_file, plans, "nnU-Net plans", indent=4)
    return name


def configuration_names(plans_file: str) -> Sequence[str]:
    return list(load_json(plans_file)["configurations"])
