"""progress.png: nnU-Net's three panels, then the panels this package appends (the MCC; SegAN's critic)."""

import numpy as np
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from PIL import Image

from nnunet_mcc.trainers.progress import MCCLocalLogger

EPOCHS = 4


def _fill(logger, extra=True):
    rng = np.random.default_rng(0)
    log = logger.my_fantastic_logging
    for e in range(EPOCHS):
        log["mean_fg_dice"].append(0.5 + 0.1 * e)
        log["ema_fg_dice"].append(0.4 + 0.1 * e)
        log["dice_per_class_or_region"].append([0.5 + 0.1 * e, 0.4 + 0.1 * e])
        log["train_losses"].append(1.0 - 0.1 * e)
        log["val_losses"].append(1.1 - 0.1 * e)
        log["lrs"].append(0.01 * (1 - e / EPOCHS))
        log["epoch_start_timestamps"].append(float(e))
        log["epoch_end_timestamps"].append(e + 0.5 + 0.1 * rng.random())
        if extra:
            log["mean_fg_mcc"].append(0.45 + 0.1 * e)
            log["mcc_per_class_or_region"].append([0.5 + 0.1 * e, 0.3 + 0.1 * e])


def _pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def test_the_mcc_panel_is_appended_below_nnunets_figure_which_stays_as_drawn(tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "stock").mkdir()
    ours, stock = MCCLocalLogger(), LocalLogger()
    _fill(ours)
    _fill(stock, extra=False)
    ours.plot_progress_png(str(tmp_path / "ours"))
    stock.plot_progress_png(str(tmp_path / "stock"))
    picture, reference = _pixels(tmp_path / "ours" / "progress.png"), _pixels(tmp_path / "stock" / "progress.png")
    height, width = reference.shape[:2]
    assert picture.shape == (height + 1400, width, 4)  # the panel: 14 inches at 100 dpi, as wide as nnU-Net's
    assert np.array_equal(picture[:height], reference)  # nnU-Net's panels, pixel for pixel
    panel = picture[height:, :, :3].astype(int)
    purple = (np.abs(panel - np.array([128, 0, 128])).sum(-1) < 60).sum()  # the mean MCC's line
    assert purple > 1000
    assert not list(tmp_path.joinpath("ours").glob("*.partial"))  # written atomically, nothing left over
