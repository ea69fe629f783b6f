"""The wheel a user installs without ``-e``: built from the checkout, installed into a fresh virtual environment,
run from a folder outside the checkout. It holds every package and data file of ``trainer/`` and ``search/`` (none
of ``tests/`` or ``benchmarks/``), every command answers ``--help``, and a one-trial study runs from it.

Offline: the new environment gets no dependencies of its own; a ``.pth`` file makes the suite's site-packages
visible to it (as plain folders, so the suite's editable install of this checkout is not among them)."""
from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import optuna
import pytest
from optuna.trial import TrialState

from search.study.storage import default_storage_url
from tests.search import conftest as search_fixtures
from tests.search.conftest import write_spec

warm_cache = search_fixtures.warm_cache  # the search tests' warm feature cache, as a fixture of this module too

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "search")

pytestmark = pytest.mark.slow


def checkout_files(destination: Path) -> Path:
    """A copy of the checkout's files (tracked, and untracked but not ignored): the build's own ``build/`` and
    ``*.egg-info`` land there, not in the shared checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not part of it
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def package_files(root: Path) -> set[str]:
    """Every file of the installed packages below ``root``, by path relative to it (no byte-code caches)."""
    return {p.relative_to(root).as_posix() for package in PACKAGES for p in (root / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def commands(site_packages: Path) -> list[str]:
    """The modules of the installed packages that run as ``python -m``: a ``__main__.py`` names its package,
    any other module counts when it has a top-level ``if __name__ == "__main__":``."""
    found = []
    for path in sorted(p for package in PACKAGES for p in (site_packages / package).rglob("*.py")):
        parts = list(path.relative_to(site_packages).with_suffix("").parts)
        if parts[-1] == "__main__":
            found.append(".".join(parts[:-1]))
        elif any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
                 for node in ast.parse(path.read_text(encoding="utf-8")).body):
            found.append(".".join(parts))
    return found


class Installed(NamedTuple):
    python: Path
    site_packages: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """A fresh virtual environment holding the wheel built from this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = checkout_files(work / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(work / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (work / "dist").glob("fat2019_search-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {n for n in names if n.split("/")[0] in PACKAGES} == package_files(source)  # labels.txt among them
    assert {n.split("/")[0] for n in names} == {*PACKAGES, wheel.name.split("-py3")[0] + ".dist-info"}

    environment = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = environment / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    suite_paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "suite-site-packages.pth").write_text("\n".join(dict.fromkeys(suite_paths)) + "\n", encoding="utf-8")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return Installed(python, purelib)


def run(python: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing points back at the checkout
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_runs_every_command_and_a_study_from_outside_the_checkout(installed, tmp_path, warm_cache):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    python, site_packages = installed
    where = run(python, outside, "-c", "import search.run, trainer.train; "
                                          "print(search.run.__file__); print(trainer.train.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(Path(line).is_relative_to(site_packages) for line in where.stdout.split()), where.stdout

    found = commands(site_packages)
    assert {"search.run", "search.best", "trainer.train", "trainer.synth"} <= set(found)  # the discovery finds them
    with ThreadPoolExecutor(2) as pool:
        helps = dict(zip(found, pool.map(lambda module: run(python, outside, "-m", module, "--help"), found)))
    for module, done in helps.items():
        assert done.returncode == 0 and "usage:" in done.stdout, f"{module} --help:\n{done.stdout}{done.stderr}"

    studies = tmp_path / "studies"
    write_spec(studies, "wheel", epochs=1)
    study = run(python, outside, "-m", "search.run", "--study", "wheel", "--studies-dir", str(studies),
                "--trials", "1", "--threads", "1", timeout=300)
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    trials = optuna.load_study(study_name="wheel", storage=default_storage_url("wheel", studies)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] and 0.0 < trials[0].value <= 1.0
