"""The checks that refuse to pair runs that differ (budgets, seed sets, settings identities; each allowed on request
with a note), the trainers' results folders checked, and the notes on snapshot validations and loss settings that
differ between folds."""

import json
import os
from typing import Dict, List, Optional, Sequence

from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.experiments.collect_runs import run_label, seed_text


def check_trainer_folders(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                           configuration: str) -> None:
    dataset_results = os.path.join(results_root, dataset_name)
    if not os.path.isdir(dataset_results):
        raise UserError(f"dataset {dataset_name} has no results in {results_root} (train it first, e.g. with "
                        f"nnunet-mcc crossval)")
    for trainer in trainers:
        folder = results.trainer_folder(results_root, dataset_name, trainer, plans, configuration)
        runs, _ = results.seed_runs(results_root, dataset_name, trainer, plans, configuration)
        if not os.path.isdir(folder) and runs[0][1] is None:
            suffix = f"__{plans}__{configuration}"
            present = sorted(n[: -len(suffix)] for n in os.listdir(dataset_results) if n.endswith(suffix))
            raise UserError(f"trainer {trainer!r} has no results folder {folder} (trainers with results for "
                            f"{plans}/{configuration}: {', '.join(present) or 'none'})")

def check_seeds(records: List[dict], trainers: Sequence[str], allow_mixed: bool) -> List[str]:
    """Trainers are compared over the same training seeds: their seed folders' seeds, or for an unsuffixed
    folder the seed(s) its folds record. A single run whose seed was not recorded matches any single run.
    Otherwise refused unless ``allow_mixed`` (then a note says which seeds each trainer has)."""
    seeds = {t: sorted({r["seed"] for r in records if r["trainer"] == t}, key=lambda v: (v is None, v or 0))
             for t in trainers}
    seeds = {t: v for t, v in seeds.items() if v}

    def compatible(a, b) -> bool:
        return a == b or (len(a) == len(b) == 1 and None in a + b)

    listed = list(seeds.items())
    mixed = any(not compatible(a, b) for i, (_, a) in enumerate(listed) for _, b in listed[i + 1:])
    if not mixed:
        return []
    text = "; ".join(f"{t}: {' '.join(seed_text(v) for v in s)}" for t, s in seeds.items())
    if not allow_mixed:
        raise UserError(f"the trainers were trained with different seeds ({text}): their differences would mix "
                        f"the loss with training noise of different draws. Train every trainer with the same seeds "
                        f"(folders <trainer>_seed<S>), or pass --allow-mixed-seeds to pair them anyway")
    return [f"mixed seeds (paired on request, --allow-mixed-seeds): {text}"]


def _flatten(value, prefix: str = "") -> Dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(value, sort_keys=True)}


def check_settings(records: List[dict], trainers: Sequence[str], allow_mixed: bool) -> List[str]:
    """Every fold and seed of one trainer must have been trained with the same settings identity
    (``results.settings_identity``: the recorded ``identity``, else the loss settings without the per-fold
    class weights); otherwise refused unless ``allow_mixed`` (then a note lists the differences)."""
    problems = []
    for trainer in trainers:
        own = [r for r in records if r["trainer"] == trainer]
        if not own:
            continue
        identities = results.settings_identity([(r["_provenance"], r["_loss"]) for r in own])
        groups: Dict[str, List[dict]] = {}
        flat: Dict[str, Dict[str, str]] = {}
        for r, (identity, source) in zip(own, identities):
            key = json.dumps(identity, sort_keys=True, default=str)
            groups.setdefault(key, []).append(r)
            flat[key] = _flatten(identity)
            r["identity_source"] = source
            r["identity"] = key
        if len(groups) < 2:
            continue
        keys = sorted({k for f in flat.values() for k in f if len({f.get(k) for f in flat.values()}) > 1})
        parts = []
        for key, runs in groups.items():
            shown = ", ".join(run_label(r) for r in runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
            values = ", ".join(f"{k}={_short(flat[key].get(k, 'absent'))}" for k in keys[:3])
            parts.append(f"{shown} ({values})")
        problems.append(f"{trainer}: {len(groups)} different settings ({', '.join(keys)}) in {' vs '.join(parts)}")
    if not problems:
        return []
    if not allow_mixed:
        raise UserError(f"runs of one trainer were trained with different settings, {'; '.join(problems)}: pairing "
                        f"them would mix settings. Compare runs of one setting, or pass --allow-mixed-settings")
    return [f"mixed settings (paired on request, --allow-mixed-settings): {p}" for p in problems]


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

def check_budgets(records: List[dict], allow_mixed: bool) -> None:
    """Runs are paired only when they share one budget (epochs, iterations per epoch, validation iterations)."""
    budgets: Dict[Optional[results.Budget], List[str]] = {}
    for r in records:
        budgets.setdefault(r["_budget"], []).append(run_label(r))
    if len(budgets) <= 1 or allow_mixed:
        return
    parts = []
    for budget, runs in budgets.items():
        shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        parts.append(f"{budget.short() if budget else 'unknown'} epochs x iterations: {shown}")
    raise UserError(f"the runs were trained with {len(budgets)} different budgets ({'; '.join(parts)}): their "
                    f"differences would mix loss and training length. Compare runs of one budget, or pass "
                    f"--allow-mixed-budgets to pair them anyway")


def snapshot_notes(finished: Sequence[results.FoldState]) -> List[str]:
    """Say where snapshot validations are absent: all of them, or some folds' epochs that others have."""
    epochs = sorted({e for s in finished for e in s.snapshots})
    if not epochs:
        return ["no snapshot validations (snapshots/epoch_<N>/summary.json): no 'score after N iterations' table "
                "(train with crossval --snapshot-epochs)"]
    return [f"{s.run} fold {s.fold}: no snapshot validation after epoch(s) "
            f"{' '.join(str(e) for e in epochs if e not in s.snapshots)}"
            for s in finished if set(epochs) - set(s.snapshots)]


def settings_notes(records: List[dict]) -> List[str]:
    """Loss settings that differ between the folds of one trainer (weighted CE's class weights are computed
    from each training fold and may differ legitimately; anything else is worth knowing)."""
    notes = []
    by_trainer: Dict[str, Dict[str, List[int]]] = {}
    for r in records:
        by_trainer.setdefault(r["trainer"], {}).setdefault(r["loss_settings"], []).append(r["fold"])
    for trainer, variants in by_trainer.items():
        if len(variants) > 1:
            decoded = [json.loads(v) for v in variants]
            keys = sorted({k for d in decoded for k in d if len({json.dumps(x.get(k), sort_keys=True)
                                                                for x in decoded}) > 1})
            notes.append(f"{trainer}: loss settings differ between folds ({', '.join(keys) or 'settings'}: "
                         f"{len(variants)} variants over folds {' / '.join(' '.join(map(str, f)) for f in variants.values())})")
    return notes
