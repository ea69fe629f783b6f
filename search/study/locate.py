"""``--study NAME`` (with ``--studies-dir``, ``--storage``, ``--artifacts``) -> where that study's things are.

One resolver for every command, so they agree on a spec whose ``[study] name`` differs from its file name: the
study is stored, and its folder made, under the spec's name; ``--study`` names the spec file (or is a path to one).
Without a spec file (a study read from another machine's storage) ``--study`` is the stored name itself.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from search.spec import SpecError, StudySpec, find_spec, load_spec
from search.study.artifacts import TrialFiles, open_artifact_store
from search.study.record import StudyHandle, load_study
from search.study.storage import default_storage_url, studies_dir


@dataclass(frozen=True)
class StudyLocation:
    name: str  # the study's name in storage and its folder's name: the spec's [study] name, else --study
    spec: StudySpec | None  # None: no spec file for it in the studies folder
    studies: Path
    storage: str | None  # --storage; None = the default SQLite file <studies>/<name>.db
    artifacts: str | None  # --artifacts; None = <folder>/artifacts

    @property
    def folder(self) -> Path:
        """``<studies>/<name>``: trial folders, artifacts, exports and reports."""
        return self.studies / self.name

    def storage_url(self) -> str:
        """The storage to write to (a worker): ``--storage``, else the default SQLite file (created)."""
        return self.storage or default_storage_url(self.name, self.studies)

    def open(self) -> StudyHandle:
        """The existing study (readers): never creates one; ``StudyNotFoundError`` names what exists."""
        return load_study(self.name, self.storage, self.studies)

    @property
    def artifacts_location(self) -> str:
        """``--artifacts``, else ``<folder>/artifacts``."""
        return self.artifacts or str(self.folder.resolve() / "artifacts")

    def artifact_store(self):
        return open_artifact_store(self.artifacts_location)

    def trial_files(self, uid: str) -> TrialFiles:
        return TrialFiles(self.artifact_store(), uid)

    def reader_files(self, handle: StudyHandle) -> TrialFiles:
        """The study's trial files for readers (export, ensemble, report), inherited trials' read in place."""
        return self.trial_files(handle.uid()).with_references(handle.study.get_trials(deepcopy=False))


def locate(study: str, studies: str | os.PathLike | None = None, storage: str | None = None,
           artifacts: str | None = None, *, spec_required: bool = False) -> StudyLocation:
    """Resolve ``--study``; ``spec_required`` (a worker) turns a missing spec file into the ``SpecError`` that
    lists the specs there. A spec that exists but is invalid always raises."""
    folder = studies_dir(studies)
    try:
        path = find_spec(study, folder)
    except SpecError:  # no <folder>/<study>.toml
        if spec_required:
            raise
        return StudyLocation(study, None, folder, storage, artifacts)
    spec = load_spec(path)
    return StudyLocation(spec.name, spec, folder, storage, artifacts)


def locate_args(args: argparse.Namespace, *, spec_required: bool = False) -> StudyLocation:
    """``locate`` over the arguments ``search.study.storage.add_study_arguments`` added."""
    return locate(args.study, args.studies_dir, args.storage, args.artifacts, spec_required=spec_required)
