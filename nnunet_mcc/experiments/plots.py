"""The comparison's plots (seaborn/matplotlib): per-case score distributions and learning curves, written
through ``nnunet_mcc.fileio``."""

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


def _save(fig, path: str) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
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

