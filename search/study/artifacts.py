"""A trial's files in Optuna's artifact store, so they travel with the study between machines.

Two kinds of files, one store:

- **working files** (``last.pth``, ``best.pth``, ``val_predictions.npz``, ``config.json``) live under
  fixed ids ``<study uid>/<trial number>/<name>`` and are overwritten while the trial trains. A retried
  trial resumes from its predecessor's, on any machine that reaches the store; ``search.best`` and the
  ensemble read weights and predictions from them. Checkpoint retention deletes them.
- **registered files**: when a trial finishes, its ``config.json`` and ``val_predictions.npz`` are also
  uploaded with ``optuna.artifacts.upload_artifact``, so optuna-dashboard lists them on the trial's page.

The default store is a folder next to the study (``studies/<name>/artifacts``); ``--artifacts`` takes
another folder or an ``s3://bucket`` / ``gs://bucket`` URL (Optuna's boto3 / GCS stores).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Protocol

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from search.study.folds import parse_fold_file
from trainer import atomic_path

WORKING_FILES = ("last.pth", "best.pth", "val_predictions.npz", "config.json")
REGISTERED_FILES = ("config.json", "val_predictions.npz")


class ArtifactStore(Protocol):
    def open_reader(self, artifact_id: str) -> BinaryIO: ...
    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...
    def remove(self, artifact_id: str) -> None: ...


class AtomicFileSystemArtifactStore:
    """A file-system artifact store (Optuna's store protocol, the layout of its ``FileSystemArtifactStore``:
    ``<base>/<artifact id>``) whose writes are atomic (temp + rename) and may use sub-folders: a worker killed
    mid-write leaves the previous version readable, never half a checkpoint. Its own class rather than a
    subclass, because mapping an id to a path is private in Optuna's."""

    def __init__(self, base_path: str | os.PathLike) -> None:
        self.base_path = Path(base_path)

    def path_of(self, artifact_id: str) -> Path:
        """The file of ``artifact_id``; an absolute id or one that leaves the base folder is refused."""
        path = self.base_path / artifact_id
        base = os.path.abspath(self.base_path)
        if os.path.isabs(artifact_id) or os.path.commonpath([base, os.path.abspath(path)]) != base:
            raise ValueError(f"invalid artifact id {artifact_id!r}: it must stay inside {self.base_path}")
        return path

    def open_reader(self, artifact_id: str) -> BinaryIO:
        try:
            return open(self.path_of(artifact_id), "rb")
        except FileNotFoundError as error:
            raise ArtifactNotFound(f"{artifact_id}: not found") from error

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with atomic_path(self.path_of(artifact_id)) as tmp, open(tmp, "wb") as handle:
            shutil.copyfileobj(content_body, handle)

    def remove(self, artifact_id: str) -> None:
        try:
            os.remove(self.path_of(artifact_id))
        except FileNotFoundError as error:
            raise ArtifactNotFound(f"{artifact_id}: not found") from error

    def put_file(self, artifact_id: str, source: Path) -> None:
        """Store a local file; a hard link where possible (the trainer replaces its files by rename, so the
        stored version never changes under the link), else a copy."""
        with atomic_path(self.path_of(artifact_id)) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(source, tmp)

    def size(self, artifact_id: str) -> int | None:
        try:
            return self.path_of(artifact_id).stat().st_size
        except FileNotFoundError:
            return None


def open_artifact_store(location: str | os.PathLike) -> ArtifactStore:
    """A folder (created if needed), ``file://`` path, ``s3://bucket`` or ``gs://bucket``."""
    text = str(location)
    if text.startswith("s3://") or text.startswith("gs://"):
        bucket = text.split("://", 1)[1].strip("/")
        if not bucket or "/" in bucket:
            raise ValueError(f"--artifacts {text!r}: expected s3://BUCKET or gs://BUCKET (no sub-path)")
        try:
            if text.startswith("s3://"):
                from optuna.artifacts import Boto3ArtifactStore

                return Boto3ArtifactStore(bucket)
            from optuna.artifacts import GCSArtifactStore

            return GCSArtifactStore(bucket)
        except ImportError as exc:
            raise ValueError(f"--artifacts {text!r}: needs the {exc.name} package (pip install {exc.name})") from None
    path = Path(text.removeprefix("file://")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return AtomicFileSystemArtifactStore(path)


FILES_FROM_ATTR = "files_from"  # an inherited trial's user attr: {"artifacts", "uid", "trial"} of its files


class TrialFiles:
    """The files of one study's trials in ``store``, addressed by trial number and file name. A trial inherited
    from an earlier round (``search.study.inherit``) has its files where that round kept them: ``with_references``
    reads those in place, and nothing here ever writes or removes them."""

    def __init__(self, store: ArtifactStore, study_uid: str) -> None:
        self.store = store
        self.study_uid = study_uid
        self.references: dict[int, tuple[TrialFiles, int]] = {}

    def with_references(self, trials: Iterable[FrozenTrial]) -> "TrialFiles":
        """These files plus, for each inherited trial of ``trials``, its own files read in place (readers)."""
        stores: dict[str, ArtifactStore] = {}
        for trial in trials:
            source = trial.user_attrs.get(FILES_FROM_ATTR)
            if not isinstance(source, Mapping) or not {"artifacts", "uid", "trial"} <= set(source):
                continue
            location = str(source["artifacts"])
            if location not in stores:
                try:
                    stores[location] = open_artifact_store(location)
                except (OSError, ValueError):
                    continue  # the earlier round's store is gone or unreachable: the trial has no files here
            self.references[trial.number] = (TrialFiles(stores[location], str(source["uid"])), int(source["trial"]))
        return self

    def artifact_id(self, number: int, name: str) -> str:
        if name not in WORKING_FILES and parse_fold_file(name) is None:
            raise ValueError(f"{name!r} is not a trial file; expected one of {', '.join(WORKING_FILES)} or a fold's "
                             f"fold<K>-<file>")
        return f"{self.study_uid}/{number}/{name}"

    def push(self, number: int, source: Path, name: str | None = None) -> None:
        """Store (or replace) trial ``number``'s file ``name`` (default ``source.name``) from ``source``."""
        artifact_id = self.artifact_id(number, name or source.name)
        if isinstance(self.store, AtomicFileSystemArtifactStore):
            self.store.put_file(artifact_id, source)
        else:
            with open(source, "rb") as handle:
                self.store.write(artifact_id, handle)

    def pull(self, number: int, name: str, dest_dir: Path, as_name: str | None = None) -> Path | None:
        """Copy trial ``number``'s ``name`` to ``dest_dir/name`` (or ``dest_dir/as_name``) atomically; None when
        it is not stored."""
        if number in self.references:
            files, own = self.references[number]
            return files.pull(own, name, dest_dir, as_name)
        try:
            reader = self.store.open_reader(self.artifact_id(number, name))
        except ArtifactNotFound:
            return None
        dest = dest_dir / (as_name or name)
        with reader, atomic_path(dest) as tmp, open(tmp, "wb") as handle:
            shutil.copyfileobj(reader, handle)
        return dest

    def has(self, number: int, name: str) -> bool:
        if number in self.references:
            files, own = self.references[number]
            return files.has(own, name)
        if isinstance(self.store, AtomicFileSystemArtifactStore):
            return self.store.size(self.artifact_id(number, name)) is not None
        try:
            self.store.open_reader(self.artifact_id(number, name)).close()
        except ArtifactNotFound:
            return False
        return True

    def remove(self, number: int, name: str) -> bool:
        """Delete a stored file; False when it was not there (or is an earlier round's: never removed here)."""
        if number in self.references:
            return False
        try:
            self.store.remove(self.artifact_id(number, name))
        except ArtifactNotFound:
            return False
        return True

    def register(self, trial: optuna.Trial, source: Path) -> str:
        """Upload ``source`` as an artifact of the (running) trial, listed by optuna-dashboard."""
        return upload_artifact(artifact_store=self.store, file_path=str(source), study_or_trial=trial)

    def disk_bytes(self) -> int | None:
        """Bytes this study's files take in a folder store (None for remote stores)."""
        if not isinstance(self.store, AtomicFileSystemArtifactStore):
            return None
        root = self.store.base_path / self.study_uid
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
