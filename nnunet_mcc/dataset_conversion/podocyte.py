"""2D Podocyte histology tiles (Lutnick et al. 2019) -> nnU-Net raw dataset (natural-image PNGs).

Accepted layouts (folder names matched case-insensitively)::

    SRC/regions/*.jpeg + SRC/masks/*.png             H-AI-L tiles (RGB JPEG, uint8 class-index masks)
    SRC/images/*.{png,tif} + SRC/{masks,labels}/*    image + index-mask pairs
    SRC/{train,test}/<one of the above>              train/test split taken from the folders

Masks may hold class indices (default), grayscale shades or RGB colours; shades and colours need a
declared map (``--mask-map 0=background,85=glomeruli,170=podocyte,255=non_podocyte`` or
``--mask-map '#000000=0,#ff0000=1,...'``, or a JSON file). Classes default to background, glomeruli,
podocyte, non_podocyte (``--classes`` overrides). RGB images become one RGB PNG per case, which
nnU-Net's NaturalImage2DIO reads as 3 channels (R, G, B); JPEG tiles are decoded and re-encoded as
PNG, which stores the decoded pixels exactly (no second lossy step). Test tiles go to imagesTs (their
masks, when present, to labelsTs).

Masks must hold integers: a float mask is accepted only where every value is a whole number, and
a value outside the classes (a negative one included) is refused, never cast. Image pixels are
stored as 8-bit (or 16-bit gray) PNG; other pixel types (float, negative or wider integers) are
refused with the source file named.

Run: ``nnunet-mcc convert podocyte SRC [-d 503] [--mask-map ...] [--classes ...]``, or
``python dataset_conversion/Dataset503_Podocyte.py SRC ...`` from a clone.
"""

import argparse
import os
import re
import sys
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_mcc.dataset_conversion import common
from nnunet_mcc.dataset_conversion.common import Case, CaseResult, UserError
from nnunet_mcc.fileio import read_json

DEFAULT_ID, DEFAULT_NAME = 503, "Podocyte"
DEFAULT_CLASSES = ("background", "glomeruli", "podocyte", "non_podocyte")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
IMAGE_FOLDERS = r"regions|images?|imgs?|tiles|rgb|inputs?|data"
MASK_FOLDERS = r"masks?|labels?|annotations?|gt|ground_?truths?|segmentations?|targets?"
_MASK_TAG = re.compile(r"_(mask|masks|label|labels|gt|seg|segmentation|annotation|annot)$")

MaskKey = Union[int, Tuple[int, int, int]]


# ---------------------------------------------------------------- mask value / colour maps
def _parse_key(text: str, where: str) -> MaskKey:
    t = text.strip().strip("()[]")
    if re.fullmatch(r"#?[0-9a-fA-F]{6}", t) and (t.startswith("#") or not t.isdigit()):
        t = t.lstrip("#")
        return tuple(int(t[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    parts = [p for p in re.split(r"[\s\-.:/]+", t) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{where}: cannot read {text!r} as a gray value (0-255) or a colour (#rrggbb or R-G-B)") \
            from None
    if len(values) == 1 and 0 <= values[0] <= 65535:
        return values[0]
    if len(values) == 3 and all(0 <= v <= 255 for v in values):
        return tuple(values)  # type: ignore[return-value]
    raise UserError(f"{where}: {text!r} is neither a gray value nor an R-G-B colour")


def parse_mask_map(spec: Optional[str], classes: Sequence[str]) -> Optional[Dict[MaskKey, int]]:
    """``--mask-map``: 'VALUE=CLASS,...' (gray value, #rrggbb or R-G-B colour -> class index or name) or a JSON file."""
    if not spec:
        return None
    where = "--mask-map"
    if os.path.isfile(spec):
        where = spec
        content = read_json(spec, "mask map")
        if not isinstance(content, dict):
            raise UserError(f"{spec}: cannot read mask map (a JSON object of image name -> mask name is needed)")
        items = [(str(k), str(v)) for k, v in content.items()]
    else:
        items = []
        for entry in re.split(r"[,;]", spec):
            if not entry.strip():
                continue
            if "=" not in entry:
                raise UserError(f"--mask-map: entry {entry!r} is not VALUE=CLASS")
            k, v = entry.split("=", 1)
            items.append((k, v))
    out: Dict[MaskKey, int] = {}
    for k, v in items:
        key = _parse_key(k, where)
        v = v.strip()
        if v.isdigit():
            cls = int(v)
        elif v in classes:
            cls = list(classes).index(v)
        else:
            raise UserError(f"{where}: class {v!r} is not a class index or one of {', '.join(classes)}")
        if not 0 <= cls < len(classes):
            raise UserError(f"{where}: class {cls} outside 0..{len(classes) - 1} ({', '.join(classes)})")
        if key in out and out[key] != cls:
            raise UserError(f"{where}: {k.strip()!r} is mapped twice")
        out[key] = cls
    if len({type(k) for k in out}) > 1:
        raise UserError(f"{where}: mixes gray values and colours; declare one kind")
    return out


def decode_mask(mask: np.ndarray, path: str, classes: Sequence[str],
                mask_map: Optional[Dict[MaskKey, int]]) -> np.ndarray:
    """Mask pixels (class indices, gray shades or RGB colours) -> uint8 class indices."""
    if mask.ndim == 3:
        if mask.shape[2] == 4:
            mask = mask[..., :3]
        if mask.shape[2] != 3:
            raise UserError(f"{path}: mask has {mask.shape[2]} channels, expected 1 (index/gray) or 3 (RGB)")
        if (mask[..., 0] == mask[..., 1]).all() and (mask[..., 0] == mask[..., 2]).all() and \
                not (mask_map and isinstance(next(iter(mask_map)), tuple)):
            mask = mask[..., 0]  # gray stored as RGB
    if mask.ndim == 2:
        mask = _integer_mask(mask, path)
        values = np.unique(mask)
        if mask_map and isinstance(next(iter(mask_map)), int):
            unknown = [int(v) for v in values if int(v) not in mask_map]
            if unknown:
                raise UserError(f"{path}: mask values {unknown[:8]} not in --mask-map (declared: "
                                f"{sorted(mask_map)})")
            lut = np.zeros(int(values.max()) + 1, np.uint8)
            for k, c in mask_map.items():
                if k < len(lut):
                    lut[k] = c
            return lut[mask]
        if mask_map:
            raise UserError(f"{path}: single-channel mask but --mask-map declares colours")
        bad = [int(v) for v in values if not 0 <= v < len(classes)]
        if bad:
            raise UserError(f"{path}: mask values {bad[:8]} are not class indices 0..{len(classes) - 1}; for "
                            "grayscale shades declare them with --mask-map VALUE=CLASS,...")
        return mask.astype(np.uint8)
    if not mask_map or not isinstance(next(iter(mask_map)), tuple):
        raise UserError(f"{path}: RGB colour-coded mask: declare its palette with --mask-map '#rrggbb=CLASS,...'")
    mask = _integer_mask(mask, path)
    if mask.min() < 0 or mask.max() > 255:
        raise UserError(f"{path}: RGB mask holds values outside 0..255 ({int(mask.min())}..{int(mask.max())})")
    packed = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2]
    out = np.full(packed.shape, 255, np.uint8)
    for (r, g, b), c in mask_map.items():
        out[packed == ((r << 16) | (g << 8) | b)] = c
    if (out == 255).any():
        unknown = packed[out == 255]
        colour = int(unknown[0])
        raise UserError(f"{path}: unknown mask colour #{colour:06x} "
                        f"({(colour >> 16) & 255}-{(colour >> 8) & 255}-{colour & 255}) in {unknown.size} pixels; "
                        "add it to --mask-map")
    return out


def _integer_mask(mask: np.ndarray, path: str) -> np.ndarray:
    """The mask as integers; a float mask must hold whole numbers only (no silent rounding)."""
    if np.issubdtype(mask.dtype, np.floating):
        common.check_finite(mask, path)
        fractional = mask != np.round(mask)
        if fractional.any():
            raise UserError(f"{path}: mask holds {int(fractional.sum())} non-integer values (e.g. "
                            f"{float(mask[fractional][0]):g}); masks must hold class indices or declared values")
        return mask.astype(np.int64)
    if not np.issubdtype(mask.dtype, np.integer):
        raise UserError(f"{path}: mask of type {mask.dtype} cannot hold class indices")
    return mask


def png_pixels(pixels: np.ndarray, path: str) -> np.ndarray:
    """Image pixels in a type PNG stores exactly (uint8, or uint16 for gray), or a clear refusal naming ``path``."""
    if pixels.dtype == np.uint8 or (pixels.dtype == np.uint16 and pixels.ndim == 2):
        return pixels
    if not np.issubdtype(pixels.dtype, np.integer):
        raise UserError(f"{path}: image has {pixels.dtype} pixels, which PNG (and nnU-Net's 2D reader) cannot "
                        "store; convert the tiles to 8-bit (or 16-bit gray) integers")
    low, high = int(pixels.min()), int(pixels.max())
    if low >= 0 and high <= 255 and pixels.dtype.itemsize == 1:
        return pixels.astype(np.uint8)
    if low >= 0 and high <= 65535 and pixels.ndim == 2:
        return pixels.astype(np.uint16)
    raise UserError(f"{path}: image pixel values {low}..{high} ({pixels.dtype}{', RGB' if pixels.ndim == 3 else ''}) "
                    "do not fit an 8-bit RGB or 16-bit gray PNG")


# ---------------------------------------------------------------- reading images
def _samples_cut_to_8_bits(im) -> bool:
    """Pillow opens 16-bit RGB (PNG, TIFF) in an 8-bit mode, keeping the high bytes only: find that case."""
    if im.mode not in ("RGB", "RGBA", "LA", "L", "P"):
        return False
    for tile in im.tile:
        raw = tile[3][0] if isinstance(tile[3], tuple) else tile[3]
        if isinstance(raw, str) and re.search(r";(16|32)", raw):
            return True
    return False


def read_pixels(path: str, what: str = "image") -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    common.check_readable(path)
    try:
        with Image.open(path) as im:
            if _samples_cut_to_8_bits(im):
                raise UserError(f"{path}: {what} has 16-bit colour samples, which the image reader cuts to 8 bits; "
                                "save it as 8-bit RGB (or 16-bit gray)")
            im.load()
            mode = im.mode
            if mode == "P":
                arr = np.asarray(im) if what == "mask" else np.asarray(im.convert("RGB"))
            elif mode in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA", "LA"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read {what} ({e}); the file may be truncated or corrupt") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        common.check_finite(arr, path)
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = arr[..., :1][..., 0] if (arr[..., 1] == arr[..., 1].max()).all() else arr
    if what == "image" and arr.ndim == 3 and arr.shape[2] == 4:
        if not (arr[..., 3] == arr[..., 3].max()).all():
            raise UserError(f"{path}: image has a transparency channel that is not constant")
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise UserError(f"{path}: unexpected pixel layout {arr.shape}; expected a gray or RGB 2D image")
    return arr


# ---------------------------------------------------------------- finding the cases
def _key(filename: str, suffixes: Sequence[str]) -> str:
    stem = common.normalize(common.strip_suffix(filename, suffixes))
    return _MASK_TAG.sub("", stem)


def _pair_folder(folder: str, src: str, training: bool) -> List[Tuple[str, str, Optional[str]]]:
    """[(name, image, mask)] of a folder holding one image folder and (for training) one mask folder."""
    img_dirs = common.find_child(folder, IMAGE_FOLDERS)
    mask_dirs = common.find_child(folder, MASK_FOLDERS)
    if len(img_dirs) != 1:
        raise UserError(f"{folder}: expected one image folder (regions/ or images/), found "
                        f"{', '.join(img_dirs) or 'none'}")
    if len(mask_dirs) > 1:
        raise UserError(f"{folder}: several mask folders ({', '.join(mask_dirs)}); keep one")
    if training and not mask_dirs:
        raise UserError(f"{folder}: no mask folder (masks/ or labels/) beside {img_dirs[0]}/")
    img_dir = os.path.join(folder, img_dirs[0])
    images: Dict[str, str] = {}
    for f in common.list_dir(img_dir):
        if not common.has_suffix(f, IMAGE_SUFFIXES):
            continue
        k = _key(f, IMAGE_SUFFIXES)
        if k in images:
            raise UserError(f"{img_dir}: two images for case {k} ({os.path.basename(images[k])}, {f})")
        images[k] = os.path.join(img_dir, f)
    if not images:
        raise UserError(f"{img_dir}: folder is empty (no .jpeg/.png/.tif images)")
    masks: Dict[str, str] = {}
    if mask_dirs:
        mask_dir = os.path.join(folder, mask_dirs[0])
        for f in common.list_dir(mask_dir):
            if f.lower().endswith((".jpg", ".jpeg")):
                raise UserError(f"{os.path.join(mask_dir, f)}: JPEG masks are lossy and change class values; "
                                "use PNG or TIFF masks")
            if not common.has_suffix(f, MASK_SUFFIXES):
                continue
            k = _key(f, MASK_SUFFIXES)
            if k in masks:
                raise UserError(f"{mask_dir}: two masks for case {k} ({os.path.basename(masks[k])}, {f})")
            masks[k] = os.path.join(mask_dir, f)
        for k, m in masks.items():
            if k not in images:
                raise UserError(f"{m}: mask without an image in {os.path.relpath(img_dir, src)}/")
    out = []
    for k in sorted(images):
        if training and k not in masks:
            raise UserError(f"{images[k]}: image has no mask in {os.path.relpath(os.path.join(folder, mask_dirs[0]), src)}/")
        name = common.strip_suffix(os.path.basename(images[k]), IMAGE_SUFFIXES)
        out.append((name, images[k], masks.get(k)))
    return out


def find_cases(src: str) -> Tuple[List[Case], List[str]]:
    src = common.check_source_folder(src)
    train_dirs = common.find_child(src, r"train(ing)?(_?set|_?data)?")
    test_dirs = common.find_child(src, r"test(ing)?(_?set|_?data)?")
    if len(train_dirs) > 1 or len(test_dirs) > 1:
        raise UserError(f"{src}: several train or test folders ({', '.join(train_dirs + test_dirs)}); keep one of each")
    groups = [(os.path.join(src, train_dirs[0]) if train_dirs else src, True)]
    if test_dirs:
        groups.append((os.path.join(src, test_dirs[0]), False))
    cases: List[Case] = []
    lines = []
    for folder, training in groups:
        pairs = _pair_folder(folder, src, training)
        ids = common.disambiguate([(n, "train" if training else "test") for n, _, _ in pairs])
        for case_id, (name, img, mask) in zip(ids, pairs):
            cases.append(Case(case_id, [img], mask, os.path.relpath(img, src), training))
        lines.append(f"{os.path.relpath(folder, src) if folder != src else '.'}: {len(pairs)} "
                     f"{'training' if training else 'test'} tiles")
    return cases, lines


def channel_count(cases: Sequence[Case]) -> int:
    """1 (gray) or 3 (RGB), read from the file headers; mixed datasets are refused."""
    from PIL import Image, UnidentifiedImageError

    counts: Dict[int, str] = {}
    for c in cases:
        common.check_readable(c.images[0])
        try:
            with Image.open(c.images[0]) as im:
                n = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise UserError(f"{c.images[0]}: not a readable image ({e})") from None
        counts.setdefault(n, c.images[0])
    if len(counts) > 1:
        raise UserError(f"{counts[3]}: RGB image while {counts[1]} is grayscale; all tiles need the same channels")
    return next(iter(counts))


# ---------------------------------------------------------------- converting one case
def convert_case(case: Case, out_dir: str, classes: Sequence[str], mask_map, rgb: bool) -> CaseResult:
    pixels = read_pixels(case.images[0])
    if rgb != (pixels.ndim == 3):
        raise UserError(f"{case.images[0]}: {'grayscale' if rgb else 'RGB'} image in a dataset of "
                        f"{'RGB' if rgb else 'grayscale'} tiles")
    sub = "imagesTr" if case.training else "imagesTs"
    common.write_png(png_pixels(pixels, case.images[0]), os.path.join(out_dir, sub, f"{case.case_id}_0000.png"))
    counts = None
    if case.label:
        mask = decode_mask(read_pixels(case.label, "mask"), case.label, classes, mask_map)
        if mask.shape != pixels.shape[:2]:
            raise UserError(f"{case.label}: mask size {mask.shape[::-1]} differs from image size "
                            f"{pixels.shape[1::-1]} of {os.path.basename(case.images[0])}")
        common.write_png(mask, os.path.join(out_dir, "labelsTr" if case.training else "labelsTs",
                                            case.case_id + ".png"))
        counts = np.bincount(mask.ravel(), minlength=len(classes))
    return CaseResult(case.case_id, case.training, counts)


def parse_classes(text: Optional[str]) -> Tuple[str, ...]:
    if not text:
        return DEFAULT_CLASSES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--classes {text!r}: need at least two distinct names, background first")
    return names


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert 2D podocyte tiles (H-AI-L regions/ + masks/, or images/ + masks/, optionally "
                          "under train/ and test/) into $nnUNet_raw/DatasetXXX_Name.")
    parser.add_argument("--classes", default=None,
                        help="class names in index order (default: " + ",".join(DEFAULT_CLASSES) + ")")
    parser.add_argument("--mask-map", default=None, metavar="VALUE=CLASS,...",
                        help="how mask pixels map to classes: gray values (85=glomeruli) or colours "
                             "(#ff0000=1, 255-0-0=glomeruli), or a JSON file {value: class}; default: masks "
                             "hold class indices")
    common.add_common_arguments(parser, DEFAULT_ID, DEFAULT_NAME)


def run(args: argparse.Namespace) -> int:
    classes = parse_classes(args.classes)
    mask_map = parse_mask_map(args.mask_map, classes)
    split = common.split_option(args)
    raw = common.raw_root()
    cases, found = find_cases(args.src)
    rgb = channel_count(cases) == 3
    target = common.check_dataset_id(args.dataset_id, args.name or DEFAULT_NAME, raw, args.overwrite)
    print(f"Found in {os.path.abspath(args.src)}:")
    for line in found:
        print(f"  {line}")
    labels = {name: i for i, name in enumerate(classes)}
    extra = {"reference": "Lutnick et al., Nature Machine Intelligence 1(2):112-119, 2019",
             "source_cases": common.source_map(cases)}
    if mask_map:
        extra["mask_map"] = {("#%02x%02x%02x" % k if isinstance(k, tuple) else str(k)): v for k, v in mask_map.items()}
    common.convert_dataset(
        target, cases, partial(convert_case, classes=classes, mask_map=mask_map, rgb=rgb), jobs=args.jobs,
        desc="Podocyte", channel_names={0: "R", 1: "G", 2: "B"} if rgb else {0: "gray"}, labels=labels,
        file_ending=".png", json_extra=extra, progress=False if args.no_progress else None,
        with_test_labels=any(c.label and not c.training for c in cases), split=split)
    return 0


if __name__ == "__main__":
    from nnunet_mcc.dataset_conversion.cli import script_main

    sys.exit(script_main("podocyte"))
