"""The study runner's own bookkeeping (``benchmarks/study.py``); the studies themselves are benchmarks."""

import os
import sys

import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import study  # noqa: E402


def test_the_cost_of_the_runs_comes_from_their_records_not_from_the_invocation():
    runs = pd.DataFrame({"trainer": ["A", "A", "B", "C"], "cost_wall_seconds": [100.0, 60.0, None, 7.0]})
    assert study.run_costs(runs, ["A", "B"]) == {"runs_costed": 2, "runs_wall_seconds": 160.0}
    assert study.run_costs(runs.drop(columns="cost_wall_seconds"), ["A"]) == {"runs_costed": 0,
                                                                             "runs_wall_seconds": 0.0}
    row = {"trainer": "A", "runs": 2, "runs_that_lost_a_class": 1, "lost": "x 1", "runs_with_flood": 0,
           "lost_in_training": 1, "lost_by_mirroring": 0, "runs_with_a_failed_class": 1, "Dice x": 0.5,
           "Dice x seed sd": 0.1, "converged": 2}
    settings = {"budget": {"epochs": 50, "iterations": 20}, "dataset": "rare", "dataset_name": "D", "seeds": [0],
                "folds": [0, 1], "command": "python benchmarks/study.py", "wall_seconds": 19.4, "cpu_seconds": 17.0,
                "jobs": 2, **study.run_costs(runs, ["A"])}
    text = study.markdown([row], ["x"], settings)
    assert "| A | 1/2 | x 1 | 0 | 1 / 0 | 1/2 | 0.500 ± 0.100 | 2/2 |" in text
    assert "this invocation 19 s wall, 17 CPU-s" in text
    assert "the 2 runs' own training processes, from their cost records: 160 s wall in all, 80 s a run, 2 at a " \
           "time" in text
