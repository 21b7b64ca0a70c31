"""The gradient probe's analysis for ``benchmarks/ablation.py``: per class and epoch, the medians of what the probe
measured, the saturation slopes, the tables and the figure."""

import os
from typing import Callable, Dict, Optional, Sequence

import numpy as np


def gradient_summary(variants: Sequence[str], folds: Sequence[int], run_folder: Callable[[str, int], str]) -> dict:
    """Per variant, fold, class and epoch: the median over the probed iterations of every probe measure
    (``run_folder(variant, fold)``: where a run's ``gradient_probe.json`` is)."""
    from nnunet_mcc.fileio import read_json

    out = {}
    for variant in variants:
        for fold in folds:
            path = os.path.join(run_folder(variant, fold), "gradient_probe.json")
            if not os.path.isfile(path):
                continue
            per_class: Dict[str, Dict[int, Dict[str, list]]] = {}
            for record in read_json(path, "gradient probe")["records"]:
                for c, entry in record["classes"].items():
                    slot = per_class.setdefault(c, {}).setdefault(record["epoch"], {})
                    for key, value in entry.items():
                        if value is not None:
                            slot.setdefault(key, []).append(value)
            out.setdefault(variant, {})[str(fold)] = {
                c: {str(e): {k: float(np.median(v)) for k, v in measures.items()}
                    for e, measures in sorted(epochs.items())}
                for c, epochs in per_class.items()}
    return out


def saturation_slopes(summary: dict, below: float = 1e-3) -> Dict[str, dict]:
    """Per variant: least-squares slopes of log10 |dL/dp| and log10 |dL/dz| (the class's own voxels) against
    log10 of the class's mean probability there, over the epochs in which that probability was below
    ``below`` (a class the network had stopped predicting). The soft MCC predicts -1/2 and +1/2."""
    out = {}
    for variant, folds in summary.items():
        points = [(m["mean_p_own"], m["dL_dp_own"], m["dz_loss_own"])
                  for classes in folds.values() for epochs in classes.values() for m in epochs.values()
                  if m.get("mean_p_own", 1) < below and m.get("dz_loss_own", 0) > 0 and m.get("dL_dp_own", 0) > 0]
        if len(points) < 5:
            continue
        x, dp, dz = (np.log10(np.array(v)) for v in zip(*points))
        out[variant] = {"points": len(points), "mean_p_own_range": [float(10 ** x.min()), float(10 ** x.max())],
                        "slope_dL_dp": float(np.polyfit(x, dp, 1)[0]), "slope_dL_dz": float(np.polyfit(x, dz, 1)[0])}
    return out


def gradient_markdown(summary: dict, epochs: Sequence[int] = (0, 1, 2, 5, 10, 20, 40, 59)) -> str:
    """One table per run and class: the probe's medians at a few epochs. dL/dz is the gradient of the run's
    own loss with respect to the logits; d(1-MCC)/dp that of the soft MCC with respect to the probabilities
    (the run's loss for the MCC variants, a reference measured on the others' predictions)."""
    lines = []
    for variant, folds in summary.items():
        for fold, classes in folds.items():
            for c, per_epoch in classes.items():
                lines += [f"### {variant}, fold {fold}, class {c}", "",
                          "| epoch | predicted voxels | mean p (own) | d(1-MCC)/dp (own) | dL/dz (own) | "
                          "dL/dz (rest) |",
                          "|---|---|---|---|---|---|"]
                for e in epochs:
                    m = per_epoch.get(str(e))
                    if m is None:
                        continue
                    lines.append(f"| {e} | {m['predicted_voxels']:.0f} | {m.get('mean_p_own', float('nan')):.1e} | "
                                 f"{m['dL_dp_own']:.1e} | {m['dz_loss_own']:.1e} | {m['dz_loss_rest']:.1e} |")
                lines.append("")
    return "\n".join(lines)


def gradient_plot(summary: dict, path: str, fold: str, c: str, variants: Sequence[str]) -> Optional[str]:
    """Class ``c``'s mean probability on its own voxels and dL/dz there, per epoch, for one fold (log scale)."""
    import matplotlib

    matplotlib.use("agg")
    import io

    import matplotlib.pyplot as plt

    from nnunet_mcc.fileio import write_bytes

    shown = [v for v in variants if fold in summary.get(v, {}) and c in summary[v][fold]]
    if not shown:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
    for variant in shown:
        per_epoch = summary[variant][fold][c]
        epochs = sorted(int(e) for e in per_epoch)
        for ax, key in zip(axes, ("mean_p_own", "dz_loss_own")):
            ax.semilogy(epochs, [per_epoch[str(e)][key] for e in epochs], label=variant)
    axes[0].set_title(f"class {c}: mean probability on its voxels", fontsize=9)
    axes[1].set_title(f"class {c}: |dL/dz| on its voxels", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency: a 32-colour palette makes the file 4x smaller

    small = io.BytesIO()
    Image.open(buffer).convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=32).save(small, "PNG", optimize=True)
    write_bytes(path, small.getvalue(), "gradient plot")
    return path
