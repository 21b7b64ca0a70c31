"""Synthetic class-imbalanced datasets in nnU-Net's raw format.

Each case holds ellipsoid (3D) or ellipse (2D) objects on a background. Their total volume is a
chosen fraction of the image (down to 0.1 % and below), split over the foreground classes; with
``nested=True`` the classes sit inside one another (class 1 contains 2 contains 3, as BraTS' whole
tumour contains the core contains the enhancing part) and ``regions=True`` declares them as nnU-Net
regions. Intensities depend on the class, with Gaussian noise and a smooth multiplicative bias
field; every channel has its own contrast. The same seed gives the same files.
"""

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class SyntheticSpec:
    num_cases: int = 10
    shape: Tuple[int, ...] = (32, 32, 32)
    spacing: Tuple[float, ...] = ()
    num_foreground_classes: int = 1
    foreground_fraction: float = 0.02
    class_weights: Tuple[float, ...] = ()
    nested: bool = False
    regions: bool = False
    num_channels: int = 1
    noise: float = 0.15
    bias: float = 0.3
    num_test_cases: int = 0
    seed: int = 0
    objects_per_class: int = 1
    ignore_fraction: float = 0.0
    class_names: Tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if len(self.shape) not in (2, 3) or min(self.shape) < 8:
            raise ValueError(f"shape must be 2D or 3D with every size >= 8, got {self.shape}")
        if self.spacing and len(self.spacing) != len(self.shape):
            raise ValueError(f"spacing {self.spacing} must have one value per axis of shape {self.shape}")
        if not 0 < self.foreground_fraction < 0.5:
            raise ValueError(f"foreground_fraction must be in (0, 0.5), got {self.foreground_fraction}")
        if self.num_foreground_classes < 1:
            raise ValueError("num_foreground_classes must be >= 1")
        if self.class_weights and len(self.class_weights) != self.num_foreground_classes:
            raise ValueError("class_weights needs one weight per foreground class")
        if self.regions and not self.nested:
            raise ValueError("regions=True needs nested=True (regions are the nested unions of classes)")
        if self.class_names and len(self.class_names) != self.num_foreground_classes:
            raise ValueError("class_names needs one name per foreground class")
        if not 0 <= self.ignore_fraction < 0.5:
            raise ValueError(f"ignore_fraction must be in [0, 0.5), got {self.ignore_fraction}")
        if self.num_cases < 1 or self.num_channels < 1 or self.num_test_cases < 0:
            raise ValueError("num_cases and num_channels must be >= 1, num_test_cases >= 0")


def _ellipsoid(shape: Sequence[int], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    return dist <= 1.0


def _radii_for_volume(volume: float, ndim: int, rng: np.random.Generator) -> np.ndarray:
    """Random elongation with the requested volume (voxels)."""
    aspect = rng.uniform(0.7, 1.4, size=ndim)
    aspect /= np.prod(aspect) ** (1 / ndim)
    unit = math.pi if ndim == 2 else 4 / 3 * math.pi
    r = (volume / unit) ** (1 / ndim)
    return np.maximum(r * aspect, 0.75)


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    coords = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    field_ = sum(rng.uniform(-1, 1) * c for c in coords) + rng.uniform(-1, 1) * sum(c ** 2 for c in coords) / len(shape)
    field_ = field_ / max(np.abs(field_).max(), 1e-6)
    return np.exp(strength * field_)


def make_case(spec: SyntheticSpec, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One case: images (channels, *shape) float32 and labels (*shape) uint8."""
    shape = tuple(spec.shape)
    ndim = len(shape)
    total = float(np.prod(shape))
    k = spec.num_foreground_classes
    weights = np.asarray(spec.class_weights or [1.0] * k, dtype=float)
    weights = weights / weights.sum()
    seg = np.zeros(shape, dtype=np.uint8)
    if spec.nested:
        # class 1 is the outer object; each next class a smaller object inside the previous one
        volumes = spec.foreground_fraction * total * np.cumsum(weights[::-1])[::-1]
        radii = _radii_for_volume(volumes[0], ndim, rng)
        margin = np.ceil(radii).astype(int) + 1
        center = np.array([rng.uniform(m, s - 1 - m) if s - 1 - m > m else s / 2 for m, s in zip(margin, shape)])
        for c in range(k):
            radii_c = radii * (volumes[c] / volumes[0]) ** (1 / ndim)
            offset = rng.uniform(-0.3, 0.3, size=ndim) * (radii - radii_c)
            seg[_ellipsoid(shape, center + offset, radii_c)] = c + 1
    else:
        for c in range(k):
            for _ in range(spec.objects_per_class):
                volume = spec.foreground_fraction * total * weights[c] / spec.objects_per_class
                radii = _radii_for_volume(volume, ndim, rng)
                margin = np.ceil(radii).astype(int) + 1
                center = np.array([rng.uniform(m, s - 1 - m) if s - 1 - m > m else s / 2
                                   for m, s in zip(margin, shape)])
                seg[_ellipsoid(shape, center, radii)] = c + 1
    if spec.ignore_fraction > 0:
        # an unannotated slab, labelled with the ignore label (the highest value, k + 1)
        thickness = max(1, int(round(spec.ignore_fraction * shape[0])))
        start = int(rng.integers(0, shape[0] - thickness + 1))
        seg[start:start + thickness] = k + 1
    images = np.empty((spec.num_channels,) + shape, dtype=np.float32)
    for ch in range(spec.num_channels):
        # each channel sees the classes with its own contrast, as MR sequences do
        contrast = np.roll(np.linspace(1.0, 2.0, k + 1) if k else np.ones(1), ch)
        contrast[0] = 0.2 + 0.1 * ch
        img = contrast[np.minimum(seg, k)] * _bias_field(shape, spec.bias, rng)
        img = img + rng.normal(0, spec.noise, size=shape)
        images[ch] = (100 * img).astype(np.float32)
    return images, seg


def _write(array: np.ndarray, path: str, spacing: Sequence[float]) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # numpy (z, y, x) -> ITK (x, y, z)
    sitk.WriteImage(img, path, useCompression=True)


def dataset_labels(spec: SyntheticSpec) -> Tuple[Dict[str, object], Optional[List[int]]]:
    k = spec.num_foreground_classes
    names = list(spec.class_names) or [f"class{c}" for c in range(1, k + 1)]
    ignore = {"ignore": k + 1} if spec.ignore_fraction > 0 else {}
    if spec.regions:
        labels = {"background": 0}
        for c, name in enumerate(names, start=1):
            members = list(range(c, k + 1))
            labels[name] = members if len(members) > 1 else members[0]
        return {**labels, **ignore}, list(range(1, k + 1))
    return {"background": 0, **{n: i for i, n in enumerate(names, start=1)}, **ignore}, None


def make_synthetic_dataset(raw_folder: str, dataset_id: int, name: str = "Synthetic",
                           spec: Optional[SyntheticSpec] = None, overwrite: bool = False) -> str:
    """Write ``raw_folder/DatasetXXX_name`` (atomically) and return its path."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    spec = spec or SyntheticSpec()
    spec.validate()
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be in 1..999, got {dataset_id}")
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    target = os.path.join(raw_folder, folder_name)
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
    os.makedirs(raw_folder, exist_ok=True)
    spacing = spec.spacing or (1.0,) * len(spec.shape)
    rng = np.random.default_rng(spec.seed)
    tmp = tempfile.mkdtemp(prefix=f".{folder_name}.", dir=raw_folder)
    try:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if spec.num_test_cases else ()):
            os.makedirs(os.path.join(tmp, sub))
        fractions = []
        for i in range(spec.num_cases + spec.num_test_cases):
            images, seg = make_case(spec, rng)
            training = i < spec.num_cases
            case = f"{name.lower()}_{i:03d}"
            for ch, img in enumerate(images):
                _write(img, os.path.join(tmp, "imagesTr" if training else "imagesTs", f"{case}_{ch:04d}.nii.gz"),
                       spacing)
            if training:
                _write(seg, os.path.join(tmp, "labelsTr", f"{case}.nii.gz"), spacing)
                counts = np.bincount(seg.ravel(), minlength=spec.num_foreground_classes + 2)
                fractions.append(counts[:spec.num_foreground_classes + 1] / seg.size)
        labels, region_order = dataset_labels(spec)
        extra = {"synthetic_spec": asdict(spec),
                 "class_voxel_fractions": np.mean(fractions, 0).round(6).tolist()}
        generate_dataset_json(tmp, {str(c): f"synthetic{c}" for c in range(spec.num_channels)}, labels,
                              spec.num_cases, ".nii.gz", regions_class_order=region_order, dataset_name=folder_name,
                              description="nnunet-mcc synthetic class-imbalanced dataset", **extra)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_spec(dataset_folder: str) -> SyntheticSpec:
    from nnunet_mcc.fileio import read_json

    d = read_json(os.path.join(dataset_folder, "dataset.json"), "dataset.json")["synthetic_spec"]
    return SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
