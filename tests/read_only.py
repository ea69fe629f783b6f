"""A real read-only folder for tests that run as root: a folder with mode 0o555, written to by a child process.

Root ignores permission bits, so as root the child runs without the two capabilities that let it
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the kernel then refuses its writes with EACCES exactly as it does a user's.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_root_file_access() -> None:
    """In the child before it runs the command: root's override of file permissions goes at its exec."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(*argv: str) -> subprocess.CompletedProcess:
    """``python ARGV`` in the repository, subject to file permissions even when the tests run as root."""
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=_without_root_file_access)


@pytest.fixture()
def read_only(tmp_path):
    """A folder with mode 0o555 (given back its write bit at the end, so tmp_path can be cleaned)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line a command ended on (after any progress lines), exit 2, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    return lines[-1]

