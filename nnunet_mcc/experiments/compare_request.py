"""What one ``nnunet-mcc compare`` is asked to do: a frozen ``CompareRequest`` built once (by the command line's
``from_args``, by ``demo``, or by ``compare.compare``'s keywords), its arguments checked once when it is made (one
``UserError`` naming the flag), then passed whole to ``compare.execute``."""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import ensemble as ensemble_module
from nnunet_mcc.metrics import DEFAULT_CALIBRATION_BINS, DEFAULT_NSD_TOLERANCE_MM

DEFAULT_PICTURES = 2  # cases drawn per class/region where the trainers disagree most
DEFAULT_FOLDS = (0, 1, 2, 3, 4)
DEFAULT_BOOTSTRAP = 1000


@dataclass(frozen=True)
class CompareRequest:
    """The trainers compared on one dataset, configuration and plans, and how.

    ``auto_budget``: the record of ``crossval --auto-budget`` ("" for its default place): each trainer is compared at
    the budget at which its runs converged, or with ``same_budget`` every trainer at the largest one. ``boundary``:
    also HD95 and NSD (tolerance ``nsd_tolerance`` mm) from the exported validation predictions. ``calibration``: also
    ECE (``calibration_bins`` equal-mass bins) and Brier from the saved probabilities (--npz), and a reliability
    diagram per trainer (with ``plots``). ``pictures``: with ``plots``, that many cases per class/region where the
    trainers disagree most are drawn (0: none). ``ensemble``: ``--ensemble`` values (``A+B``, ``all``), each ensemble
    compared as one more trainer after them (``ensemble``; built with ``ensemble_processes`` worker processes, 0: in
    this process). ``baseline`` defaults to the first trainer; ``output`` to the dataset's results folder."""
    dataset: str
    configuration: str
    trainers: Tuple[str, ...]
    plans: str = "nnUNetPlans"
    folds: Tuple[int, ...] = DEFAULT_FOLDS
    baseline: Optional[str] = None
    output: Optional[str] = None
    bootstrap: int = DEFAULT_BOOTSTRAP
    plots: bool = True
    snapshots: bool = True
    allow_mixed_budgets: bool = False
    allow_mixed_seeds: bool = False
    allow_mixed_settings: bool = False
    auto_budget: Optional[str] = None
    same_budget: bool = False
    boundary: bool = True
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM
    calibration: bool = True
    calibration_bins: int = DEFAULT_CALIBRATION_BINS
    pictures: int = DEFAULT_PICTURES
    ensemble: Tuple[str, ...] = ()
    ensemble_processes: int = ensemble_module.DEFAULT_PROCESSES

    def __post_init__(self):
        """Normalised (tuples, the default baseline, the tolerance as a float) and checked, each problem one
        ``UserError`` naming its flag."""
        trainers = tuple(self.trainers)
        if not trainers:
            raise UserError("-tr: give at least one trainer to compare")
        _set(self, trainers=trainers, folds=tuple(self.folds), ensemble=tuple(self.ensemble or ()))
        for name, value, least in (("--calibration-bins", self.calibration_bins, 1), ("--pictures", self.pictures, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise UserError(f"{name} must be a whole number of at least {least}, got {value!r}")
        try:
            tolerance = float(self.nsd_tolerance)
        except (TypeError, ValueError):
            raise UserError(f"--nsd-tolerance must be a number of mm, got {self.nsd_tolerance!r}") from None
        if not (np.isfinite(tolerance) and tolerance > 0):
            raise UserError(f"--nsd-tolerance must be a positive number of mm, got {tolerance:g}")
        _set(self, nsd_tolerance=tolerance, baseline=self.baseline or trainers[0])
        if self.baseline not in trainers:
            raise UserError(f"--baseline {self.baseline!r} is not one of the compared trainers ({' '.join(trainers)})")
        if self.bootstrap < 1:
            raise UserError(f"--bootstrap must be a positive number of samples, got {self.bootstrap}")
        if len(set(trainers)) != len(trainers):
            raise UserError(f"-tr lists a trainer twice: {' '.join(trainers)}")
        ensemble_module.parse(self.ensemble, trainers)
        if self.auto_budget is None and self.same_budget:
            raise UserError("--same-budget chooses among the budgets crossval --auto-budget tried: add --auto-budget")
        ensemble_module.check_processes(self.ensemble_processes)

    @classmethod
    def from_args(cls, args) -> "CompareRequest":
        """The request of the command line's arguments (``compare.add_arguments``)."""
        return cls(args.dataset, args.configuration, args.trainers, plans=args.plans, folds=args.folds,
                   baseline=args.baseline, output=args.output, bootstrap=args.bootstrap, plots=not args.no_plots,
                   snapshots=not args.no_snapshots, allow_mixed_budgets=args.allow_mixed_budgets,
                   allow_mixed_seeds=args.allow_mixed_seeds, allow_mixed_settings=args.allow_mixed_settings,
                   auto_budget=args.auto_budget, same_budget=args.same_budget, boundary=not args.no_boundary,
                   nsd_tolerance=args.nsd_tolerance, calibration=not args.no_calibration,
                   calibration_bins=args.calibration_bins, pictures=args.pictures, ensemble=args.ensemble,
                   ensemble_processes=args.ensemble_processes)

    @property
    def pictures_drawn(self) -> int:
        """Cases per class/region drawn: ``pictures`` with plots, else none."""
        return self.pictures if self.plots else 0

    def default_output(self, results_root: str, dataset_name: str) -> str:
        """The report folder when ``output`` is not given: beside the dataset's results."""
        return os.path.join(results_root, dataset_name, f"nnunet_mcc_comparison_{self.plans}_{self.configuration}")


def _set(request: CompareRequest, **values) -> None:
    for name, value in values.items():
        object.__setattr__(request, name, value)
