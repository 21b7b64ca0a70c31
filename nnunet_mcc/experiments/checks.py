"""What ``nnunet-mcc crossval`` checks before anything runs: the budget and the loss settings (identity) every
existing fold was trained with against the ones asked for, and the seeds (``--seeds``, ``NNUNET_MCC_SEED``).
Nothing here trains or writes."""

import json
import os
from typing import Dict, List, Optional, Sequence

from nnunet_mcc.budget import SEED_VARIABLE, seed_from_env, seed_variant_name, split_seed
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.experiments.runner import TRAIN, Run
from nnunet_mcc.fileio import read_json


def planned_budgets(classes: Dict[str, Optional[type]], env: Dict[str, str]) -> Dict[str, Optional[results.Budget]]:
    """The budget a new run of each trainer gets under ``env``; None where the class does not say (nnU-Net's own
    trainers fix it in ``__init__``, and the budget options do not apply to them)."""
    planned = {}
    for name, cls in classes.items():
        method = getattr(cls, "planned_budget", None) if cls is not None else None
        try:
            planned[name] = results.Budget.from_mapping(method(environ=env)) if method is not None else None
        except (ValueError, UserError) as e:  # an NNUNET_MCC_* variable that is not a positive whole number
            raise UserError(f"{name}: {e}") from None
    return planned


def check_seeds(trainers: Sequence[str], seeds: Optional[Sequence[int]]) -> None:
    """``--seeds``: distinct, non-negative, and not with a -tr name that carries a seed already."""
    if seeds is None:
        return
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise UserError(f"--seeds must be integers >= 0, got {' '.join(map(str, negative))}")
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise UserError(f"--seeds lists seed {' '.join(map(str, twice))} twice: {' '.join(map(str, seeds))}")
    seeded = [t for t in trainers if split_seed(t)[1] is not None]
    if seeded:
        raise UserError(f"-tr {' '.join(seeded)} carries a seed already (_seed<S>): give either seeded trainer names "
                        f"or --seeds with the unseeded names ({' '.join(split_seed(t)[0] for t in seeded)})")


def seedable(classes: Dict[str, Optional[type]]) -> None:
    """With ``--seeds``: every trainer must read its seed (this package's trainers; nnU-Net's own ignore it)."""
    unknown = [name for name, cls in classes.items() if cls is None]
    if unknown:
        raise UserError(f"--seeds: trainer(s) {', '.join(unknown)} not found by nnU-Net's lookup; --seeds needs "
                        f"this package's trainers, which read the seed")
    stock = [name for name, cls in classes.items() if not hasattr(cls, "seed_with_source")]
    if stock:
        raise UserError(f"--seeds applies to this package's trainers only: {', '.join(stock)} ignore(s) the seed; "
                        f"for nnU-Net's Dice+CE with the seed and the budget knobs use nnUNetTrainerBaseline")


def check_seed_environment(classes: Dict[str, Optional[type]], env: Dict[str, str],
                           seeds: Optional[Sequence[int]]) -> None:
    """A trainer whose name carries a seed must not meet another ``NNUNET_MCC_SEED`` (the trainer would refuse
    to start): one line before anything runs."""
    from_env = seed_from_env(env)
    if seeds and from_env is not None and set(seeds) != {from_env}:
        raise UserError(f"--seeds {' '.join(map(str, seeds))} with {SEED_VARIABLE}={from_env} in the environment: "
                        f"each run's seed comes from its trainer name (_seed<S>); unset {SEED_VARIABLE}")
    for name, cls in classes.items():
        method = getattr(cls, "seed_with_source", None) if cls is not None else None
        if method is not None:
            method(environ=env)  # UserError naming the trainer, the class seed and the variable


def run_trainers(trainers: Sequence[str], seeds: Optional[Sequence[int]]) -> List[str]:
    """The trainer of each run: ``trainers`` as given, or each one once per seed (``<Trainer>_seed<S>``)."""
    if not seeds:
        return list(trainers)
    return [seed_variant_name(t, s) for t in trainers for s in seeds]


def planned_identities(classes: Dict[str, Optional[type]], env: Dict[str, str], dataset_name: str
                       ) -> Dict[str, Optional[dict]]:
    """The loss settings that are part of a run's identity (``identity_settings`` of this package's trainers) for
    a new run of each trainer under ``env``; None for nnU-Net's own trainers. A bad setting (a distance matrix
    file that does not fit, an unknown critic mode) is a UserError naming the trainer, before anything runs."""
    dataset_json = None
    planned = {}
    for name, cls in classes.items():
        method = getattr(cls, "identity_settings", None) if cls is not None else None
        if method is None:
            planned[name] = None
            continue
        if dataset_json is None:  # nnU-Net copies it there when it preprocesses
            path = os.path.join(results.nnunet_folder("preprocessed"), dataset_name, "dataset.json")
            dataset_json = read_json(path, "dataset.json") if os.path.isfile(path) else {}
        try:
            planned[name] = json.loads(json.dumps(method(dataset_json, environ=env)))  # as recorded
        except UserError as e:
            raise UserError(f"{name}: {e}") from None
    return planned


def _identity_difference(recorded: dict, asked: dict) -> str:
    keys = sorted(k for k in set(recorded) | set(asked) if recorded.get(k) != asked.get(k))
    return ", ".join(f"{k} {json.dumps(recorded.get(k))} -> {json.dumps(asked.get(k))}" for k in keys)


def check_budgets(runs: Sequence[Run], planned: Dict[str, Optional[results.Budget]],
                  identities: Optional[Dict[str, Optional[dict]]] = None) -> List[Run]:
    """Record each existing fold's budget in its Run and return the runs trained with another budget than
    ``planned`` (or an unknown one), or with other loss settings than ``identities`` (or unknown ones, when the
    trainer's settings are not empty). Folds to be trained from the start are not checked."""
    mismatched = []
    for r in runs:
        asked = planned.get(r.trainer)
        if r.action == TRAIN:
            continue
        if asked is not None:
            try:
                r.recorded = results.recorded_budget(r.folder)
            except UserError as e:
                r.mismatch, r.aside_tag = f"budget unknown ({e})", "budget_unknown"
            else:
                if r.recorded != asked:
                    r.mismatch = f"trained with {r.recorded.short()}, asked for {asked.short()} (epochs x iterations)"
                    r.aside_tag = (f"budget_{r.recorded.num_epochs}x{r.recorded.num_iterations_per_epoch}x"
                                   f"{r.recorded.num_val_iterations_per_epoch}")
        settings = (identities or {}).get(r.trainer)
        record = results.read_provenance(r.folder) if not r.mismatch and settings else None
        if record is None and not r.mismatch and settings:
            r.note = "no run record (nnunet_mcc_provenance.json): its loss settings cannot be checked"
        elif record is not None:
            recorded_settings = record.get("identity")
            if recorded_settings is None:
                r.mismatch = ("loss settings unknown (no 'identity' in its run record: trained before they were "
                              "recorded, or by another trainer)")
            elif recorded_settings != settings:
                r.mismatch = f"trained with other loss settings ({_identity_difference(recorded_settings, settings)})"
            r.aside_tag = "settings" if r.mismatch else None
        if r.mismatch:
            mismatched.append(r)
    return mismatched


def aside_name(folder: str, tag: Optional[str]) -> str:
    """A free name beside ``folder`` saying why it was moved: ``fold_0.budget_2x50x5``, ``.budget_unknown`` or
    ``.settings`` (then ``.settings.2``, ...)."""
    tag = tag or "budget_unknown"
    candidate, n = f"{folder}.{tag}", 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{folder}.{tag}.{n}"
    return candidate
