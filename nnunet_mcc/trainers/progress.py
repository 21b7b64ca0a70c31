"""The training log's additions: the validation MCC series in nnU-Net's logger, drawn as a fourth panel of
progress.png (and panels of subclasses, e.g. SegAN's critic losses), and logged values as JSON."""

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.logging.nnunet_logger import LocalLogger


def jsonable(value):
    """Logged values as JSON: numpy scalars to floats, NaN and infinity to null."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    value = float(value)
    return value if np.isfinite(value) else None


class MCCLocalLogger(LocalLogger):
    """nnU-Net's local logger with MCC series and a fourth progress.png panel showing them."""

    EXTRA_KEYS = ("mean_fg_mcc", "mcc_per_class_or_region")

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for key in self.EXTRA_KEYS:
            self.my_fantastic_logging[key] = []
        self.skip_next_plot = False

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        epochs = len(self.my_fantastic_logging.get("mean_fg_dice", []))
        for key in self.EXTRA_KEYS:  # a checkpoint of another trainer has no MCC series: pad with NaN
            self.my_fantastic_logging.setdefault(key, [float("nan")] * epochs)

    def plot_progress_png(self, output_folder):
        """nnU-Net's three panels, then an MCC panel of the same width appended below them."""
        if self.skip_next_plot:
            return
        super().plot_progress_png(output_folder)

        def draw(ax, x, series):
            ax.plot(x, series["mean_fg_mcc"], color="purple", label="pseudo MCC (mean fg)", linewidth=4)
            per_class = np.array(series["mcc_per_class_or_region"], dtype=float)
            if per_class.ndim == 2 and per_class.shape[1] > 1:
                for c in range(per_class.shape[1]):
                    ax.plot(x, per_class[:, c], ls="--", linewidth=2, label=f"MCC class/region {c + 1}")
            ax.set_ylabel("pseudo MCC")

        self.append_panel(output_folder, draw)

    def append_panel(self, output_folder: str, draw, height: float = 14) -> None:
        """Append a panel below the existing progress.png, as wide as nnU-Net's figure.
        ``draw(ax, epochs, series)`` plots the logged series (each cut to the complete epochs).

        The images stay 8-bit RGBA throughout and the PNG is written with light compression: nnU-Net's figure is
        3000 x 5400 pixels, and converting it to floats and back cost about 5 s per drawing on a CPU core."""
        import io

        import matplotlib.pyplot as plt
        from PIL import Image

        from nnunet_mcc.fileio import write_bytes

        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        if epochs == 0:
            return
        path = join(output_folder, "progress.png")
        with Image.open(path) as image:
            top = np.asarray(image.convert("RGBA"))
        fig, ax = plt.subplots(1, 1, figsize=(top.shape[1] / 100, height), dpi=100)
        draw(ax, list(range(epochs)), {k: v[:epochs] for k, v in self.my_fantastic_logging.items()})
        ax.set_xlabel("epoch")
        ax.legend(loc=(0, 1), ncol=4)
        fig.tight_layout()
        fig.canvas.draw()
        bottom = np.asarray(fig.canvas.buffer_rgba())
        plt.close(fig)
        width = min(top.shape[1], bottom.shape[1])
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([top[:, :width], bottom[:, :width]], 0)).save(buffer, format="PNG",
                                                                                      compress_level=1)
        write_bytes(path, buffer.getvalue(), "progress.png")
