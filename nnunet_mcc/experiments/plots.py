"""The comparison's plots (seaborn/matplotlib): per-case score distributions, learning curves, reliability
diagrams and pictures of the cases where the trainers disagree, written through ``nnunet_mcc.fileio``."""

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from nnunet_mcc.fileio import write_bytes
from nnunet_mcc.metrics import metric_heading


def _pyplot():
    import matplotlib

    matplotlib.use("agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, **savefig) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, **savefig)
    write_bytes(path, buffer.getvalue(), "plot")


def plot_distributions(path: str, scores: pd.DataFrame, trainers: Sequence[str], classes: Sequence[str],
                       metric: str) -> None:
    """One panel per class/region (stacked), one box per trainer with the cases as dots (seaborn)."""
    import seaborn as sns

    plt = _pyplot()
    present = [c for c in classes if c in set(scores["class_or_region"])]
    fig, axes = plt.subplots(len(present), 1, figsize=(max(5.0, 0.9 * len(trainers) + 2), 3.2 * len(present)),
                             squeeze=False)
    random_state = np.random.get_state()  # seaborn jitters with numpy's global generator: same plot every time
    np.random.seed(0)
    for ax, c in zip(axes[:, 0], present):
        sub = scores[(scores["class_or_region"] == c) & scores["value"].notna()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seaborn passes matplotlib's deprecated boxplot arguments
            sns.boxplot(data=sub, x="trainer", y="value", order=list(trainers), ax=ax, showfliers=False,
                        color="0.85")
            sns.stripplot(data=sub, x="trainer", y="value", order=list(trainers), ax=ax, color="black", size=3,
                          alpha=0.6, jitter=0.15)
        ax.set_title(c)
        ax.set_xlabel("")
        ax.set_ylabel(f"{metric_heading(metric)} per case")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    np.random.set_state(random_state)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_learning_curves(path: str, curves: pd.DataFrame, trainers: Sequence[str]) -> None:
    """Per-epoch validation pseudo Dice and pseudo MCC against training iterations (epochs x iterations per
    epoch, so trainers with different epoch lengths line up): each fold thin, the mean over folds thick."""
    plt = _pyplot()
    x = "iterations" if curves["iterations"].notna().all() else "epoch"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (series, label), ax in zip((("mean_fg_dice", "pseudo Dice (mean fg)"),
                                    ("mean_fg_mcc", "pseudo MCC (mean fg)")), axes):
        sub = curves[(curves["series"] == series) & curves["value"].notna()]
        for i, trainer in enumerate(trainers):
            own = sub[sub["trainer"] == trainer]
            if own.empty:
                continue
            color = f"C{i % 10}"
            for _, fold in own.groupby(["run", "fold"] if "run" in own else ["fold"]):
                ax.plot(fold[x], fold["value"], color=color, alpha=0.25, linewidth=1)
            mean = own.groupby(x)["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.5, label=trainer, marker="o", markersize=3)
        ax.set_xlabel("training iterations" if x == "iterations" else "epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# Okabe & Ito's palette for colour-blind readers (the yellow last: it fades on light grey), each with its own line
# style and width so that the lines stay apart in greyscale too.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442")
LINE_STYLES = ((0, (6, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1.5)), (0, (10, 2, 1, 2, 1, 2)),
               (0, (1, 3)), (0, (8, 4)))
LINE_WIDTHS = (2.0, 2.6, 1.8, 2.4, 1.6, 2.8, 2.2)


def line_look(i: int) -> dict:
    """Colour, line style and width of the i-th line (trainer or class): distinct in colour, for colour-blind
    readers and in greyscale (style and width repeat only after 7 lines, the colours after 7 too)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
            "linewidth": LINE_WIDTHS[i % len(LINE_WIDTHS)]}


def plot_reliability(path: str, curve: pd.DataFrame, trainer: str, classes: Sequence[str], bins) -> None:
    """One trainer's reliability diagram: per class/region (one line each), the observed frequency against the mean
    predicted probability of each equal-mass bin pooled over its cases (``compare.reliability_table``), the diagonal
    of a calibrated prediction for reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ax.plot([0, 1], [0, 1], color="0.5", linewidth=1, linestyle="-", label="calibrated (diagonal)")
    present = [c for c in classes if c in set(curve["class_or_region"])]
    for i, c in enumerate(present):
        own = curve[curve["class_or_region"] == c].sort_values("mean_probability")
        ax.plot(own["mean_probability"], own["frequency"], marker="os^Dvx*"[i % 7], markersize=4,
                label=f"{c} ({int(own['cases'].max())} cases)", **line_look(i))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("mean predicted probability of the class (per bin)")
    ax.set_ylabel("observed frequency (reference is the class)")
    ax.set_title(f"{trainer}: reliability, {bins} equal-mass bins", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _contour(ax, mask: np.ndarray, **style) -> None:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2 and min(mask.shape) >= 2 and mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], **style)


def _crop(masks: Sequence[np.ndarray]) -> tuple:
    """The window drawn: the bounding box of every mask, widened by half its size (at least 8 voxels) on each side
    and kept inside the slice; the whole slice when every mask is empty."""
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    if not union.any():
        return slice(None), slice(None)
    window = []
    for axis in (0, 1):
        used = np.flatnonzero(union.any(axis=1 - axis))
        low, high = int(used[0]), int(used[-1]) + 1
        pad = max(8, (high - low) // 2)
        window.append(slice(max(0, low - pad), min(union.shape[axis], high + pad)))
    return tuple(window)


def plot_disagreement(path: str, picture: dict, trainers: Sequence[str]) -> None:
    """One class on one slice of one case (``compare.disagreement_pictures``), cropped around the masks (``_crop``):
    the image in grey (or, without it, the reference mask in light grey), the reference contour as a thick solid
    line (white edged in black over the image, black without it) and each trainer's contour in its colour, line
    style and width (``line_look``), with a legend of the trainers and their Dice on the case."""
    import matplotlib.patheffects as path_effects
    from matplotlib.lines import Line2D

    plt = _pyplot()
    window = _crop([picture["reference"], *picture["masks"].values()])
    reference = np.asarray(picture["reference"], dtype=bool)[window]
    height, width = reference.shape
    aspect = float(picture.get("aspect") or 1.0)
    size = 5.0 / max(height * aspect, width)
    fig, ax = plt.subplots(figsize=(max(3.0, width * size) + 3.2, max(3.0, height * aspect * size) + 0.8))
    image = picture.get("image")
    if image is not None:
        image = np.asarray(image, dtype=np.float64)[window]
        low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest",
                  aspect=aspect)
        reference_style = {"colors": "white", "linewidths": 3.2, "linestyles": "solid", "zorder": 2}
        outline = [path_effects.Stroke(linewidth=4.6, foreground="black"), path_effects.Normal()]
    else:
        ax.imshow(np.where(reference, 0.82, 1.0), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  aspect=aspect)
        reference_style = {"colors": "black", "linewidths": 3.2, "linestyles": "solid", "zorder": 2}
        outline = None
    handles = [Line2D([], [], color=reference_style["colors"], linewidth=3.2, linestyle="-",
                      path_effects=outline, label="reference")]
    for i, trainer in enumerate(trainers):
        look = line_look(i)
        dice = picture["dice"].get(trainer, float("nan"))
        shown = "n/a (class in neither mask)" if dice is None or not np.isfinite(dice) else f"{dice:.3f}"
        mask = picture["masks"].get(trainer)
        mask = None if mask is None else np.asarray(mask, dtype=bool)[window]
        if mask is None:
            shown += ", no exported prediction"
        else:
            _contour(ax, mask, colors=look["color"], linestyles=[look["linestyle"]], linewidths=look["linewidth"],
                     zorder=3)  # over the reference, so a trainer on the reference stays visible
        handles.append(Line2D([], [], label=f"{trainer} (Dice {shown})", **look))
    contour = ax.contour(reference.astype(np.float32), levels=[0.5], **reference_style) \
        if min(reference.shape) >= 2 and reference.any() else None
    if contour is not None and outline is not None:  # a ContourSet is one artist from matplotlib 3.8 on
        for artist in ([contour] if hasattr(contour, "set_path_effects") else contour.collections):
            artist.set_path_effects(outline)
    where = f"slice index {picture['slice']} of {picture['slices']} (first axis)" if picture["slices"] > 1 else \
        "2D image"
    ax.set_title(f"{picture['class_or_region']}, {picture['case']}: {where}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              handlelength=3.5)
    if picture.get("image_missing"):
        import textwrap

        caption = textwrap.fill(f"{picture['image_missing']}: drawn on the reference alone",
                                width=int(fig.get_figwidth() * 15))
        fig.text(0.01, 0.01, caption, fontsize=7, va="bottom")
        fig.tight_layout(rect=(0, 0.03 * (caption.count("\n") + 1), 1, 1))
    else:
        fig.tight_layout()
    _save(fig, path, bbox_inches="tight", pad_inches=0.1)  # the legend beside the image stays whole
    plt.close(fig)
