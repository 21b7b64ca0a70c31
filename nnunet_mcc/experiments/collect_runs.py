"""One record per run a comparison reads (one fold of one seed): its budget, seed, loss settings, training log and
the convergence verdict on it, and its training cost; an ensemble fold's record from its members'; all of them as one
table (``runs_frame``)."""

import json
from typing import Dict, Sequence, Tuple

import numpy as np
import pandas as pd

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence, results
from nnunet_mcc.provenance import PROVENANCE_FILE


def run_record(state: results.FoldState, allow_unknown: bool, class_names: Sequence[str] = ()) -> dict:
    """Budget, settings, training log and convergence verdict of one finished fold."""
    try:
        budget = results.recorded_budget(state.folder)
        budget_problem = None
    except UserError as e:
        if not allow_unknown:
            raise UserError(f"{state.run} fold {state.fold}: {e}; compare pairs runs of one budget only "
                            f"(--allow-mixed-budgets accepts an unknown one)") from None
        budget, budget_problem = None, str(e)
    provenance = results.read_provenance(state.folder)
    loss = results.loss_record(provenance, state.folder)
    per_epoch = budget.num_iterations_per_epoch if budget else None
    verdict, series, per_class, log_source = results.judged_training_log(state.folder, per_epoch, class_names)
    training = (provenance or {}).get("training") if isinstance((provenance or {}).get("training"), dict) else {}
    if state.seed is not None:
        seed, seed_source = state.seed, "folder name"
    elif training.get("seed") is not None:
        seed, seed_source = training.get("seed"), f"{PROVENANCE_FILE} ({training.get('seed_source') or 'recorded'})"
    else:
        seed, seed_source = None, "unrecorded"
    record = {"trainer": state.trainer, "run": state.run, "seed": seed, "seed_source": seed_source,
              "deterministic": training.get("deterministic"), "fold": state.fold, "folder": state.folder,
              "num_epochs": budget.num_epochs if budget else None,
              "num_iterations_per_epoch": per_epoch,
              "num_val_iterations_per_epoch": budget.num_val_iterations_per_epoch if budget else None,
              "iterations": budget.iterations if budget else None,
              "budget": budget.short() if budget else "unknown",
              "budget_source": (PROVENANCE_FILE if provenance else "debug.json") if budget
              else budget_problem,
              "budget_sources": json.dumps((provenance or {}).get("budget_sources") or {}, sort_keys=True),
              "loss": loss["name"], "loss_settings": json.dumps(loss["settings"], sort_keys=True),
              "versions": json.dumps((provenance or {}).get("versions") or {}, sort_keys=True),
              "log_source": log_source if series else None, "log_problem": None if series else log_source,
              "epochs_logged": verdict.epochs, "converged": verdict.status, "convergence": verdict.describe()}
    for name in convergence.SERIES:
        record[f"projected_gain_{name}"] = verdict.gains.get(name, float("nan"))
    record["still_rising"] = ", ".join(verdict.rising)  # the series the judge found rising
    record["classes_at_zero"] = "; ".join(f"{c} {how}" for c, how in verdict.at_zero.items())  # "core lost"
    cost = results.training_cost(state.folder)
    for key in results.COST_KEYS:
        record[f"cost_{key}"] = cost[key]
    record["_series"] = series
    record["_per_class"] = per_class
    record["_budget"] = budget
    record["_provenance"] = provenance
    record["_loss"] = loss
    return record


def ensemble_state(run) -> results.FoldState:
    """An ensemble fold (``ensemble.EnsembleRun``) as a finished fold of the trainer named after it: its
    ``validation/summary.json`` and exported predictions are read as any fold's."""
    return results.FoldState(run.trainer, run.fold, results.FINISHED, run.folder, {}, run.seed, run.run)


def ensemble_record(run, by_run: Dict[Tuple[str, int], dict]) -> dict:
    """The run record of an ensemble fold from its members' records (same fold and seed): their common budget, the
    members' losses and settings as its loss ("ensemble of A (...) and B (...)"), converged when every member run
    converged; no training log or cost of its own. Its settings identity is its list of members, so the settings
    checks never refuse it."""
    members = [by_run[(m.run, run.fold)] for m in run.members]
    names = [f"{m['trainer']} ({m['loss']}" + (f"; {results.settings_text(json.loads(m['loss_settings']), 40)}"
                                                if json.loads(m["loss_settings"]) else "") + ")" for m in members]
    loss = "ensemble of " + ", ".join(names[:-1]) + " and " + names[-1]
    settings = {"members": [m["run"] for m in members], "probabilities": "averaged (nnunetv2.ensembling)",
                **{f"{m['trainer']}.{k}": v for m in members for k, v in json.loads(m["loss_settings"]).items()}}
    statuses = [m["converged"] for m in members]
    converged = convergence.YES if all(v == convergence.YES for v in statuses) else (
        convergence.NO if convergence.NO in statuses else next(v for v in statuses if v != convergence.YES))
    budget = run.budget
    record = {"trainer": run.trainer, "run": run.run, "seed": run.seed,
              "seed_source": "its members' seed folders" if run.seed is not None else "unrecorded",
              "deterministic": None, "fold": run.fold, "folder": run.folder,
              "num_epochs": budget.num_epochs, "num_iterations_per_epoch": budget.num_iterations_per_epoch,
              "num_val_iterations_per_epoch": budget.num_val_iterations_per_epoch, "iterations": budget.iterations,
              "budget": budget.short(), "budget_source": "its members' (one budget)", "budget_sources": "{}",
              "loss": loss, "loss_settings": json.dumps(settings, sort_keys=True), "versions": "{}",
              "log_source": None, "log_problem": "an ensemble: no training of its own",
              "epochs_logged": None, "converged": converged,
              "convergence": "an ensemble of " + ", ".join(f"{m['run']} fold {m['fold']} ({m['converged']})"
                                                           for m in members),
              "still_rising": "", "classes_at_zero": "", "ensemble_of": " + ".join(m["run"] for m in members),
              "ensemble_reused": bool(run.reused)}
    for name in convergence.SERIES:
        record[f"projected_gain_{name}"] = float("nan")
    for key in results.COST_KEYS:
        record[f"cost_{key}"] = None
    record.update(_series=None, _per_class=None, _budget=budget, _loss={"name": loss, "settings": settings},
                  _provenance={"identity": {"ensemble_of": [m["trainer"] for m in members]}}, _ensemble=True)
    return record


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run; a column of whole numbers with gaps (an ensemble has no cost or log of its own, an unseeded
    run no seed) stays whole numbers (pandas' nullable Int64) instead of turning into floats in runs.csv."""
    runs = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
    for column in runs.columns:
        values = [r.get(column) for r in records]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
            runs[column] = pd.array(values, dtype="Int64")
    if "seed" in runs.columns:
        runs["seed"] = pd.array([r["seed"] for r in records], dtype="Int64")
    return runs

def seed_text(seed) -> str:
    return "unrecorded" if seed is None else str(seed)


def run_label(record: dict) -> str:
    return f"{record['run']} fold {record['fold']}"
