"""Ensembles of trainers as one more contestant of ``compare`` (``--ensemble A+B``, ``--ensemble all``).

An ensemble is not trained: for every fold (and every training seed its members share, ``<trainer>_seed<S>``) the
softmax (or, for regions, sigmoid) probabilities that nnU-Net's final validation saved with ``--npz``
(``fold_<f>/validation/<case>.npz`` and ``<case>.pkl``) are averaged over the members case by case, the segmentation
is exported with the plans' label manager and the dataset's image writer, and it is scored against the preprocessed
dataset's ``gt_segmentations`` with nnU-Net's own evaluation, with the dataset's labels or regions and ignore label,
as nnU-Net's final validation scores a fold. All of it is nnU-Net's code: ``nnunetv2.ensembling.ensemble`` (
``ensemble_folders``, whose per-case step ``merge_files`` averages with ``average_probabilities``) and
``nnunetv2.evaluation.evaluate_predictions`` (``compute_metrics_on_folder``, whose per-case step is
``compute_metrics``). With ``num_processes`` 0 their per-case steps run in this process, one case after the other
(no worker pool: on a small CPU a pool costs seconds per call), and the summary is put together as
``compute_metrics_on_folder`` does.

Everything is written under compare's report folder, never into ``nnUNet_results``:
``<output>/ensembles/<A+B>[_seed<S>]/fold_<f>/validation/`` holds the exported segmentations, the averaged
probabilities (``<case>.npz``/``.pkl``, as nnU-Net's ``--save_npz``), nnU-Net's ``dataset.json`` and a
``summary.json`` of the form of a fold's ``validation/summary.json``; ``fold_<f>/nnunet_mcc_ensemble.json`` records
what it was built from (the member runs, the size and modification time of their probability files and checkpoints,
the plans, dataset.json and references, nnU-Net's version). A later compare reuses a fold whose record matches its
inputs; the report folder carries the ensembles it used over when it is replaced (hard links, no copy).

``collect`` reads the result like any fold (``collect.collect(request, trainers, ensembles)``); this module only builds.
"""

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mcc.budget import Budget
from nnunet_mcc.errors import UserError
from nnunet_mcc.experiments import results
from nnunet_mcc.fileio import atomic_folder, read_json, write_json

ALL = "all"                      # --ensemble all: every compared trainer
SEPARATOR = "+"                  # --ensemble A+B
FOLDER = "ensembles"             # under compare's report folder
RECORD_FILE = "nnunet_mcc_ensemble.json"
RECORD_FORMAT = 1
DEFAULT_PROCESSES = 2            # worker processes of nnU-Net's ensembling and evaluation (0: in this process)
NPZ_HINT = ("train with nnunet-mcc crossval --npz, or validate a trained fold again with nnUNetv2_train DATASET CONFIG "
            "FOLD -tr TRAINER --val --npz")


@dataclass
class Spec:
    """One requested ensemble: its name (``A+B``), members (trainer names as compared) and whether the user named
    it (``--ensemble A+B``: a problem is an error) or it came from ``--ensemble all`` (a problem is a note)."""
    name: str
    members: List[str]
    explicit: bool


@dataclass
class Member:
    trainer: str
    run: str                     # the member's results folder name: <trainer> or <trainer>_seed<S>
    folder: str                  # its fold folder


@dataclass
class EnsembleRun:
    """One ensemble fold (one seed): what ``collect`` reads as a run of the trainer ``trainer``."""
    trainer: str                 # the ensemble's name, "A+B"
    run: str                     # "A+B" or "A+B_seed<S>"
    seed: Optional[int]
    fold: int
    folder: str                  # <output>/ensembles/<run>/fold_<f>
    members: List[Member]
    budget: Budget
    cases: List[str] = field(default_factory=list)
    reused: bool = False

    @property
    def validation(self) -> str:
        return os.path.join(self.folder, "validation")


def ensemble_name(members: Sequence[str]) -> str:
    return SEPARATOR.join(members)


def parse(values: Optional[Sequence[str]], trainers: Sequence[str]) -> List[Spec]:
    """``--ensemble`` values (repeatable) -> specs, members checked against the compared trainers (``-tr``)."""
    specs: Dict[str, Spec] = {}
    for value in values or []:
        text = str(value).strip()
        if text == ALL:
            members, explicit = list(trainers), False
            if len(members) < 2:
                raise UserError(f"--ensemble all needs at least two compared trainers (-tr has {len(members)})")
        else:
            members, explicit = [m.strip() for m in text.split(SEPARATOR)], True
            unknown = [m for m in members if m not in trainers]
            if unknown:
                what = "an empty member name" if not all(unknown) else \
                    f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not among the compared trainers"
                raise UserError(f"--ensemble {text}: {what} (give trainers of -tr joined by '{SEPARATOR}', e.g. "
                                f"{SEPARATOR.join(trainers[:2])}, or 'all'; -tr: {' '.join(trainers)})")
            if len(set(members)) != len(members) or len(members) < 2:
                raise UserError(f"--ensemble {text}: an ensemble needs at least two different trainers")
        name = ensemble_name(members)
        if name in specs:
            specs[name].explicit = specs[name].explicit or explicit
        else:
            specs[name] = Spec(name, members, explicit)
    return list(specs.values())


def rename(specs: Sequence[Spec], compared: Dict[str, str]) -> List[Spec]:
    """The specs with their members renamed as compare compares them (``--auto-budget``: ``<T>_<N>epochs``)."""
    out = []
    for spec in specs:
        members = [compared.get(m, m) for m in spec.members]
        out.append(Spec(ensemble_name(members), members, spec.explicit))
    return out


def report_folder(output: str, run: str, fold: int) -> str:
    return os.path.join(output, FOLDER, run, f"fold_{fold}")


# ---- which runs an ensemble pairs, and whether they can be ensembled ------------------------------------------
def _seed_pairs(spec: Spec, results_root: str, dataset_name: str, plans: str,
                configuration: str) -> Tuple[List[Tuple[Optional[int], List[str]]], List[str]]:
    """[(seed, [member run folder name per member])], notes; UserError-worthy problems raise ``_Problem``."""
    runs = {m: results.seed_runs(results_root, dataset_name, m, plans, configuration)[0] for m in spec.members}
    seeded = {m: {seed: run for run, seed in r if seed is not None} for m, r in runs.items()}
    if not any(seeded.values()):
        return [(None, list(spec.members))], []
    unseeded = [m for m, s in seeded.items() if not s]
    if unseeded:
        raise _Problem(f"{', '.join(unseeded)} {'has' if len(unseeded) == 1 else 'have'} one unsuffixed run and "
                       f"{', '.join(m for m in spec.members if m not in unseeded)} seed runs (<trainer>_seed<S>): no "
                       f"seed to pair them on")
    shared = sorted(set.intersection(*(set(s) for s in seeded.values())))
    if not shared:
        raise _Problem("its members share no training seed (" + "; ".join(
            f"{m}: {' '.join(map(str, sorted(s)))}" for m, s in seeded.items()) + ")")
    notes = []
    if any(set(s) != set(shared) for s in seeded.values()):
        notes.append(f"ensemble {spec.name}: its members' seeds differ (" + "; ".join(
            f"{m}: {' '.join(map(str, sorted(s)))}" for m, s in seeded.items())
            + f"): built for the seeds they share, {' '.join(map(str, shared))}")
    return [(seed, [seeded[m][seed] for m in spec.members]) for seed in shared], notes


class _Problem(Exception):
    """Why an ensemble cannot be built (an error when it was named, a note for ``--ensemble all``)."""


def _probability_cases(folder: str, file_ending: str) -> List[str]:
    """The cases of a finished fold, checked to have nnU-Net's saved probabilities (``<case>.npz`` and
    ``<case>.pkl``) in ``validation/`` for every case its ``summary.json`` scores; ``_Problem`` naming the folder
    otherwise."""
    validation = os.path.join(folder, "validation")
    summary = read_json(os.path.join(validation, "summary.json"), "validation summary")
    try:
        cases = sorted(results.case_id(e, file_ending) for e in summary["metric_per_case"])
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"validation summary {validation}/summary.json is not an nnU-Net validation summary "
                        f"({type(e).__name__} {e})") from None
    present = set(os.listdir(validation))
    without = [c for c in cases if f"{c}.npz" not in present or f"{c}.pkl" not in present]
    if len(without) == len(cases):
        raise _Problem(f"no validation probabilities (<case>.npz and .pkl from nnU-Net's --npz) in {validation}; "
                       f"{NPZ_HINT}")
    if without:
        raise _Problem(f"{validation} has the probabilities (<case>.npz and .pkl) of {len(cases) - len(without)} of "
                       f"{len(cases)} validation cases (missing: {' '.join(without[:5])}"
                       f"{' ...' if len(without) > 5 else ''}); {NPZ_HINT}")
    extra = sorted(f[:-4] for f in present if f.endswith(".npz") and f[:-4] not in set(cases))
    if extra:  # nnU-Net's ensemble_folders averages every <case>.npz it finds
        raise _Problem(f"{validation} has probabilities of cases its summary.json does not score "
                       f"({' '.join(extra[:5])}{' ...' if len(extra) > 5 else ''})")
    return cases


def plan(specs: Sequence[Spec], results_root: str, dataset_name: str, plans: str, configuration: str,
         folds: Sequence[int], output: str, file_ending: str) -> Tuple[List[EnsembleRun], List[str]]:
    """Which ensemble folds to build (every fold, and shared seed, in which each member's run is finished) and the
    notes: ensembles left out and why (``--ensemble all``), folds not built, seeds not shared. A named ensemble
    that cannot be built raises UserError naming the folder or runs."""
    planned, notes = [], []
    for spec in specs:
        try:
            own, own_notes = _plan_one(spec, results_root, dataset_name, plans, configuration, folds, output,
                                       file_ending)
        except _Problem as problem:
            if spec.explicit:
                raise UserError(f"--ensemble {spec.name}: {problem}") from None
            notes.append(f"ensemble {spec.name} left out: {problem}")
            continue
        planned += own
        notes += own_notes
    return planned, notes


def _plan_one(spec: Spec, results_root: str, dataset_name: str, plans: str, configuration: str,
              folds: Sequence[int], output: str, file_ending: str) -> Tuple[List[EnsembleRun], List[str]]:
    pairs, notes = _seed_pairs(spec, results_root, dataset_name, plans, configuration)
    runs = []
    for seed, member_runs in pairs:
        run = spec.name if seed is None else f"{spec.name}_seed{seed}"
        for fold in folds:
            members = [Member(trainer, member_run, results.fold_folder(results_root, dataset_name, member_run, plans,
                                                                        configuration, fold))
                       for trainer, member_run in zip(spec.members, member_runs)]
            unfinished = [(m, results.fold_status(m.folder)) for m in members]
            unfinished = [(m, status) for m, status in unfinished if status != results.FINISHED]
            if unfinished:
                notes.append(f"{run} fold {fold}: not built (" + ", ".join(
                    f"{m.run} fold {fold} {status}" for m, status in unfinished) + ")")
                continue
            budgets = []
            for m in members:
                try:
                    budgets.append(results.recorded_budget(m.folder))
                except UserError as e:
                    raise _Problem(f"the budget of {m.run} fold {fold} is unknown ({e}): an ensemble is built only "
                                   f"from runs of one budget") from None
            if len(set(budgets)) > 1:
                raise _Problem("its members were trained with different budgets (" + "; ".join(
                    f"{m.run} fold {fold}: {b.short()} epochs x iterations" for m, b in zip(members, budgets))
                    + "): an ensemble is built only from runs of one budget")
            cases = [_probability_cases(m.folder, file_ending) for m in members]
            if any(c != cases[0] for c in cases[1:]):
                raise _Problem(f"its members' fold {fold} validated different cases (" + "; ".join(
                    f"{m.run}: {len(c)}" for m, c in zip(members, cases)) + "): not the same split")
            runs.append(EnsembleRun(spec.name, run, seed, fold, report_folder(output, run, fold), members,
                                    budgets[0], cases[0]))
    if not runs:
        why = [n.split("not built (", 1)[-1].rstrip(")") for n in notes if "not built (" in n]
        raise _Problem(f"no fold in which every member's run is finished (folds {' '.join(map(str, folds))}: "
                       f"{'; '.join(why[:3])}{' ...' if len(why) > 3 else ''})")
    return runs, notes


# ---- building and scoring (nnU-Net's ensembling and evaluation) ----------------------------------------------
@dataclass
class Context:
    """What nnU-Net's final validation uses to export and score a fold: the plans' label manager and image
    reader/writer, the dataset.json, the references and the labels or regions with the ignore label."""
    plans_path: str
    dataset_json_path: str
    plans: dict
    dataset_json: dict
    gt_folder: str
    file_ending: str
    reader_writer: object
    label_manager: object
    labels_or_regions: list
    ignore_label: Optional[int]


def context(dataset_name: str, plans: str) -> Context:
    """The preprocessed dataset's plans and dataset.json (what nnU-Net's trainer reads) made into nnU-Net's label
    manager and reader/writer; one clear UserError naming the file when they do not make one."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = os.path.join(results.nnunet_folder("preprocessed"), dataset_name)
    plans_path = results.plans_file(dataset_name, plans)
    dataset_json_path = os.path.join(preprocessed, "dataset.json")
    plans_dict = read_json(plans_path, "plans file")
    dataset_json = read_json(dataset_json_path, "dataset.json")
    manager = PlansManager(plans_dict)
    try:
        reader_writer = manager.image_reader_writer_class()
    except Exception as e:  # nnU-Net raises KeyError / RuntimeError for a missing or unknown reader
        raise UserError(f"plans file {plans_path}: no usable image_reader_writer for exporting the ensemble "
                        f"({type(e).__name__}: {e})") from None
    try:
        label_manager = manager.get_label_manager(dataset_json)
    except Exception as e:
        raise UserError(f"{dataset_json_path}: nnU-Net's label manager refuses its labels ({type(e).__name__}: "
                        f"{e})") from None
    labels_or_regions = label_manager.foreground_regions if label_manager.has_regions else \
        label_manager.foreground_labels
    return Context(plans_path, dataset_json_path, plans_dict, dataset_json, os.path.join(preprocessed,
                   "gt_segmentations"), dataset_json.get("file_ending", ".nii.gz"), reader_writer, label_manager,
                   list(labels_or_regions), label_manager.ignore_label)


def _stat(path: str) -> Optional[List[int]]:
    try:
        s = os.stat(path)
    except OSError:
        return None
    return [int(s.st_size), int(s.st_mtime_ns)]


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def inputs(run: EnsembleRun, ctx: Context) -> dict:
    """What the ensemble fold rests on; equal records mean the result can be reused."""
    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
    except Exception:  # not installed as a distribution (a source checkout): rebuilt whenever compare runs
        nnunet_version = None
    members = []
    for m in run.members:
        validation = os.path.join(m.folder, "validation")
        files = {f"{case}{suffix}": _stat(os.path.join(validation, case + suffix))
                 for case in run.cases for suffix in (".npz", ".pkl")}
        checkpoints = {name: _stat(os.path.join(m.folder, name)) for name in ("checkpoint_final.pth",)
                       if os.path.isfile(os.path.join(m.folder, name))}
        members.append({"trainer": m.trainer, "run": m.run, "folder": m.folder, "probabilities": files,
                        "checkpoints": checkpoints})
    return {"format": RECORD_FORMAT, "nnunetv2": nnunet_version, "fold": run.fold, "members": members,
            "plans": {"file": ctx.plans_path, "sha256": _digest(ctx.plans_path)},
            "dataset_json": {"file": ctx.dataset_json_path, "sha256": _digest(ctx.dataset_json_path)},
            "references": {case: _stat(os.path.join(ctx.gt_folder, case + ctx.file_ending)) for case in run.cases},
            "labels_or_regions": [[int(v) for v in r] if isinstance(r, (list, tuple)) else int(r)
                                  for r in ctx.labels_or_regions],
            "ignore_label": None if ctx.ignore_label is None else int(ctx.ignore_label)}


def build(run: EnsembleRun, ctx: Context, num_processes: int = DEFAULT_PROCESSES) -> bool:
    """Build and score one ensemble fold unless a previous one with the same inputs is there; True when reused."""
    wanted = json.loads(json.dumps(inputs(run, ctx)))
    record_path = os.path.join(run.folder, RECORD_FILE)
    summary_path = os.path.join(run.validation, "summary.json")
    if os.path.isfile(record_path) and os.path.isfile(summary_path):
        try:
            if read_json(record_path, "ensemble record").get("inputs") == wanted:
                run.reused = True
                return True
        except UserError:
            pass  # unreadable: built again
    missing = [c for c in run.cases if not os.path.isfile(os.path.join(ctx.gt_folder, c + ctx.file_ending))]
    if missing:
        raise UserError(f"{ctx.gt_folder}: no reference segmentation for {' '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of the {run.run} fold {run.fold} "
                        f"validation cases): the ensemble cannot be scored")
    with atomic_folder(run.folder, f"ensemble {run.run} fold {run.fold}") as tmp:
        validation = os.path.join(tmp, "validation")
        _merge([os.path.join(m.folder, "validation") for m in run.members], validation, run.cases, ctx,
               num_processes)
        summary = _evaluate(validation, ctx, num_processes)
        for entry in summary["metric_per_case"]:  # where the prediction lies once the folder is in place
            entry["prediction_file"] = os.path.join(run.validation, os.path.basename(entry["prediction_file"]))
        from nnunetv2.evaluation.evaluate_predictions import save_summary_json

        save_summary_json(summary, os.path.join(validation, "summary.json"))
        _verify(validation, run, ctx)
        write_json(os.path.join(tmp, RECORD_FILE), {
            "what": f"ensemble {run.trainer} ({run.run}) fold {run.fold}: nnU-Net's validation probabilities of "
                    f"{', '.join(m.run for m in run.members)} averaged per case (nnunetv2.ensembling.ensemble), "
                    f"exported with the plans' label manager and scored with nnU-Net's evaluation against "
                    f"gt_segmentations", "inputs": wanted}, "ensemble record")
    run.reused = False
    return False


def _merge(member_folders: List[str], output: str, cases: Sequence[str], ctx: Context, num_processes: int) -> None:
    """nnU-Net's ``ensemble_folders`` (a pool of ``num_processes`` workers), or with 0 its per-case step
    ``merge_files`` here, case after case; both keep the averaged probabilities (``save_npz``)."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.ensembling.ensemble import ensemble_folders, merge_files

    if num_processes > 0:
        ensemble_folders(member_folders, output, save_merged_probabilities=True, num_processes=num_processes,
                         dataset_json_file_or_dict=ctx.dataset_json, plans_json_file_or_dict=ctx.plans)
        return
    os.makedirs(output, exist_ok=True)
    save_json(ctx.dataset_json, os.path.join(output, "dataset.json"), sort_keys=False)  # as ensemble_folders
    for case in cases:
        merge_files([os.path.join(folder, f"{case}.npz") for folder in member_folders], os.path.join(output, case),
                    ctx.file_ending, ctx.reader_writer, ctx.label_manager, True)


def _evaluate(folder: str, ctx: Context, num_processes: int) -> dict:
    """nnU-Net's ``compute_metrics_on_folder`` (``num_processes`` workers), or with 0 its per-case step
    ``compute_metrics`` here and the summary put together as ``compute_metrics_on_folder`` (nnU-Net 2.8) does."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, compute_metrics_on_folder

    if num_processes > 0:
        return compute_metrics_on_folder(ctx.gt_folder, folder, None, ctx.reader_writer, ctx.file_ending,
                                         ctx.labels_or_regions, ctx.ignore_label, num_processes, chill=True)
    import numpy as np
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    predictions = sorted(f for f in os.listdir(folder) if f.endswith(ctx.file_ending))
    per_case = [compute_metrics(os.path.join(ctx.gt_folder, f), os.path.join(folder, f), ctx.reader_writer,
                                ctx.labels_or_regions, ctx.ignore_label) for f in predictions]
    names = list(per_case[0]["metrics"][ctx.labels_or_regions[0]].keys())
    means = {r: {m: np.nanmean([c["metrics"][r][m] for c in per_case]) for m in names} for r in ctx.labels_or_regions}
    foreground = {m: np.mean([means[k][m] for k in means if k not in (0, "0")]) for m in names}
    for item in (*per_case, means, foreground):
        recursive_fix_for_json_export(item)
    return {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground}


def _verify(validation: str, run: EnsembleRun, ctx: Context) -> None:
    """The written folder read back: the summary parses and scores every case, each case's segmentation and averaged
    probabilities exist and are not empty (the evaluation has read every segmentation back)."""
    summary = read_json(os.path.join(validation, "summary.json"), "ensemble summary")
    scored = sorted(results.case_id(e, ctx.file_ending) for e in summary.get("metric_per_case", []))
    if scored != sorted(run.cases):
        raise UserError(f"{validation}/summary.json scores {len(scored)} cases, expected the {len(run.cases)} "
                        f"validation cases of {run.run} fold {run.fold}")
    for case in run.cases:
        for name in (case + ctx.file_ending, case + ".npz"):
            path = os.path.join(validation, name)
            if not os.path.isfile(path) or os.path.getsize(path) == 0:
                raise UserError(f"{path}: not written by nnU-Net's ensembling (missing or empty)")


def check_processes(num_processes) -> int:
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 0:
        raise UserError(f"--ensemble-processes must be 0 (in this process) or a positive whole number, got "
                        f"{num_processes!r}")
    return num_processes


def context_file_ending(dataset_name: str) -> str:
    """The dataset's file ending (preprocessed ``dataset.json``), which names its cases' files."""
    path = os.path.join(results.nnunet_folder("preprocessed"), dataset_name, "dataset.json")
    return read_json(path, "dataset.json").get("file_ending", ".nii.gz")


def build_all(runs: Sequence[EnsembleRun], dataset_name: str, plans: str,
              num_processes: int = DEFAULT_PROCESSES) -> None:
    """Build (or reuse) every planned ensemble fold."""
    check_processes(num_processes)
    if not runs:
        return
    ctx = context(dataset_name, plans)
    for run in runs:
        build(run, ctx, num_processes)


def carry(output: str, new_output: str, runs: Sequence[EnsembleRun]) -> None:
    """Into the report folder about to replace ``output`` (``new_output``), the ensemble folds this comparison used,
    as hard links (a copy where the file system has none): their paths stay valid once it is in place."""
    for run in runs:
        relative = os.path.relpath(run.folder, output)
        target = os.path.join(new_output, relative)
        if os.path.isdir(target):
            continue
        try:
            shutil.copytree(run.folder, target, copy_function=_link_or_copy)
        except (OSError, shutil.Error) as e:
            raise UserError(f"{run.folder}: cannot carry the ensemble into the new report folder ({e})") from None


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def describe(runs: Sequence[EnsembleRun]) -> List[str]:
    """The report's lines on what each ensemble rests on (under the list of contestants)."""
    by_name: Dict[str, List[EnsembleRun]] = {}
    for run in runs:
        by_name.setdefault(run.trainer, []).append(run)
    lines = []
    for name, own in by_name.items():
        members = list(dict.fromkeys(m.trainer for m in own[0].members))
        seeds = sorted({r.seed for r in own if r.seed is not None})
        folds = sorted({r.fold for r in own})
        reused = sum(r.reused for r in own)
        lines.append(
            f"- **{name}** is an ensemble, not a trained network: for every fold"
            + (f" and seed ({' '.join(map(str, seeds))}: each member's run of that seed)" if seeds else "")
            + f" the class probabilities that nnU-Net's final validation saved (`--npz`: validation/<case>.npz) of "
              f"{' and '.join(members)} are averaged per case (nnU-Net's `nnunetv2.ensembling.ensemble`, as "
              f"`nnUNetv2_ensemble`), the segmentation is exported with the plans' label manager and scored with "
              f"nnU-Net's evaluation (`compute_metrics_on_folder`) against the dataset's gt_segmentations, as a "
              f"fold's final validation is. Its members share the budget {own[0].budget.short()} epochs x iterations; "
              f"{len(own)} ensemble fold{'s' if len(own) != 1 else ''} (folds {' '.join(map(str, folds))}), "
              f"{reused} reused from a previous comparison with the same inputs; in `{FOLDER}/{own[0].run}/` of this "
              f"folder{' and its seed siblings' if seeds else ''}. It has no training curve or cost of its own.")
    return lines
