"""Atomic writes and the clean-up of what killed writers leave behind."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from trainer.atomic import FOREIGN_TEMP_AGE_S, atomic_path, atomic_write_text, remove_stale_temp_files


def test_a_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert (tmp_path / "a.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def _temp_of_killed_writer(folder) -> str:
    """A child process opens an atomic write, reports the temp name and is killed -9 mid-write."""
    code = ("import sys, time; from trainer.atomic import atomic_path\n"
            f"with atomic_path({str(folder / 'last.pth')!r}) as tmp:\n"
            "    tmp.write_bytes(b'partial'); print(tmp.name, flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    name = child.stdout.readline().strip()
    child.kill()
    child.wait()
    return name


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    (tmp_path / "trials" / "3").mkdir(parents=True)
    dead = _temp_of_killed_writer(tmp_path / "trials" / "3")
    with atomic_path(tmp_path / "trials" / "best.pth") as live:
        live.write_bytes(b"in progress")
        removed = remove_stale_temp_files(tmp_path)
        assert [p.name for p in removed] == [dead] and live.exists()
    assert not (tmp_path / "trials" / "3" / dead).exists()


def test_foreign_temp_files_are_removed_only_when_old(tmp_path):
    other_host = tmp_path / ".tmp-best.pth.otherbox~123~abcd"
    untagged = tmp_path / ".tmp-best.pth.q1w2e3"
    for path in (other_host, untagged):
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == []
    old = time.time() - FOREIGN_TEMP_AGE_S - 10
    os.utime(other_host, (old, old))
    assert remove_stale_temp_files(tmp_path) == [other_host] and untagged.exists()
