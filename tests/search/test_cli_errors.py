"""Every command's errors through ``search._cli.run_command``: one line on stderr, exit 2, never a traceback; a path
the user gave that cannot be written is named with the flag to change. The read-only folders are real ones
(``tests.read_only``).
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search import best as best_command
from search._cli import UserError, check_writable_folder, os_error_line, run_command
from search.study.storage import default_storage_url, open_storage
from tests.conftest import TINY_OVERRIDES
from tests.read_only import one_error_line, read_only, run_unprivileged  # noqa: F401 - read_only is a fixture
from tests.search.conftest import write_spec

LR = FloatDistribution(1e-3, 1e-2, log=True)


def test_the_child_really_cannot_write_the_read_only_folder(read_only):
    """What the tests here rely on: the folder refuses the child's writes (as root too)."""
    result = run_unprivileged("-c", f"open({str(read_only / 'x')!r}, 'w')")
    assert result.returncode == 1 and "PermissionError: [Errno 13]" in result.stderr


def _study(studies: Path) -> Path:
    """A study of three finished trials with their configs (nothing trained: the commands here stop before)."""
    base = "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in TINY_OVERRIDES.items() if k != "optim.epochs")
    studies.mkdir(parents=True, exist_ok=True)
    (studies / "demo.toml").write_text(f'[study]\nname = "demo"\ndata = "demo"\ndata_scale = 0.05\nepochs = 2\n\n'
                                       f'[base]\n{base}\n\n'
                                       f'[space]\n"optim.lr" = {{ float = [1e-3, 1e-2], log = true }}\n'
                                       f'\n[kernel]\nbudget_s = 3600\ntest_audio_s = 10000\n')
    study = optuna.create_study(storage=open_storage(default_storage_url("demo", studies)), study_name="demo",
                                direction="maximize")
    for value, lr in ((0.5, 3e-3), (0.6, 5e-3), (0.4, 2e-3)):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"optim.lr": lr},
                                     distributions={"optim.lr": LR},
                                     user_attrs={"epochs_run": 2, "is_baseline": lr == 3e-3, "kernel_time_s": 12.0},
                                     system_attrs={"constraints:kernel_time": -100.0}))
    return studies


def test_report_into_a_read_only_out_is_one_line_naming_it(tmp_path, read_only):
    studies = _study(tmp_path / "studies")
    out = read_only / "rep"
    line = one_error_line(run_unprivileged("-m", "search.report", "--study", "demo", "--studies-dir", str(studies),
                                           "--out", str(out)))
    assert line == f"error: cannot write {out}: permission denied (choose a writable --out)"


def test_best_export_into_a_read_only_out_is_refused_before_the_listing(tmp_path, read_only):
    studies = _study(tmp_path / "studies")
    out = read_only / "exp2"
    result = run_unprivileged("-m", "search.best", "--study", "demo", "--studies-dir", str(studies), "--export",
                              "--recipe", "single", "--out", str(out))
    line = one_error_line(result)
    assert line == f"error: cannot write {out}: permission denied (choose a writable --out)"
    assert "study demo:" not in result.stdout  # no listing, no training: refused first
    assert not list(read_only.iterdir())


def test_a_writable_out_under_a_read_only_folder_is_refused_too(tmp_path, read_only):
    """The retrained members' runs go beside --out (<out>-runs): its folder must take them."""
    studies = _study(tmp_path / "studies")
    out = read_only / "exp"
    read_only.chmod(0o755)
    out.mkdir()
    read_only.chmod(0o555)
    line = one_error_line(run_unprivileged("-m", "search.best", "--study", "demo", "--studies-dir", str(studies),
                                           "--export", "--recipe", "single", "--out", str(out)))
    assert line == f"error: cannot write {read_only}: permission denied (choose a writable --out)"


def test_a_read_only_studies_dir_says_so_not_sqlites_words(read_only, demo_data):
    read_only.chmod(0o755)
    write_spec(read_only, "ro")
    read_only.chmod(0o555)
    line = one_error_line(run_unprivileged("-m", "search.run", "--study", "ro", "--studies-dir", str(read_only),
                                           "--trials", "1", "--device", "cpu"))
    assert line.startswith(f"error: {read_only}: the folder of the study database is read-only (permission denied)")
    assert "choose a writable --studies-dir" in line and "unable to open database file" not in line


def test_a_bad_kaggle_user_is_refused_before_the_listing(tmp_path, capsys):
    studies = _study(tmp_path / "studies")
    assert best_command.main(["--study", "demo", "--studies-dir", str(studies), "--export", "--kaggle-user",
                              "bad user!"]) == 2
    printed = capsys.readouterr()
    assert printed.err == "error: --kaggle-user 'bad user!': expected letters, digits, '-' or '_'\n"
    assert printed.out == ""


# -- the wrapper itself ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error, line", [
    (OSError(errno.EROFS, "Read-only file system", "/x/rep"),
     "cannot write /x/rep: read-only file system (choose a writable --out)"),
    (OSError(errno.EROFS, "Read-only file system", "/x/rep/plots/a.png"),
     "cannot write /x/rep/plots/a.png: read-only file system (choose a writable --out)"),
    (OSError(errno.EACCES, "Permission denied", "/x"),  # a folder above --out, made for it
     "cannot write /x: permission denied (choose a writable --out)"),
    (OSError(errno.ENOSPC, "No space left on device", "/s/demo.db"),
     "cannot write /s/demo.db: no space left on the device (free space there or choose another --studies-dir)"),
    (OSError(errno.EACCES, "Permission denied", "/d/train_curated.csv"),
     "cannot read /d/train_curated.csv: permission denied (check --data)"),
    (OSError(errno.EROFS, "Read-only file system", "/elsewhere/f"), "cannot write /elsewhere/f: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
])
def test_an_os_error_names_the_path_and_the_flag_to_change(error, line):
    assert os_error_line(error, {"--out": "/x/rep", "--studies-dir": Path("/s")}, {"--data": "/d"}) == line


@pytest.mark.parametrize("error", [UserError("--x 3: expected 1"), ValueError("v"), LookupError("l"),
                                   OSError(errno.EACCES, "Permission denied", "/p")])
def test_user_errors_and_os_errors_are_one_line_and_exit_2(error, capsys):
    def body() -> int:
        raise error
    assert run_command(body) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_a_bug_still_surfaces():
    def body() -> int:
        raise TypeError("a bug")
    with pytest.raises(TypeError):
        run_command(body)


def test_the_writable_check_names_the_folder_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should go")
    with pytest.raises(NotADirectoryError) as raised:
        check_writable_folder(tmp_path / "file" / "out")
    assert raised.value.filename == str(tmp_path / "file")
    check_writable_folder(tmp_path / "new" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_every_command_turns_errors_into_lines_through_the_one_wrapper():
    """So their lists of caught errors cannot drift apart again (run.py caught OSError, report.py did not)."""
    from tests.search.test_layering import command_modules, search_modules

    paths = search_modules()
    commands = sorted(command_modules())
    assert {"search.run", "search.best", "search.report", "search.dashboard", "search.quickstart", "search.panes",
            "search.status", "search.score"} <= set(commands)
    for name in commands:
        source = paths[name].read_text(encoding="utf-8")
        assert "run_command(" in source, f"{name}: main() does not go through search._cli.run_command"
        assert 'print(f"error: ' not in source, f"{name}: prints its own error line; raise UserError instead"
