"""trainer's own commands on an --out they cannot write: one line naming it and the flag, exit 2, no traceback."""
from __future__ import annotations

from tests.read_only import one_error_line, read_only, run_unprivileged  # noqa: F401 - read_only is a fixture


def test_train_into_a_read_only_out_is_one_line(read_only):
    line = one_error_line(run_unprivileged("-m", "trainer.train", "--out", str(read_only / "runs")))
    assert line == f"error: cannot write {read_only / 'runs'}: permission denied (choose a writable --out)"


def test_synth_into_a_read_only_out_is_one_line(read_only):
    line = one_error_line(run_unprivileged("-m", "trainer.synth", "--out", str(read_only / "demo"), "--scale", "0.01"))
    assert line == f"error: cannot write {read_only / 'demo'}: permission denied (choose a writable --out)"
