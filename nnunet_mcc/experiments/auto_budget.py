"""``crossval --auto-budget``: train until compare's convergence judge is satisfied, doubling the epochs.

The rounds (``nnunet_mcc.experiments.crossval`` runs them; the bookkeeping is here):

* **round 1** trains every (trainer, fold, seed) with the budget asked for, exactly as ``crossval`` without
  ``--auto-budget`` does (same folders: ``<Trainer>[_seed<S>]``);
* when every run of a round has finished, each run is judged from its logged curves with compare's judge
  (:func:`judge_fold`, ``convergence.judge`` as ``collect`` calls it: still rising, or a class at zero, or too short
  to judge, is "not converged");
* a trainer with a run not converged is trained again, every fold and seed, at **twice the epochs** with the same
  iterations per epoch: a new schedule (nnU-Net's poly learning rate is built from the number of epochs), never a
  resumed run. The run is nnU-Net's short variant ``<Trainer>_<2N>epochs[_seed<S>]`` (built on demand by
  ``nnunet_mcc.trainers.variants``), whose class sets the epochs, in its own results folder beside the old one; the
  old folder is kept and marked superseded (:data:`SUPERSEDED_FILE`);
* up to a cap (``--max-epochs``, default :data:`DEFAULT_CAP_FACTOR` times the first budget): a trainer whose runs
  are still not converged at the cap stops there ("cap reached");
* with ``same_budget`` every trainer is doubled while any one has a run not converged, so that all of them have
  runs at the largest budget (for ``compare --same-budget``).

What happened is written to one record per dataset, plans and configuration, :func:`record_path`: per trainer the
budgets tried, every run's verdict at each, the budget at which all its runs converged and the one compare uses by
default. ``compare --auto-budget`` reads it (:func:`choose`): each trainer at the budget at which its runs converged
(the default), or all at the largest budget tried (``--same-budget``); the budget of every compared fold is still
checked against its own record (:func:`check_compared_budgets`).
"""

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mcc import labels as dataset_labels
from nnunet_mcc.budget import Budget, describe_budget, epochs_variant_name
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import convergence, results
from nnunet_mcc.fileio import read_json, write_json

RECORD_FORMAT = 1
SUPERSEDED_FILE = "nnunet_mcc_superseded.json"  # in the trainer folder of a run that a longer run replaced
# the default cap: two doublings, so the rounds cost at most 1 + 2 + 4 = 7 times the first one
DEFAULT_CAP_FACTOR = 4
# a round's outcome for a trainer, and a trainer's state at the end
CONVERGED, NOT_CONVERGED, NOT_JUDGED = "converged", "not converged", "not judged"
CAP_REACHED, IN_PROGRESS = "cap reached", "in progress"


def record_path(results_root: str, dataset_name: str, plans: str, configuration: str) -> str:
    """``$nnUNet_results/<dataset>/nnunet_mcc_auto_budget_<plans>_<configuration>.json``."""
    return os.path.join(results_root, dataset_name, f"nnunet_mcc_auto_budget_{plans}_{configuration}.json")


def caps(start: Dict[str, int], max_epochs: Optional[int]) -> Dict[str, int]:
    """The most epochs each trainer may be trained for: ``max_epochs``, else ``DEFAULT_CAP_FACTOR`` times its first
    budget's epochs. UserError when the cap leaves no room to double a first budget."""
    if max_epochs is not None and (isinstance(max_epochs, bool) or max_epochs < 1):
        raise UserError(f"--max-epochs must be a positive number of epochs, got {max_epochs}")
    out = {}
    for trainer, epochs in start.items():
        cap = DEFAULT_CAP_FACTOR * epochs if max_epochs is None else int(max_epochs)
        if cap < 2 * epochs:
            raise UserError(f"--max-epochs {cap} leaves no room to double the first budget of {trainer} ({epochs} "
                            f"epochs): give at least {2 * epochs}, or leave it out ({DEFAULT_CAP_FACTOR} x the first "
                            f"budget)")
        out[trainer] = cap
    return out


# ---- judging a round ------------------------------------------------------------------------------
def class_names(dataset_name: str) -> Optional[List[str]]:
    """The names of the per-epoch pseudo Dice entries (``labels.pseudo_dice_names`` of the preprocessed
    dataset.json), None when it cannot be read (the judge then names classes by position)."""
    path = os.path.join(results.nnunet_folder("preprocessed"), dataset_name, "dataset.json")
    try:
        return dataset_labels.pseudo_dice_names(read_json(path, "dataset.json")) or None
    except (UserError, AttributeError):
        return None


def judge_fold(folder: str, names: Optional[Sequence[str]] = None) -> convergence.Verdict:
    """compare's verdict on one finished fold, from its logged curves, judged as ``collect`` judges it: the series
    per training iteration of its recorded budget, the per-class pseudo Dice for a class at zero."""
    return results.judged_training_log(folder, results.recorded_budget(folder).num_iterations_per_epoch, names)[0]


def outcome(verdicts: Sequence[convergence.Verdict]) -> str:
    """A trainer's round: converged when every run is; not converged when some run still rises, has a class at zero
    or is too short to judge (a longer run can change that); otherwise (some run has no curve) not judged."""
    if all(v.status == convergence.YES for v in verdicts):
        return CONVERGED
    if any(v.status in (convergence.NO, convergence.TOO_SHORT) for v in verdicts):
        return NOT_CONVERGED
    return NOT_JUDGED


@dataclass
class TrainerRounds:
    """One trainer's way through the rounds."""
    trainer: str                  # as asked (-tr)
    start: Budget                 # the first round's budget
    cap: int                      # most epochs
    name: str = ""                # the trainer of the current round (``<Trainer>[_<N>epochs]``, seeds added per run)
    epochs: int = 0               # the current round's epochs
    rounds: List[dict] = field(default_factory=list)   # the judged rounds, in order
    status: str = IN_PROGRESS
    converged_epochs: Optional[int] = None             # the first budget at which every run converged
    active: bool = True

    def __post_init__(self):
        self.name = self.name or self.trainer
        self.epochs = self.epochs or self.start.num_epochs

    @property
    def budget(self) -> Budget:
        """The current round's budget: the first one's iterations, its own epochs."""
        return Budget(self.epochs, self.start.num_iterations_per_epoch, self.start.num_val_iterations_per_epoch)

    def doubled_name(self) -> str:
        return epochs_variant_name(self.name, 2 * self.epochs)

    def add_round(self, verdicts: Sequence[Tuple[str, int, convergence.Verdict]]) -> str:
        """Record the judged round (``(run, fold, verdict)`` of every run) and return its outcome."""
        judged = [v for _, _, v in verdicts]
        result = outcome(judged)
        self.rounds.append({
            "round": len(self.rounds) + 1, "epochs": self.epochs, "trainer": self.name,
            "runs": list(dict.fromkeys(run for run, _, _ in verdicts)), "budget": asdict(self.budget),
            "budget_text": str(self.budget), "iterations": self.budget.iterations,
            "runs_judged": len(judged), "converged_runs": sum(v.status == convergence.YES for v in judged),
            "outcome": result, "superseded_by": None,
            "verdicts": [{"run": run, "fold": fold, "converged": v.status, "verdict": v.describe()}
                         for run, fold, v in verdicts]})
        if result == CONVERGED and self.converged_epochs is None:
            self.converged_epochs = self.epochs
        return result

    def chosen_round(self) -> Optional[dict]:
        """The round compare uses by default: the first at which every run converged, else the last judged."""
        for entry in self.rounds:
            if self.converged_epochs is not None and entry["epochs"] == self.converged_epochs:
                return entry
        return self.rounds[-1] if self.rounds else None

    def entry(self, folds: Sequence[int], seeds: Optional[Sequence[int]], same_budget: bool) -> dict:
        chosen = self.chosen_round()
        return {"trainer": self.trainer, "folds": list(folds), "seeds": list(seeds) if seeds else None,
                "same_budget": same_budget, "max_epochs": self.cap, "start": asdict(self.start),
                "status": self.status, "converged_epochs": self.converged_epochs,
                "chosen": {"epochs": chosen["epochs"], "trainer": chosen["trainer"]} if chosen else None,
                "training": {"epochs": self.epochs, "trainer": self.name} if self.active else None,
                "rounds": self.rounds}


def decide(trainers: Sequence[TrainerRounds], same_budget: bool) -> List[Tuple[TrainerRounds, str, bool]]:
    """After a judged round of ``trainers`` (the active ones, their last round added): which are trained again at
    twice the epochs, as ``(trainer, its previous round's name, superseded)`` (superseded: it had a run not
    converged, so the longer run replaces it; with ``same_budget`` a converged trainer is trained on for equal
    budgets and not superseded). The others stop, with their status."""
    last = {t.trainer: t.rounds[-1]["outcome"] for t in trainers}
    room = {t.trainer: 2 * t.epochs <= t.cap for t in trainers}
    if same_budget:
        wanted = any(o == NOT_CONVERGED for o in last.values()) and all(room.values())
        doubled = list(trainers) if wanted else []
    else:
        doubled = [t for t in trainers if last[t.trainer] == NOT_CONVERGED and room[t.trainer]]
    out = []
    for t in trainers:
        if t in doubled:
            previous = t.name
            superseded = last[t.trainer] == NOT_CONVERGED
            if superseded:
                t.rounds[-1]["superseded_by"] = t.doubled_name()
            t.name, t.epochs = t.doubled_name(), 2 * t.epochs
            out.append((t, previous, superseded))
            continue
        t.active = False
        t.status = (CONVERGED if t.converged_epochs is not None else
                    CAP_REACHED if last[t.trainer] == NOT_CONVERGED else NOT_JUDGED)
    return out


def round_text(t: TrainerRounds) -> str:
    """One line on a trainer after its last judged round."""
    r = t.rounds[-1]
    counted = f"{r['converged_runs']} of {r['runs_judged']} runs converged at {r['epochs']} epochs"
    if t.active:
        return f"{t.trainer}: {counted}: trained again at {t.epochs} epochs as {t.name}"
    if t.status == CONVERGED:
        at = "" if t.converged_epochs == r["epochs"] else f" (first converged at {t.converged_epochs} epochs)"
        return f"{t.trainer}: {counted}: converged{at}"
    if t.status == CAP_REACHED:
        return f"{t.trainer}: {counted}: cap reached (--max-epochs {t.cap}), still not converged"
    return f"{t.trainer}: {counted}: the others could not be judged (no training log)"


def final_text(t: TrainerRounds) -> str:
    """Where a trainer ended: converged at which budget, or the cap reached, or not judged."""
    if t.status == CONVERGED:
        return f"{t.trainer} converged at {t.converged_epochs} epochs"
    if t.status == CAP_REACHED:
        return f"{t.trainer} reached the cap ({t.cap} epochs) still not converged"
    return f"{t.trainer}: {t.status} at {t.rounds[-1]['epochs']} epochs"


# ---- the record and the superseded marks -----------------------------------------------------------
def load_record(path: str) -> dict:
    record = read_json(path, "auto-budget record")
    if not isinstance(record, dict) or not isinstance(record.get("trainers"), dict):
        raise UserError(f"auto-budget record {path} has no 'trainers' (not written by nnunet-mcc crossval "
                        f"--auto-budget?)")
    return record


def write_record(path: str, dataset_name: str, configuration: str, plans: str, entries: Dict[str, dict]) -> None:
    """Replace the entries of these trainers in the record (the others' are kept), atomically."""
    record = load_record(path) if os.path.isfile(path) else {}
    trainers = dict(record.get("trainers") or {})
    trainers.update(entries)
    write_json(path, {"format": RECORD_FORMAT, "written_by": "nnunet-mcc crossval --auto-budget",
                      "dataset": dataset_name, "configuration": configuration, "plans": plans,
                      "criterion": convergence.CRITERION, "trainers": trainers}, "auto-budget record")


def mark_superseded(trainer_folder: str, by: str, t: TrainerRounds, folds: Sequence[int], record: str) -> None:
    """Write :data:`SUPERSEDED_FILE` into a run's trainer folder (kept as it is): which run replaces it and why."""
    path = os.path.join(trainer_folder, SUPERSEDED_FILE)
    r = t.rounds[-1]
    try:
        known = read_json(path, "superseded mark") if os.path.isfile(path) else {}
    except UserError:
        known = {}
    folds = sorted(set(folds) | set(known.get("folds") or []) if known.get("superseded_by") == by else set(folds))
    write_json(path, {"superseded_by": by, "trainer": t.trainer, "epochs": r["epochs"], "by_epochs": 2 * r["epochs"],
                      "folds": folds,
                      "reason": f"{r['runs_judged'] - r['converged_runs']} of {r['runs_judged']} runs of {t.trainer} "
                                f"had not converged at {r['epochs']} epochs; every run was trained again at "
                                f"{2 * r['epochs']} epochs (a new schedule)",
                      "record": record}, "superseded mark")


def superseded_notes(results_root: str, dataset_name: str, trainers: Sequence[str], plans: str,
                     configuration: str) -> List[str]:
    """For compare without the record: the compared runs that a longer run replaced."""
    notes = []
    for trainer in trainers:
        for run, _ in results.seed_runs(results_root, dataset_name, trainer, plans, configuration)[0]:
            path = os.path.join(results.trainer_folder(results_root, dataset_name, run, plans, configuration),
                                SUPERSEDED_FILE)
            if not os.path.isfile(path):
                continue
            try:
                mark = read_json(path, "superseded mark")
                notes.append(f"{run}: superseded by {mark['superseded_by']} ({mark['reason']}); "
                             f"`compare --auto-budget` compares each trainer at the budget at which its runs converged")
            except (UserError, KeyError, TypeError):
                notes.append(f"{run}: marked superseded ({path} unreadable)")
    return notes


# ---- compare: which runs of each trainer ----------------------------------------------------------
@dataclass
class Choice:
    compared: Dict[str, str]              # trainer as asked -> the trainer (folder name) compared
    budgets: Dict[str, Budget]            # trainer as asked -> the budget compared
    lines: List[str]                      # the report's first lines
    record: str

    @property
    def differ(self) -> bool:
        return len(set(self.budgets.values())) > 1


def choose(path: str, trainers: Sequence[str], same_budget: bool = False) -> Choice:
    """From the record at ``path``: each trainer's runs at the budget at which they converged (or the last one
    judged: cap reached, not judged, still in progress), or with ``same_budget`` every trainer's runs at the
    largest budget tried, and the lines that say so."""
    if not os.path.isfile(path):
        raise UserError(f"no auto-budget record {path} (nnunet-mcc crossval --auto-budget writes it when it has "
                        f"judged a round)")
    record = load_record(path)
    entries = record["trainers"]
    missing = [t for t in trainers if not (entries.get(t) or {}).get("rounds")]
    if missing:
        raise UserError(f"the auto-budget record {path} has no judged round of {', '.join(missing)} (it has: "
                        f"{', '.join(sorted(t for t, e in entries.items() if e.get('rounds'))) or 'none'}); run "
                        f"nnunet-mcc crossval --auto-budget with them first")
    try:
        if same_budget:
            largest = max(r["epochs"] for t in trainers for r in entries[t]["rounds"])
            picked = {}
            short = []
            for t in trainers:
                found = [r for r in entries[t]["rounds"] if r["epochs"] == largest]
                if found:
                    picked[t] = found[0]
                else:
                    short.append(f"{t} (trained up to {max(r['epochs'] for r in entries[t]['rounds'])} epochs, "
                                 f"{entries[t]['status']})")
            if short:
                raise UserError(f"--same-budget compares every trainer at {largest} epochs, the largest budget tried, "
                                f"but {', '.join(short)} was not trained at it: run nnunet-mcc crossval --auto-budget "
                                f"--same-budget, which trains every trainer up to the largest budget, or compare "
                                f"each at its converged budget (without --same-budget)")
        else:
            picked = {}
            for t in trainers:
                chosen = entries[t].get("chosen") or {}
                picked[t] = next(r for r in entries[t]["rounds"] if r["epochs"] == chosen.get("epochs"))
        compared = {t: picked[t]["trainer"] for t in trainers}
        budgets = {t: Budget.from_mapping(picked[t]["budget"]) for t in trainers}
    except (KeyError, TypeError, ValueError, StopIteration) as e:
        raise UserError(f"auto-budget record {path} is not readable ({type(e).__name__} {e}): run nnunet-mcc "
                        f"crossval --auto-budget again to rewrite it") from None
    choice = Choice(compared, budgets, [], path)
    choice.lines = first_lines(choice, entries, same_budget)
    return choice


def _round_counts(rounds: Sequence[dict], before: int) -> str:
    earlier = [f"at {r['epochs']} epochs {r['runs_judged'] - r['converged_runs']} of {r['runs_judged']} had not"
               for r in rounds if r["epochs"] < before and r["outcome"] != CONVERGED]
    return f"; {', '.join(earlier)}" if earlier else ""


def first_lines(choice: Choice, entries: Dict[str, dict], same_budget: bool) -> List[str]:
    """Which budget each trainer is compared at, whether its runs converged there, and whether the budgets
    differ (the report's first lines)."""
    largest = max(b.num_epochs for b in choice.budgets.values())
    if same_budget:
        head = ("**Budgets from `crossval --auto-budget`, compared at the same budget (--same-budget):** every "
                f"trainer at {largest} epochs, the largest budget tried (equal cost); where each trainer's runs "
                "converged:")
    else:
        head = ("**Budgets from `crossval --auto-budget`:** each trainer is compared at the budget at which all its "
                "runs converged (the epochs doubled from the first budget up to `--max-epochs`):")
    lines = [head]
    for t, name in choice.compared.items():
        entry, budget = entries[t], choice.budgets[t]
        status, converged, last = entry.get("status"), entry.get("converged_epochs"), entry["rounds"][-1]
        not_converged = f"{last['runs_judged'] - last['converged_runs']} of {last['runs_judged']} runs"
        if status == CONVERGED and converged == budget.num_epochs:
            r = next(r for r in entry["rounds"] if r["epochs"] == converged)
            state = (f"every run converged ({r['converged_runs']} of {r['runs_judged']})"
                     + _round_counts(entry["rounds"], converged))
        elif converged is not None:
            state = f"its runs converged at {converged} epochs"
        elif status == CAP_REACHED:
            state = (f"**cap reached** (--max-epochs {entry.get('max_epochs')}): {not_converged} still not converged "
                     f"at {last['epochs']} epochs")
        elif status == IN_PROGRESS:
            training = (entry.get("training") or {}).get("epochs")
            state = (f"{not_converged} not converged at {last['epochs']} epochs; being trained at {training} epochs "
                     f"(`crossval --auto-budget` has not finished)")
        else:
            state = f"{not_converged} could not be judged"
        runs = "" if name == t else f", runs `{name}`"
        lines.append(f"- {t}: {describe_budget(asdict(budget))}{runs}: {state}")
    lines.append("")  # the closing line is no part of the list
    if choice.differ:
        lines.append("**The budgets differ between trainers:** each loss is compared trained until its runs converged "
                     "(which loss wins when trained enough; at the cap when they had not), not at equal cost; "
                     f"`--same-budget` compares every trainer at {largest} epochs.")
    else:
        lines.append("Every trainer is compared at the same budget.")
    return lines


def check_compared_budgets(choice: Choice, results_root: str, dataset_name: str, plans: str, configuration: str,
                           folds: Sequence[int]) -> None:
    """Every finished fold of a compared trainer was trained with the budget the record says (its ``debug.json`` /
    provenance, read as compare reads it); a stale record or a fold of another budget is a UserError."""
    for t, name in choice.compared.items():
        for state in results.survey(results_root, dataset_name, [name], plans, configuration, folds):
            if state.status != results.FINISHED:
                continue
            try:
                recorded = results.recorded_budget(state.folder)
            except UserError as e:
                raise UserError(f"{state.run} fold {state.fold}: {e}; compare pairs runs of known budgets only") \
                    from None
            if recorded != choice.budgets[t]:
                raise UserError(f"{state.run} fold {state.fold} was trained with {recorded.short()}, but the "
                                f"auto-budget record {choice.record} says {choice.budgets[t].short()} for {t}: the "
                                f"record is out of date; run nnunet-mcc crossval --auto-budget again to rewrite it")
