"""dataset.json's labels and evaluation regions, read in one place (import-light: no torch; nnU-Net's
``LabelManager`` only where a loss needs the labels validated as nnU-Net trains them).

The rules, nnU-Net's where it has one:

* ``labels`` maps a name to a value (a label) or to a list of values (a region of nnU-Net's region-based
  training). As nnU-Net's ``LabelManager`` reads it, a dataset is **region-based** when some entry lists more
  than one value; a one-value list (``"enhancing_tumor": [3]``) is a label.
* ``ignore`` names the ignore label: neither a class nor a region, left out of every score and loss.
* the losses that index classes by value (GWDL's distance matrix) need label values 0..K-1;
* ``evaluation_regions`` (this package's key, label-based datasets only) maps a region name to a non-empty list
  of foreground label values. compare scores each as the union of its labels; the GWDL trainers read the nested
  ones as the label hierarchy (``nnunet_mcc.losses.distance_matrix.hierarchy_distance_matrix``).
* nnU-Net's ``summary.json`` names a label ``"2"`` and a region ``"(1, 2)"`` (a one-value region ``"(3,)"``).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mcc.errors import UserError

# the BraTS 2013-2015 ground-truth label space (Fidon et al.'s GWDL matrix is written in it)
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing_tumor": 3, "enhancing_tumor": 4}
BRATS_LABEL_NAMES = tuple(sorted(BRATS_LABELS, key=BRATS_LABELS.get))


class DatasetLabelsError(UserError, ValueError):
    """dataset.json's ``labels`` or ``evaluation_regions`` break a rule; the message names the entry."""


def _labels(dataset_json: Mapping) -> Mapping:
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise DatasetLabelsError("dataset.json has no 'labels' mapping (label name -> value)")
    return labels


def region_entries(dataset_json: Mapping) -> List[str]:
    """The names of the entries of ``labels`` that nnU-Net trains as regions (more than one value)."""
    return [name for name, value in _labels(dataset_json).items()
            if name != "ignore" and isinstance(value, (list, tuple)) and len(value) > 1]


def is_region_based(dataset_json: Mapping) -> bool:
    return bool(region_entries(dataset_json))


def ignore_label(dataset_json: Mapping) -> Optional[int]:
    value = dataset_json.get("labels", {}).get("ignore")
    return None if value is None else int(value)


def label_names_by_value(dataset_json: Mapping, needed_by: str = "this") -> List[str]:
    """The label names of a label-based dataset in value order (index = value), the ignore label left out,
    as nnU-Net's ``LabelManager`` validates them. DatasetLabelsError for labels nnU-Net refuses, a
    region-based dataset, or values that are not 0..K-1."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels = _labels(dataset_json)
    try:
        as_labels = LabelManager(dict(labels), None, force_use_labels=True)
    except (AssertionError, RuntimeError, TypeError, ValueError) as e:
        raise DatasetLabelsError(f"dataset.json 'labels' are not valid for nnU-Net: {e}") from None
    regions = region_entries(dataset_json)
    if regions:
        raise DatasetLabelsError(f"dataset.json defines regions ({', '.join(regions)}): {needed_by} needs "
                                 "mutually exclusive labels")
    values = as_labels.all_labels
    if values != list(range(len(values))):
        raise DatasetLabelsError(f"dataset.json label values {values} are not consecutive from 0")
    by_value = {int(value[0] if isinstance(value, (list, tuple)) else value): name
                for name, value in labels.items() if name != "ignore"}
    return [by_value[v] for v in values]


def pseudo_dice_names(dataset_json: Mapping) -> List[str]:
    """The names of the entries of nnU-Net's per-epoch pseudo Dice (``dice_per_class_or_region``), in its order:
    the regions in the order of ``labels`` for a region-based dataset (``LabelManager.foreground_regions``), else the
    foreground labels by value (``foreground_labels``); background and the ignore label left out. Empty when the
    labels cannot be read (the per-class curves are then named by position)."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping):
        return []
    try:
        entries = [(name, [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)])
                   for name, value in labels.items() if name != "ignore"]
    except (TypeError, ValueError):
        return []
    foreground = [(name, values) for name, values in entries if set(values) != {0}]
    if any(len(values) > 1 for _, values in entries):
        return [name for name, _ in foreground]
    return [name for name, _ in sorted(foreground, key=lambda entry: entry[1][0])]


def summary_key_names(dataset_json: Mapping) -> Dict[str, str]:
    """nnU-Net's summary.json key of each label or region -> its name in ``labels`` (both spellings of a
    one-value entry: ``"3"`` and ``"(3,)"``)."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        if name == "ignore":
            continue
        if isinstance(value, (list, tuple)):
            keys = [str(tuple(int(v) for v in value))]
            if len(value) == 1:
                keys.append(str(int(value[0])))
        else:
            keys = [str(int(value)), str((int(value),))]
        for key in keys:
            names[key] = name
    return names


def checked_region(name: str, values, foreground: Sequence[int]) -> Tuple[int, ...]:
    """One evaluation region as a sorted tuple; DatasetLabelsError unless ``values`` is a label value or a
    non-empty list of them, all in ``foreground``."""
    values = [values] if isinstance(values, int) and not isinstance(values, bool) else values
    if not isinstance(values, (list, tuple)) or not values or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DatasetLabelsError(f"dataset.json evaluation_regions[{name!r}] must be a non-empty list of label "
                                 f"values, got {values!r}")
    bad = [v for v in values if v not in foreground]
    if bad:
        raise DatasetLabelsError(f"dataset.json evaluation_regions[{name!r}] holds {bad}, not foreground label "
                                 f"values of 'labels' ({', '.join(map(str, sorted(foreground)))})")
    return tuple(sorted(values))


def evaluation_regions(dataset_json: Mapping) -> Dict[str, Tuple[int, ...]]:
    """``evaluation_regions`` of a label-based dataset.json, checked: region name -> foreground label values.
    ``{}`` when there are none or the dataset is region-based (its regions are its classes)."""
    regions = dataset_json.get("evaluation_regions") or {}
    if not isinstance(regions, Mapping):
        raise DatasetLabelsError("dataset.json: 'evaluation_regions' must map a region name to a list of label "
                                 "values")
    if not regions or is_region_based(dataset_json):
        return {}
    foreground = set()
    for name, value in _labels(dataset_json).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if name != "ignore" and len(values) == 1 and int(values[0]) > 0:
            foreground.add(int(values[0]))
    return {name: checked_region(name, values, foreground) for name, values in regions.items()}
