"""HD95 and NSD (``nnunet_mcc.metrics``) on tiny masks whose answers are worked out by hand.

Boundary voxels are the voxels of a mask with a face neighbour outside it; distances are between voxel
centres, in mm (index differences times the spacing).
"""

import math

import numpy as np
import pytest

pytest.importorskip("monai")

from nnunet_mcc import metrics  # noqa: E402


def square(shift: int = 0, axis: int = 1, size: int = 20) -> np.ndarray:
    """A 10 x 10 square in a size x size image, moved ``shift`` voxels along spatial ``axis``; shape (1, H, W)."""
    mask = np.zeros((1, size, size), dtype=bool)
    mask[0, 5:15, 5:15] = True
    return np.roll(mask, shift, axis=axis + 1)


def ball(radius: float, side: int = 15) -> np.ndarray:
    grid = np.indices((side,) * 3) - side // 2
    return (np.sum(grid ** 2, axis=0) <= radius ** 2)[None]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_a_square_shifted_by_k_voxels_is_k_times_the_spacing(k):
    # the far edge of the moved square lies k voxels from the reference's edge, and those 10 of its 36 boundary
    # voxels are more than 5 % of them: both directed 95th percentiles are k
    assert metrics.hd95(square(k), square(), (1.0, 1.0)) == pytest.approx([k])
    assert metrics.hd95(square(k), square(), (1.0, 0.7)) == pytest.approx([0.7 * k])  # moved along the 0.7 mm axis
    assert metrics.hd95(square(k, axis=0), square(), (2.5, 0.7)) == pytest.approx([2.5 * k])


def test_nsd_of_a_square_shifted_by_one_voxel_by_hand():
    # moved 1 voxel: of the 36 boundary voxels of each square, 18 lie on the other's boundary (distance 0: the
    # two rows along the shift) and 18 at distance 1 (the two columns across it)
    moved, reference = square(1), square()
    assert metrics.nsd(moved, reference, (1.0, 1.0), tolerance_mm=0.5) == pytest.approx([18 * 2 / 72])
    assert metrics.nsd(moved, reference, (1.0, 1.0), tolerance_mm=1.0) == pytest.approx([1.0])  # within: <=
    # along a 3 mm axis the inner column lies 3 mm from the other's side, but its voxels next to the rows lie 1 mm
    # (one 1 mm step) from the other's row: 18 + 2 within 1 mm on each side; all within 3 mm
    assert metrics.nsd(moved, reference, (1.0, 3.0), tolerance_mm=1.0) == pytest.approx([40 / 72])
    assert metrics.nsd(moved, reference, (1.0, 3.0), tolerance_mm=3.0) == pytest.approx([1.0])


def test_a_ball_against_itself_and_a_box_shifted_in_anisotropic_3d():
    sphere = ball(5)
    assert metrics.hd95(sphere, sphere, (1.0, 1.0, 1.0)) == pytest.approx([0.0])
    assert metrics.nsd(sphere, sphere, (1.0, 1.0, 1.0)) == pytest.approx([1.0])
    box = np.zeros((1, 12, 12, 12), dtype=bool)
    box[0, 2:8, 3:9, 3:9] = True
    moved = np.roll(box, 2, axis=1)  # 2 slices along the first axis, 3 mm apart: the far face (36 of the 152
    assert metrics.hd95(moved, box, (3.0, 0.5, 0.5)) == pytest.approx([6.0])  # boundary voxels) lies 6 mm away


def test_empty_cases_and_several_classes_at_once():
    empty = np.zeros_like(square())
    diagonal = math.hypot(19.0, 19.0 * 0.5)  # the image diagonal in mm, between the outermost voxel centres
    prediction = np.concatenate([empty, square(), empty, square(2)])
    reference = np.concatenate([square(), empty, empty, square()])
    hd = metrics.hd95(prediction, reference, (1.0, 0.5))
    assert hd[0] == pytest.approx(diagonal)       # empty prediction, present reference: worst case
    assert hd[1] == pytest.approx(diagonal)       # empty reference, present prediction: worst case
    assert math.isnan(hd[2])                      # neither: undefined, left out of means
    assert hd[3] == pytest.approx(1.0)            # 2 voxels along the 0.5 mm axis
    surface = metrics.nsd(prediction, reference, (1.0, 0.5), tolerance_mm=1.0)
    assert surface[:2] == pytest.approx([0.0, 0.0]) and math.isnan(surface[2]) and surface[3] == pytest.approx(1.0)
    both = metrics.boundary_scores(prediction, reference, (1.0, 0.5), 1.0)
    assert set(both) == {"HD95", "NSD"} and both["HD95"] == pytest.approx(hd, nan_ok=True)


def test_a_2d_image_read_as_one_slice_drops_the_singleton_axis():
    # nnU-Net reads a 2D image as (1, H, W) with spacing 999 along the first axis
    as_slice = square(2)[:, None], square()[:, None]
    assert metrics.hd95(*as_slice, (999.0, 1.0, 1.0)) == pytest.approx([2.0])
    assert metrics.nsd(*as_slice, (999.0, 1.0, 1.0), 2.0) == pytest.approx([1.0])


def test_direction_units_and_bad_input():
    assert metrics.higher_is_better("Dice") and metrics.higher_is_better("NSD")
    assert not metrics.higher_is_better("HD95")
    assert metrics.metric_heading("HD95") == "HD95 (mm, lower is better)" and metrics.metric_heading("MCC") == "MCC"
    with pytest.raises(ValueError, match="tolerance"):
        metrics.nsd(square(), square(), (1.0, 1.0), tolerance_mm=0)
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(square(), square(), (1.0,))
