"""What every ``python -m search.X`` command shares: its study arguments, the user-error base class, and
``run_command``, the one place where a mistake a user can fix becomes one line on stderr and exit status 2.

The packages below the commands (``spec``, ``study``, ``kaggle``, ...) and the trainer cannot import this module
(the layers run one way), so their errors keep their own classes; ``USER_ERRORS`` is the one list of them.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Callable, Mapping

from search.kaggle.export import KernelRunError
from search.kaggle.kernel import KernelGenerationError
from search.study.join import UsageError
from search.study.storage import StorageError, add_study_arguments

__all__ = ["USER_ERRORS", "UserError", "add_data_argument", "add_study_arguments", "check_writable_folder",
           "os_error_line", "run_command"]


class UserError(ValueError):
    """A mistake the user can fix (a flag, a combination of flags, the state of a study): the message names
    it and says what to do. Commands raise it; ``run_command`` prints it."""


# ValueError covers the trainer's ConfigError, DataError, CheckpointError and the spec's SpecError; LookupError
# a study or trial that is not there. Both stay broad: the packages raise them, plain, for a user's --artifacts
# or --trial.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, ValueError, LookupError, StorageError, UsageError,
                                            KernelGenerationError, KernelRunError)

# What each filesystem error means for a path the user gave, and whether it is about writing there.
_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
            errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.ENOTDIR: "a file is where a folder is needed", errno.EEXIST: "a file is where a folder is needed",
            errno.ENOENT: "not found", errno.EISDIR: "a folder is where a file is needed"}
_WRITING = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def add_data_argument(parser: argparse.ArgumentParser, *, passed_on: bool = False) -> None:
    """``--data``: the data folder or a built-in set, resolved by ``search.study.record.resolve_data``."""
    default = "the workers' own" if passed_on else "$FAT2019_DATA, then the spec's [study] data"
    parser.add_argument("--data", help=f"FAT2019 data folder or a built-in set such as demo (default: {default})")


def run_command(body: Callable[[], int], *, writes: Mapping[str, object] | None = None,
                reads: Mapping[str, object] | None = None) -> int:
    """``body()``'s exit status; a user's mistake instead prints ``error: ...`` (one line) and returns 2.

    ``writes`` and ``reads`` map the command's path flags (``--out``) to the paths they hold: a filesystem error
    on one of them, or under it, names the path and the flag to change (``choose a writable --out``).
    """
    try:
        return body()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` closed the pipe: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 0
    except OSError as error:  # a path that cannot be written or read: the user's to fix, never a traceback
        print(f"error: {os_error_line(error, writes or {}, reads or {})}", file=sys.stderr)
        return 2


def os_error_line(error: OSError, writes: Mapping[str, object], reads: Mapping[str, object]) -> str:
    """``cannot write /x/rep: read-only file system (choose a writable --out)``: the path, why, and what to do."""
    reason = _REASONS.get(error.errno, (error.strerror or str(error)).lower())
    if error.filename is None:
        return f"{reason} ({error})" if error.strerror is None else reason
    path = Path(os.fsdecode(error.filename))
    flag, role = _flag_of(path, writes, reads)
    if role == "read":
        return f"cannot read {path}: {reason} (check {flag})"
    verb = "cannot write" if role == "write" or error.errno in _WRITING else "cannot use"
    if flag is None:
        return f"{verb} {path}: {reason}"
    todo = f"free space there or choose another {flag}" if error.errno in (errno.ENOSPC, errno.EDQUOT) \
        else f"choose a writable {flag}"
    return f"{verb} {path}: {reason} ({todo})"


def check_writable_folder(folder: Path) -> None:
    """Raise the ``OSError`` that writing into ``folder`` (made if missing) would raise, naming ``folder``: a
    long command checks its output folder first, so a read-only one is refused before any work. The nearest
    existing folder above a missing one is probed, so nothing is created here."""
    probe_in = Path(folder).absolute()
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_in))
    probe = probe_in / f".write-test-{os.getpid()}"
    try:
        probe.touch()
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(folder)) from None
    probe.unlink(missing_ok=True)


def _flag_of(path: Path, writes: Mapping[str, object],
             reads: Mapping[str, object]) -> tuple[str | None, str | None]:
    """The flag whose path holds ``path`` (the nearest one), or is made under it; with its role."""
    target = _absolute(path)
    best: tuple[int, str, str] | None = None
    for role, flags in (("write", writes), ("read", reads)):
        for flag, given in flags.items():
            if given is None or given == "":
                continue
            root = _absolute(Path(os.fspath(given)))
            if target == root or root in target.parents or target in root.parents:
                depth = len(root.parts)
                if best is None or depth > best[0]:
                    best = (depth, flag, role)
    return (best[1], best[2]) if best is not None else (None, None)


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(Path(path).expanduser().absolute()))
