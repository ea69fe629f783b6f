"""Write files so that readers see either the old file or the whole new one, never a part.

Every write goes to a temporary file in the destination's directory (same file system), is flushed
to disk, then renamed over the destination; a crash leaves at most a stray ``.tmp-*`` file that no
reader ever opens. Temp names carry the writer's host and pid, so ``remove_stale_temp_files`` can
delete what killed writers left behind without touching a live writer's file.
"""
from __future__ import annotations

import io
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIX = ".tmp-"
# A temp file of a writer on another machine (shared folders) is only removed when this old.
FOREIGN_TEMP_AGE_S = 24 * 3600
_TEMP_NAME = re.compile(r"^\.tmp-.*\.(?P<host>[A-Za-z0-9._-]+)~(?P<pid>\d+)~[^.~]*$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.{_writer_tag()}~", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; exports and reports are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _writer_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
    return f"{host}~{os.getpid()}"


def remove_stale_temp_files(root: str | os.PathLike, *, now: float | None = None) -> list[Path]:
    """Delete ``.tmp-*`` files under ``root`` whose writer is gone; returns what was removed.

    A writer on this host is gone when its pid no longer runs; a writer elsewhere is presumed gone after
    ``FOREIGN_TEMP_AGE_S``. Files that do not carry a writer tag (an older version's) count as foreign.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    host = _writer_tag().split("~")[0]
    now = time.time() if now is None else now
    removed = []
    for path in root.rglob(f"{TEMP_PREFIX}*"):
        if not path.is_file():
            continue
        match = _TEMP_NAME.match(path.name)
        if match and match["host"] == host:
            stale = not _pid_alive(int(match["pid"]))
        else:
            try:
                stale = now - path.stat().st_mtime > FOREIGN_TEMP_AGE_S
            except OSError:
                continue
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
