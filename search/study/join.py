"""Joining a study: the first worker creates it (identity, baseline, startup trials, spec); the others check
that their spec is the one it was started with."""
from __future__ import annotations

import argparse
import sys
import time

import optuna

from search.spec import StudySpec, spec_differences
from search.study.inherit import INHERITED_ATTR, Source, inherit
from search.study.locate import StudyLocation, locate
from search.study.record import FINGERPRINT_ATTR, SPEC_ATTR, StudyNotFoundError, new_uid
from search.study.storage import create_or_load_study

SPEC_WAIT_S = 30.0  # how long a joining worker waits for the creator to store the spec


class UsageError(Exception):
    """A problem the user fixes (arguments, spec mismatch, data location): printed as one line, exit 2."""


def add_round_arguments(parser: argparse.ArgumentParser) -> None:
    """``--from OLD [--from-storage URL]``, for every command that may create a study (search.run, search.panes)."""
    parser.add_argument("--from", dest="inherit_from", metavar="OLD",
                        help="tuning in rounds: when this study is created, add the finished trials of study OLD that "
                             "its spec would train exactly (nothing is retrained; --trials counts this study's own)")
    parser.add_argument("--from-storage", metavar="URL",
                        help="where study OLD is (default: --storage, else studies/OLD.db)")


def previous_round(args: argparse.Namespace, location: StudyLocation) -> Source | None:
    """``--from OLD``: the study to inherit from and where its trials' files are (one line when it is missing);
    None without ``--from``."""
    if args.inherit_from is None:
        return None
    if args.inherit_from == location.name:
        raise UsageError(f"--from {args.inherit_from}: a study cannot inherit from itself")
    old = locate(args.inherit_from, location.studies, args.from_storage or args.storage, args.artifacts)
    try:
        handle = old.open()
    except StudyNotFoundError as exc:
        raise UsageError(f"--from {args.inherit_from}: {exc}") from None
    return Source(handle.study, old.artifacts_location, handle.uid())


def join_study(storage: optuna.storages.BaseStorage, spec: StudySpec, *,
               sampler: optuna.samplers.BaseSampler | None = None, force: bool = False,
               inherit_from: Source | None = None) -> optuna.Study:
    """Create the study or join it; refuse (UsageError) when its stored spec differs, unless ``force``.

    The creator gives the study its identity, enqueues the baseline (trial 0), inherits the finished trials
    of ``inherit_from`` (``search.study.inherit``: a revised space's next round), enqueues the startup trials near the
    baseline, and only then stores the spec, so a joiner that sees the spec also sees them: they are enqueued
    and inherited exactly once however many workers start together.
    """
    def setup(study: optuna.Study) -> None:
        study_id = storage.get_study_id_from_name(study.study_name)
        new_uid(storage, study_id)
        study.enqueue_trial(spec.baseline_params(), user_attrs={"baseline": True})
        if inherit_from is not None:
            inheritance = inherit(study, spec, inherit_from)
            storage.set_study_system_attr(study_id, INHERITED_ATTR, inheritance.record())
            print(inheritance.line(), flush=True)
        for params, changed in spec.startup_points():
            study.enqueue_trial(params, user_attrs={"startup": ", ".join(changed)})
        storage.set_study_system_attr(study_id, SPEC_ATTR, spec.canonical())
        storage.set_study_system_attr(study_id, FINGERPRINT_ATTR, spec.fingerprint())

    study, created = create_or_load_study(storage, spec.name, direction="maximize", sampler=sampler,
                                          pruner=spec.make_pruner(), on_create=setup)
    if created:
        return study
    study_id = storage.get_study_id_from_name(spec.name)
    deadline = time.monotonic() + SPEC_WAIT_S
    while FINGERPRINT_ATTR not in storage.get_study_system_attrs(study_id):
        if time.monotonic() > deadline:  # its creator died before storing the spec: adopt the study
            if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
                setup(study)
            else:
                storage.set_study_system_attr(study_id, SPEC_ATTR, spec.canonical())
                storage.set_study_system_attr(study_id, FINGERPRINT_ATTR, spec.fingerprint())
            return study
        time.sleep(0.2)
    attrs = storage.get_study_system_attrs(study_id)
    if inherit_from is not None:  # the creator inherited before it stored the spec
        _check_inherited(attrs, spec.name, inherit_from.study.study_name)
    if attrs[FINGERPRINT_ATTR] != spec.fingerprint():
        differences = spec_differences(attrs.get(SPEC_ATTR, {}), spec.canonical())
        message = (f"{spec.path} differs from the spec study {spec.name!r} was started with: "
                   + "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else ""))
        if not force:
            raise UsageError(message + " (use --force to join anyway, or another [study] name)")
        print(f"warning: {message}; joining anyway (--force)", file=sys.stderr)
    return study


def _check_inherited(attrs: dict, name: str, source: str) -> None:
    """A worker joining with ``--from``: the study inherited from that study when it was created, or refuse."""
    record = attrs.get(INHERITED_ATTR)
    if record is None or record.get("study") != source:
        had = f"from study {record['study']!r}" if record else "without --from"
        raise UsageError(f"--from {source}: study {name!r} exists already (created {had}); a study inherits only "
                         f"when it is created: give this round another [study] name")
