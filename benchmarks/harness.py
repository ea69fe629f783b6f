"""What the benchmark scripts share: study specs read and written as tables, ``python -m search.run`` workers,
and process memory read from /proc.

Specs are edited as data (``tomllib`` in, ``toml_text`` out), never patched as text: a replaced line that is
not there, or is there twice, cannot go unnoticed. ``toml_text`` writes what a spec holds: tables of keys whose
values are strings, numbers, booleans, lists and inline tables (the ``[space]`` entries); comments are not kept.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"  # the shipped specs
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


# -- study specs --------------------------------------------------------------------------------------------------
def read_spec(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A spec file's tables, as ``tomllib`` parses them."""
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))


def toml_value(value: Any) -> str:
    """``value`` as a TOML value: inline tables and lists of the types below, strings, booleans and numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else f"{value:+}")
    if isinstance(value, str):  # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {pairs} }}" if pairs else "{}"
    raise TypeError(f"{value!r}: a {type(value).__name__} has no TOML form here")


def toml_key(key: str) -> str:
    """``key`` bare where TOML allows it, else quoted (a spec's dotted TrainConfig keys are quoted)."""
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """The TOML text of ``tables`` (table name -> its keys), each table under its header."""
    return "\n".join(f"[{toml_key(name)}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in keys.items())
                     for name, keys in tables.items())


def write_spec(path: str | os.PathLike, tables: dict[str, dict[str, Any]]) -> Path:
    """Write ``tables`` as the spec file ``path`` (its folder made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(tables), encoding="utf-8")
    return path


def with_study(tables: dict[str, dict[str, Any]], **study: Any) -> dict[str, dict[str, Any]]:
    """A copy of ``tables`` with these ``[study]`` keys set (e.g. ``epochs=2, data_scale=0.05``)."""
    return {**tables, "study": {**tables.get("study", {}), **study}}


# -- search.run workers -------------------------------------------------------------------------------------------
def search_run(study: str | os.PathLike, studies_dir: str | os.PathLike, *options: Any) -> list[str]:
    """The command line of one ``python -m search.run`` worker on ``study`` in ``studies_dir``; ``options`` are
    further arguments, e.g. ``"--trials", 3``."""
    return [sys.executable, "-m", "search.run", "--study", str(study), "--studies-dir", str(studies_dir),
            *map(str, options)]


def run_worker(command: list[str], log: Path, **popen: Any) -> None:
    """Run one worker to its end from the repository, its output appended to ``log``; an exit other than 0 raises
    naming the log and its last line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as stream:
        code = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT, **popen).returncode
    if code != 0:
        raise RuntimeError(f"a worker exited {code}; {log}: {last_line(log)}")


def last_line(path: Path) -> str:
    """The last line of ``path`` that is not blank, stripped (what a failed process said last)."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def exported_test_score(study: str, studies: Path, options: list[str], data_dir: Path, log: Path
                        ) -> tuple[float, dict[str, Any], float, float]:
    """``python -m search.best --study STUDY --export OPTIONS`` into a temporary folder (its output appended to
    ``log``), the generated kernel.py run as its own process on ``data_dir``'s held-out test clips and scored against
    its test_labels.csv: (test lwlrap, the export's export.json, export seconds, kernel seconds)."""
    import tempfile

    from search.kaggle.export import run_kernel
    from search.kaggle.score import score_submission

    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        started = time.perf_counter()
        with open(log, "a", encoding="utf-8") as stream:
            code = subprocess.run([sys.executable, "-m", "search.best", "--study", study, "--studies-dir",
                                   str(studies), "--export", *options, "--out", str(export)], cwd=REPO,
                                  stdout=stream, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"{study}: search.best --export {' '.join(options)} exited {code}; {log}: "
                               f"{last_line(log)}")
        export_s = time.perf_counter() - started
        exported = json.loads((export / "export.json").read_text())
        submission = Path(tmp) / "submission.csv"
        started = time.perf_counter()
        run_kernel(export, data_dir / "test", data_dir / "sample_submission.csv", submission, device="cpu")
        test = score_submission(submission, data_dir / "test_labels.csv").lwlrap
    return test, exported, export_s, time.perf_counter() - started


class Fleet:
    """Workers started from one command line, each writing to its own log ``logs/<prefix>-<i>.log``."""

    def __init__(self, command: list[str], logs: Path, *, prefix: str = "worker", env: dict[str, str] | None = None
                 ) -> None:
        self.command, self.logs, self.prefix, self.env = command, logs, prefix, env
        self.procs: list[subprocess.Popen] = []
        self.hung = 0
        logs.mkdir(parents=True, exist_ok=True)

    def log(self, index: int) -> Path:
        return self.logs / f"{self.prefix}-{index}.log"

    def start(self, *extra: str) -> subprocess.Popen:
        with open(self.log(len(self.procs)), "w", encoding="utf-8") as stream:
            proc = subprocess.Popen([*self.command, *extra], cwd=REPO, env=self.env, stdout=stream,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for every worker; one still running ``timeout_s`` from now is hung: counted, then killed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.hung += 1
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        for proc in self.alive():
            proc.kill()
        self.wait()

    def check(self) -> None:
        """Raise naming the first worker that exited other than 0, with its log's last line."""
        for index, proc in enumerate(self.procs):
            if proc.returncode != 0:
                raise RuntimeError(f"{self.prefix} {index} of {len(self.procs)} exited {proc.returncode} "
                                   f"({self.log(index)}): {last_line(self.log(index))}")

    def log_text(self) -> str:
        return "".join(self.log(i).read_text(encoding="utf-8", errors="replace") for i in range(len(self.procs)))


# -- process memory, from /proc -----------------------------------------------------------------------------------
def parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:  # the command name in (...) may hold spaces and parentheses: the fields follow the last ")"
                found[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # ended while read
                continue
    return found


def children_of(pids: set[int]) -> list[int]:
    """The live processes whose parent is one of ``pids``."""
    return [pid for pid, parent in parents().items() if parent in pids]


def process_tree(root: int) -> set[int]:
    """``root`` and all its live descendants."""
    by_parent: dict[int, list[int]] = {}
    for pid, parent in parents().items():
        by_parent.setdefault(parent, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        kids = [kid for kid in by_parent.get(frontier.pop(), []) if kid not in tree]
        tree.update(kids)
        frontier += kids
    return tree


def status_kb(field: str, pid: int | str = "self") -> int:
    """A kB field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...); 0 for a process gone or a field absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_and_pss(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) bytes of a live process from ``/proc/<pid>/smaps_rollup``; None once it is gone. PSS shares
    each shared page among the processes that map it."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()[1:] if ":" in line}
    return fields.get("Rss", 0), fields.get("Pss", 0)


def processes_with_environment(entry: str) -> list[int]:
    """Live processes other than this one whose environment holds ``entry`` (``NAME=value``)."""
    found = []
    for pid in parents():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if entry.encode() in environ.split(b"\0") and pid != os.getpid():
            found.append(pid)
    return found
