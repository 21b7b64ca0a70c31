"""Class distance matrices for the Generalized Wasserstein Dice loss, always tied to label NAMES.

A distance matrix ``M`` is only meaningful together with the label order of the dataset it is
used on: ``M[i, j]`` is the distance between the labels with VALUES ``i`` and ``j``. Copying a
matrix from a paper into a dataset whose labels are numbered differently silently trains with the
wrong distances. Here every matrix is written with label names and mapped onto the dataset's values
by name, then checked against the rules the loss relies on (:func:`validate_distance_matrix`).

Sources, in the order :func:`resolve_distance_matrix` tries them:

1. a JSON file keyed by label names (the trainers take its path from the environment variable
   ``NNUNET_MCC_GWDL_MATRIX`` or from a trainer variant), or a named preset (``"brats"``, ``"zero_one"``);
2. a label hierarchy in dataset.json (``"evaluation_regions"``: region name -> label values,
   regions nested or disjoint), turned into tree distances (:func:`hierarchy_distance_matrix`);
3. otherwise the 0/1 matrix (with two labels the loss is then the foreground soft Dice loss; with
   more, a voxel given to a wrong foreground label counts as one missed voxel).
"""

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mcc.errors import UserError
from nnunet_mcc.fileio import read_json
from nnunet_mcc.labels import BRATS_LABEL_NAMES, DatasetLabelsError, checked_region, label_names_by_value

# Fidon et al. 2017, in the BraTS label space (nnunet_mcc.labels.BRATS_LABELS)
BRATS_MATRIX = (
    (0.0, 1.0, 1.0, 1.0, 1.0),
    (1.0, 0.0, 0.6, 0.2, 0.5),
    (1.0, 0.6, 0.0, 0.6, 0.7),
    (1.0, 0.2, 0.6, 0.0, 0.5),
    (1.0, 0.5, 0.7, 0.5, 0.0),
)
# name -> (label names, matrix), or None for a matrix that fits any label set
PRESETS: Dict[str, Optional[Tuple[Sequence[str], Sequence[Sequence[float]]]]] = {
    "brats": (BRATS_LABEL_NAMES, BRATS_MATRIX),
    "zero_one": None,  # zero_one_matrix: every wrong label costs 1
}


class DistanceMatrixError(ValueError):
    """A distance matrix breaks a rule or does not fit the dataset's labels; the message says which."""


def dataset_label_names(dataset_json: Mapping) -> List[str]:
    """Label names of a label-mode dataset.json ordered by value (index = label value), ignore label left out
    (``nnunet_mcc.labels.label_names_by_value``: nnU-Net's ``LabelManager`` rules). Raises DistanceMatrixError
    for region-based datasets and for label values that are not 0..K-1."""
    try:
        return label_names_by_value(dataset_json, needed_by="the Generalized Wasserstein Dice loss")
    except DatasetLabelsError as e:
        raise DistanceMatrixError(str(e)) from None


def validate_distance_matrix(matrix, label_names: Optional[Sequence[str]] = None, source: str = "distance matrix",
                             atol: float = 1e-6) -> np.ndarray:
    """Check the rules of a GWDL class distance matrix and return it as float64.

    Rules (each violation raises DistanceMatrixError naming the rule and the offending entry):
    square; K x K for the K labels of the dataset (when ``label_names`` is given); finite; zero
    diagonal; non-negative; symmetric; ``M[l, background] = 1`` for every foreground label (the
    largest distance: it makes ``1 - W`` the soft true positive of the loss); no entry above 1
    (so the per-voxel Wasserstein distance and the loss stay in [0, 1]).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DistanceMatrixError(f"{source}: must be square (K x K), got shape {m.shape}")
    k = m.shape[0]
    if label_names is not None and k != len(label_names):
        raise DistanceMatrixError(f"{source}: is {k} x {k} but the dataset has {len(label_names)} labels "
                                  f"({', '.join(label_names)}), so it must be {len(label_names)} x {len(label_names)}")
    if k < 2:
        raise DistanceMatrixError(f"{source}: needs at least 2 labels (background and one foreground), got {k}")
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]

    def where(i, j):
        return f"M[{names[i]}, {names[j]}] = {m[i, j]:g}"

    bad = np.argwhere(~np.isfinite(m))
    if len(bad):
        raise DistanceMatrixError(f"{source}: entries must be finite numbers, {where(*bad[0])}")
    bad = np.argwhere(np.abs(np.diag(m)) > atol)
    if len(bad):
        i = int(bad[0][0])
        raise DistanceMatrixError(f"{source}: the diagonal must be zero (a label is at distance 0 from itself), "
                                  f"{where(i, i)}")
    bad = np.argwhere(m < -atol)
    if len(bad):
        raise DistanceMatrixError(f"{source}: distances must be non-negative, {where(*bad[0])}")
    bad = np.argwhere(np.abs(m - m.T) > atol)
    if len(bad):
        i, j = bad[0]
        raise DistanceMatrixError(f"{source}: must be symmetric, {where(i, j)} but {where(j, i)}")
    bad = np.argwhere(np.abs(m[1:, 0] - 1) > atol)
    if len(bad):
        i = int(bad[0][0]) + 1
        raise DistanceMatrixError(f"{source}: the distance between every foreground label and the background "
                                  f"must be 1, {where(i, 0)}")
    bad = np.argwhere(m > 1 + atol)
    if len(bad):
        raise DistanceMatrixError(f"{source}: no distance may exceed 1 (the background distance is the largest), "
                                  f"{where(*bad[0])}")
    return m


def zero_one_matrix(num_labels: int) -> np.ndarray:
    """1 between different labels (for two labels the loss is then the foreground soft Dice loss)."""
    return 1.0 - np.eye(num_labels)


def matrix_from_names(distances: Mapping, label_names: Sequence[str], source: str) -> np.ndarray:
    """Arrange distances given by label names in the dataset's label order.

    ``distances`` is either ``{"labels": [names...], "matrix": [[...], ...]}`` (rows/columns in the
    order of ``labels``) or a nested mapping ``{name: {name: distance}}`` where a pair may be given in
    one direction only and the diagonal may be left out. The names must be exactly the dataset's.
    """
    if not isinstance(distances, Mapping):
        raise DistanceMatrixError(f"{source}: expected a JSON object keyed by label names")
    if "matrix" in distances or "labels" in distances:
        names, rows = distances.get("labels"), distances.get("matrix")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(rows, list):
            raise DistanceMatrixError(f"{source}: the 'labels'/'matrix' form needs a list of label names "
                                      "and a list of rows")
        try:
            given = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise DistanceMatrixError(f"{source}: 'matrix' must be a list of rows of numbers") from None
        if given.ndim != 2 or given.shape[0] != given.shape[1]:
            raise DistanceMatrixError(f"{source}: must be square (K x K), got shape {given.shape}")
        if given.shape[0] != len(names):
            raise DistanceMatrixError(f"{source}: 'matrix' is {given.shape[0]} x {given.shape[1]} but 'labels' "
                                      f"names {len(names)} labels")
        _check_same_names(names, label_names, source)
        order = [names.index(n) for n in label_names]
        return given[np.ix_(order, order)]
    names = list(distances)
    for row in distances.values():
        if not isinstance(row, Mapping):
            raise DistanceMatrixError(f"{source}: each label name must map to an object {{other label: distance}}")
        names += [n for n in row if n not in names]
    _check_same_names(names, label_names, source)
    index = {n: i for i, n in enumerate(label_names)}
    m = np.full((len(label_names),) * 2, np.nan)
    np.fill_diagonal(m, 0.0)
    for a, row in distances.items():
        for b, value in row.items():
            try:
                m[index[a], index[b]] = float(value)
            except (TypeError, ValueError):
                raise DistanceMatrixError(f"{source}: distance {a} -> {b} is not a number: {value!r}") from None
    for i, j in np.argwhere(np.isnan(m)):
        if np.isnan(m[j, i]):
            raise DistanceMatrixError(f"{source}: no distance given between {label_names[i]} and {label_names[j]}")
        m[i, j] = m[j, i]
    return m


def _check_same_names(given: Sequence[str], label_names: Sequence[str], source: str) -> None:
    duplicates = sorted({n for n in given if list(given).count(n) > 1})
    unknown = [n for n in given if n not in label_names]
    missing = [n for n in label_names if n not in given]
    if duplicates or unknown or missing:
        parts = ([f"duplicate names {duplicates}"] if duplicates else []) + \
                ([f"names not in dataset.json: {unknown}"] if unknown else []) + \
                ([f"dataset.json labels missing: {missing}"] if missing else [])
        raise DistanceMatrixError(f"{source}: label names must match dataset.json's labels "
                                  f"{list(label_names)}; {'; '.join(parts)}")


def load_matrix_file(path: str, label_names: Sequence[str]) -> np.ndarray:
    """Read a JSON distance matrix keyed by label names (see :func:`matrix_from_names`)."""
    if not os.path.isfile(path):
        raise DistanceMatrixError(f"distance matrix file {path} does not exist")
    try:
        content = read_json(path, "distance matrix file")
    except UserError as e:
        raise DistanceMatrixError(str(e)) from None
    return matrix_from_names(content, label_names, source=f"distance matrix file {path}")


def preset_matrix(name: str, label_names: Sequence[str]) -> np.ndarray:
    """A shipped matrix mapped onto the dataset's labels by name (the dataset may use a subset of them)."""
    if name not in PRESETS:
        raise DistanceMatrixError(f"unknown distance matrix preset {name!r}; presets: {sorted(PRESETS)}")
    if PRESETS[name] is None:
        return zero_one_matrix(len(label_names))
    names, rows = PRESETS[name]
    unknown = [n for n in label_names if n not in names]
    if unknown:
        raise DistanceMatrixError(f"preset {name!r} knows the labels {list(names)}; dataset.json has labels "
                                  f"{unknown} it cannot place (rename them in dataset.json or give a matrix file)")
    if label_names[0] != names[0]:
        raise DistanceMatrixError(f"preset {name!r}: label 0 of dataset.json must be {names[0]!r}, "
                                  f"got {label_names[0]!r}")
    order = [names.index(n) for n in label_names]
    return np.asarray(rows, dtype=np.float64)[np.ix_(order, order)]


def hierarchy_distance_matrix(regions: Mapping[str, Sequence[int]], label_names: Sequence[str]) -> np.ndarray:
    """Tree distances from nested regions (e.g. BraTS: whole tumor > tumor core > enhancing tumor).

    The regions (sets of label values) with the whole image as root form a tree. Two labels are as
    close as the deepest region containing both: ``d(a, b) = 1 - depth(deepest common region) / (D + 1)``
    with the root at depth 0 and D the deepest region's depth. Background lies in no region, so its
    distance to every label is 1; labels sharing the deepest region are the closest. The result is an
    ultrametric with values in (0, 1].
    """
    k = len(label_names)
    sets = {}
    for name, values in regions.items():
        try:
            sets[name] = frozenset(checked_region(name, values, range(1, k)))
        except DatasetLabelsError as e:
            raise DistanceMatrixError(str(e)) from None
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = sets[a], sets[b]
            if sa & sb and not (sa <= sb or sb <= sa):
                raise DistanceMatrixError(f"dataset.json evaluation_regions {a!r} and {b!r} overlap without one "
                                          "containing the other, so they do not form a hierarchy")
    unique = set(sets.values())
    depth = {s: sum(1 for t in unique if s < t) + 1 for s in unique}
    deepest = max(depth.values(), default=0)
    m = np.ones((k, k))
    np.fill_diagonal(m, 0.0)
    for a in range(1, k):
        for b in range(a + 1, k):
            common = [depth[s] for s in unique if a in s and b in s]
            m[a, b] = m[b, a] = 1.0 - (max(common) if common else 0) / (deepest + 1)
    return m


def resolve_distance_matrix(dataset_json: Mapping, matrix_file: Optional[str] = None,
                            preset: Optional[str] = None) -> Tuple[np.ndarray, List[str], str]:
    """The matrix to train with: ``(M, label names in value order, description of the source)``.

    Order: ``matrix_file``, then ``preset``, then ``evaluation_regions`` of dataset.json (tree
    distances), then the 0/1 matrix. The result is validated against the dataset's labels.
    """
    names = dataset_label_names(dataset_json)
    if matrix_file:
        m, source = load_matrix_file(matrix_file, names), f"file {matrix_file}"
    elif preset:
        m, source = preset_matrix(preset, names), f"preset {preset!r} mapped by label names"
    elif dataset_json.get("evaluation_regions"):
        m = hierarchy_distance_matrix(dataset_json["evaluation_regions"], names)
        source = "tree distances of dataset.json evaluation_regions"
    else:
        m, source = zero_one_matrix(len(names)), "0/1 matrix (no label hierarchy in dataset.json)"
    return validate_distance_matrix(m, names, source=f"distance matrix from {source}"), names, source


def matrix_to_json(matrix: np.ndarray, label_names: Sequence[str], source: str = "") -> dict:
    """The ``{"labels", "matrix"}`` form that :func:`matrix_from_names` reads back."""
    out = {"labels": list(label_names), "matrix": [[round(float(v), 6) for v in row] for row in matrix]}
    if source:
        out["source"] = source
    return out


def format_matrix(matrix: np.ndarray, label_names: Sequence[str]) -> str:
    """A readable table for the training log."""
    width = max(len(n) for n in label_names)
    lines = [" " * width + "  " + "  ".join(f"{i:>5d}" for i in range(len(label_names)))]
    for i, (name, row) in enumerate(zip(label_names, matrix)):
        lines.append(f"{name:>{width}}  " + "  ".join(f"{v:5.3f}" for v in row) + f"   ({i})")
    return "\n".join(lines)
