"""The generated kernel: self-contained, equal to in-project inference, robust to unreadable clips, ensembles
of members with different feature settings, and pasted into a notebook cell."""
from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from search.kaggle.ensemble_report import predict_models
from search.kaggle.export import (
    ExportPlan,
    KernelRunError,
    Member,
    TrainedMember,
    isolated_env,
    retrain,
    run_kernel,
    write_export,
)
from search.kaggle.kernel import ALLOWED_THIRD_PARTY, KernelGenerationError, bundle_files, generate_kernel
from search.kaggle.kernel_main import (
    EXPORT_FORMAT,
    KernelError,
    find_models_dir,
    load_export,
    member_state_dicts,
    pool_probabilities,
)
from tests.conftest import TINY_OVERRIDES
from trainer import build_model, feature_cache_key
from trainer.config import TrainConfig
from trainer.data import read_labelled_csv, read_test_fnames
from trainer.metrics import lwlrap

# What the project needs but a Kaggle notebook may lack, and tomllib (Python >= 3.11 only): made
# unimportable in the kernel's process, so a kernel that imports any of them fails the test.
NOT_NEEDED = ("optuna", "optuna_dashboard", "sqlalchemy", "tensorboard", "iterstrat", "matplotlib", "pandas", "tomllib")


@pytest.fixture(scope="module")
def trained(demo_data, session_cache, tmp_path_factory):
    """Three tiny members trained once for this module: A; B with A's log-mel but another crop, padding,
    normalisation and head; C with other log-mel parameters (n_mels, n_fft, hop), architecture and activation."""
    base = TrainConfig().with_overrides({**TINY_OVERRIDES, "optim.epochs": 3})
    configs = [base,
               base.with_overrides({"features.crop_frames": 48, "features.pad_mode": "wrap", "features.normalize": "none",
                                    "model.head": "mlp", "model.head_hidden": 16, "seed": 1}),
               base.with_overrides({"features.n_mels": 24, "features.n_fft": 1024, "features.hop": 256,
                                    "features.crop_frames": 56, "model.arch": "cnn", "model.activation": "silu",
                                    "seed": 2})]
    members = retrain([Member(c) for c in configs], demo_data, tmp_path_factory.mktemp("runs"), cache_dir=session_cache,
                      progress=False)
    return configs, members


@pytest.fixture(scope="module")
def single_export(trained, tmp_path_factory) -> Path:
    configs, members = trained
    out = tmp_path_factory.mktemp("export")
    write_export(out, ExportPlan(members=[Member(configs[0])]), members[:1])
    return out


def read_submission(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def kernel_args(demo_data: Path, out: Path, *extra: str) -> list[str]:
    return ["--test", str(demo_data / "test"), "--sample-submission", str(demo_data / "sample_submission.csv"),
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_generated_kernel_is_one_deterministic_file_carrying_the_project_unchanged():
    text = generate_kernel()
    assert text == generate_kernel()  # re-exporting the same code gives the same file
    compile(text, "kernel.py", "exec")
    archive = base64.b64decode(re.search(r'_ARCHIVE = """\n(.*?)\n"""', text, re.S).group(1))
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        carried = {name: bundle.read(name) for name in bundle.namelist()}
    assert carried == bundle_files()
    root = Path(__file__).resolve().parents[2]
    for name in ("trainer/models.py", "trainer/features.py", "trainer/labels.txt", "search/kaggle/kernel_main.py"):
        assert carried[name] == (root / name).read_bytes()  # byte for byte what was validated
    assert not [n for n in carried if n.startswith("search/") and n not in ("search/__init__.py", "search/kaggle/__init__.py", "search/kaggle/kernel_main.py")]
    assert ALLOWED_THIRD_PARTY == {"torch", "numpy", "librosa", "soundfile", "tqdm"}


@pytest.mark.slow
def test_kernel_runs_without_the_project_and_matches_in_project_inference(single_export, demo_data, session_cache,
                                                                          trained, tmp_path):
    env = isolated_env()
    probe = subprocess.run([sys.executable, "-S", "-c", "import trainer"], cwd=single_export, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'trainer'" in probe.stderr
    out = tmp_path / "submission.csv"
    # Run as `python kernel.py ...`, with the packages a Kaggle notebook lacks made unimportable.
    runner = (f"import runpy, sys\nfor name in {NOT_NEEDED!r}:\n    sys.modules[name] = None\n"
              f"sys.argv = ['kernel.py'] + sys.argv[1:]\nrunpy.run_path('kernel.py', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-S", "-c", runner, *kernel_args(demo_data, out, "--batch-size", "7")],
                         cwd=single_export, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "clips/s" in run.stdout and "1 member(s), 1 feature setting(s)" in run.stdout

    header, fnames, scores = read_submission(out)
    with open(demo_data / "sample_submission.csv", newline="", encoding="utf-8") as handle:
        sample = list(csv.reader(handle))
    assert header == sample[0]
    assert fnames == [row[0] for row in sample[1:]]
    assert np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0

    paths = [demo_data / "test" / f for f in read_test_fnames(demo_data / "sample_submission.csv")]
    (expected,), _ = predict_models(trained[0][:1], [single_export / "best.pth"], paths, cache_dir=session_cache,
                                    device="cpu")
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)

    truth = read_labelled_csv(demo_data / "test_labels.csv", demo_data / "test")
    order = [fnames.index(p.name) for p in truth.paths]
    score = lwlrap(truth.targets, scores[order])
    chance = np.mean([lwlrap(truth.targets, np.random.default_rng(s).random(scores[order].shape)) for s in range(50)])
    print(f"kernel lwlrap on the demo test set: {score:.4f} (chance {chance:.4f})")
    assert score > chance + 0.05


@pytest.mark.slow
def test_unreadable_clip_still_gets_a_row(single_export, demo_data, tmp_path):
    test_dir = tmp_path / "test"
    shutil.copytree(demo_data / "test", test_dir)
    fnames = read_test_fnames(demo_data / "sample_submission.csv")
    (test_dir / fnames[1]).write_bytes(b"not a wav file")
    (test_dir / fnames[2]).unlink()
    out = tmp_path / "submission.csv"
    done = run_kernel(single_export, test_dir, demo_data / "sample_submission.csv", out, device="cpu")
    assert re.search(f"2 test clip\\(s\\) could not be scored.*{fnames[1]}.*{fnames[2]}", done.stderr)
    _, written, scores = read_submission(out)
    assert written == fnames
    readable = np.ones(len(fnames), dtype=bool)
    readable[[1, 2]] = False
    np.testing.assert_allclose(scores[1], scores[readable].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(scores[2], scores[1])


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "geometric"])
def test_members_with_different_features_run_in_one_kernel_and_match_in_project_inference(
        trained, demo_data, session_cache, tmp_path, pooling):
    configs, members = trained
    assert len({feature_cache_key(c.features) for c in configs}) == 2  # A and B share a log-mel setting
    weights = [0.5, 0.3, 0.2]
    out = tmp_path / "export"
    plan = ExportPlan(members=[Member(c, w) for c, w in zip(configs, weights)], pooling=pooling)
    write_export(out, plan, [dataclasses.replace(m, member=p) for m, p in zip(members, plan.members)])
    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["pooling"] == pooling
    assert [m["weight"] for m in meta["members"]] == pytest.approx(weights)
    assert [TrainConfig.from_dict(m["train_config"]) for m in meta["members"]] == configs

    done = run_kernel(out, demo_data / "test", demo_data / "sample_submission.csv", tmp_path / "sub.csv", device="cpu")
    assert "3 member(s), 2 feature setting(s)" in done.stdout
    _, fnames, scores = read_submission(tmp_path / "sub.csv")
    paths = [demo_data / "test" / f for f in fnames]
    per_model, readable = predict_models(configs, member_state_dicts(load_export(out), out), paths,
                                         cache_dir=session_cache, device="cpu")
    assert readable == list(range(len(paths)))
    assert min(np.abs(a - b).max() for a, b in [(per_model[0], per_model[1]), (per_model[0], per_model[2])]) > 1e-3
    np.testing.assert_allclose(scores, pool_probabilities(per_model, pooling, weights), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_kernel_pasted_into_a_notebook_cell_runs_twice_and_replaces_a_foreign_trainer(single_export, demo_data,
                                                                                      tmp_path):
    """A cell has no __file__ and may run again; an unrelated module called trainer must not be used."""
    cell = ("import sys, types\nsys.modules['trainer'] = types.ModuleType('trainer')  # e.g. another package's\n"
            "text = open(sys.argv[1]).read()\nsys.argv = ['ipykernel_launcher.py'] + sys.argv[2:]\n"
            "for run in range(2):\n    exec(compile(text, '<cell>', 'exec'), {'__name__': '__main__'})\n")
    elsewhere = tmp_path / "working"
    elsewhere.mkdir()
    out = tmp_path / "submission.csv"
    done = subprocess.run([sys.executable, "-S", "-c", cell, str(single_export / "kernel.py"),
                           *kernel_args(demo_data, out, "--models", str(single_export))],
                          cwd=elsewhere, env=isolated_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote ") == 2
    assert done.stderr.count("replacing the already imported module trainer by the carried one") == 1
    assert out.is_file() and not list(elsewhere.iterdir())


@pytest.mark.slow
def test_kernel_errors_are_one_line(single_export, demo_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(single_export, broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["members"][0]["weight"] = 0
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(KernelError, match=r"members\[0\] needs 'file' .* and 'weight' > 0"):
        load_export(broken)
    text = (broken / "kernel.py").read_text()
    start = text.index('_ARCHIVE = """\n') + len('_ARCHIVE = """\n')
    for cut in (1000, 1001):  # a paste cut short, with or without a whole base64 group
        (broken / "kernel.py").write_text(text[:start] + text[start + cut:])
        damaged = subprocess.run([sys.executable, "-S", "kernel.py"], cwd=broken, env=isolated_env(),
                                 capture_output=True, text=True)
        assert damaged.returncode == 1 and damaged.stderr.strip() == (
            "error: kernel.py's module archive is damaged (edited or cut short); regenerate it")
    (broken / "kernel.py").write_text(text)
    (broken / "config.json").write_text(json.dumps({**meta, "format": "fat2019-search-export/1"}))
    with pytest.raises(KernelRunError, match="format 'fat2019-search-export/1' is not 'fat2019-search-export/3'"):
        run_kernel(broken, demo_data / "test", demo_data / "sample_submission.csv", tmp_path / "s.csv", device="cpu")


def test_models_are_found_among_attached_datasets(tmp_path, monkeypatch):
    """In a notebook there is no __file__: the kernel looks for our config.json under ../input/."""
    (tmp_path / "working").mkdir()
    monkeypatch.chdir(tmp_path / "working")
    other = tmp_path / "input" / "other-dataset"
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"something": "else"}')
    with pytest.raises(KernelError, match="pass --models DIR"):
        find_models_dir(None, None)
    ours = tmp_path / "input" / "fat2019-demo"
    ours.mkdir()
    (ours / "config.json").write_text(f'{{"format": "{EXPORT_FORMAT}"}}')
    assert find_models_dir(None, None) == ours.resolve()
    assert find_models_dir("elsewhere", None) == Path("elsewhere")


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """Write modules of a throwaway package ``fakeproj`` and make it importable for one test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield lambda modules: _fake_package(tmp_path, modules)
    for name in [n for n in sys.modules if n == "fakeproj" or n.startswith("fakeproj.")]:
        del sys.modules[name]


def _fake_package(root: Path, modules: dict[str, str]) -> None:
    package = root / "fakeproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.mark.parametrize("modules, message", [
    ({"a": "import optuna\n", "driver": "from fakeproj.a import optuna\ndef main(argv=None, script=None):\n    return 0\n"},
     "fakeproj/a.py:1: imports 'optuna' at module level"),
    ({"a": "try:\n    import sqlalchemy\nexcept ImportError:\n    pass\n",
      "driver": "def main(argv=None, script=None):\n    return 0\n"}, "imports 'sqlalchemy' at module level"),
    ({"driver": "def run():\n    return 0\n"}, "must define main"),
    ({"driver": "def main(:\n"}, "fakeproj/driver.py:1: does not compile"),
])
def test_generation_refuses_what_cannot_run_on_kaggle(fake_package, modules, message):
    fake_package(modules)
    with pytest.raises(KernelGenerationError, match=re.escape(message)):
        generate_kernel("fakeproj.driver", packages=("fakeproj",))


def test_carried_modules_keep_their_imports_names_and_files(fake_package, tmp_path):
    """What the old inliner refused now just runs: 'import as', one name in two modules, lazy project imports,
    package imports, a __main__ block, package data read through __file__."""
    fake_package({
        "a": "import math as m\n\ndef check(r):\n    return m.pi * r * r\n",
        "b": "from pathlib import Path\n\ndef check(x):\n    return -x\n\n"
             "def data():\n    return Path(__file__).with_name('data.txt').read_text().strip()\n\n"
             "if __name__ == '__main__':\n    raise SystemExit('must not run')\n",
        "driver": "import fakeproj.b\nfrom fakeproj.a import check\nfrom fakeproj.b import check as negate\n\n"
                  "def main(argv=None, script=None):\n    from fakeproj.b import data\n"
                  "    print(check(1.0), negate(2), data(), fakeproj.b.__name__)\n    return 0\n",
    })
    (tmp_path / "fakeproj" / "data.txt").write_text("carried\n")
    text = generate_kernel("fakeproj.driver", packages=("fakeproj",))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kernel.py").write_text(text)
    run = subprocess.run([sys.executable, "-S", "kernel.py"], capture_output=True, text=True, cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(3.141592653589793), "-2", "carried", "fakeproj.b"]


def test_a_bad_sample_submission_is_one_line_naming_what_is_wrong(tmp_path):
    from search.kaggle.kernel_main import label_order, read_sample_submission

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("fname,Bark\ncaf\xe9.wav,0\n".encode("latin-1"))
    with pytest.raises(KernelError, match=r"latin1\.csv: not UTF-8 text \(byte \d+: b'\\xe9'\)"):
        read_sample_submission(latin1)
    path = tmp_path / "sample_submission.csv"
    labels = ["Bark", "Purr", "Hiss"]
    assert label_order(["fname", "Hiss", "Bark", "Purr"], labels, path) == [2, 0, 1]
    with pytest.raises(KernelError, match=r"\(missing: \['Purr'\]\)"):
        label_order(["fname", "Bark", "Hiss"], labels, path)
    with pytest.raises(KernelError, match=r"\(unknown: \['Meow'\]; missing: \['Purr'\]\)"):
        label_order(["fname", "Bark", "Hiss", "Meow"], labels, path)
    with pytest.raises(KernelError, match=r"\(repeated: \['Bark'\]\)"):
        label_order(["fname", "Bark", "Bark", "Purr", "Hiss"], labels, path)


def _member_with_random_weights(tmp_path: Path, config: TrainConfig, k: int) -> TrainedMember:
    torch.manual_seed(k)
    path = tmp_path / f"weights-{k}.pth"
    torch.save(build_model(config.model).state_dict(), path)
    return TrainedMember(Member(config, weight=1.0 + k), path, "best", 1, 0.5)


@pytest.mark.parametrize("n_models", [1, 3])
def test_every_export_writes_one_best_pth_that_the_kernel_splits_into_its_members(tmp_path, n_models):
    """One upload, whatever the recipe: best.pth is a plain state_dict (weights_only), one model's as it is, an
    ensemble's with each member's tensors under its own prefix; the kernel gets every member's exact tensors."""
    configs = [TrainConfig().with_overrides({**TINY_OVERRIDES, "seed": k}) for k in range(n_models)]
    trained = [_member_with_random_weights(tmp_path, c, k) for k, c in enumerate(configs)]
    out = tmp_path / "export"
    out.mkdir()
    (out / "model-0.pth").write_bytes(b"an earlier export's file")
    write_export(out, ExportPlan(members=[t.member for t in trained]), trained)

    assert sorted(p.name for p in out.glob("*.pth")) == ["best.pth"]
    pooled = torch.load(out / "best.pth", weights_only=True)
    info = load_export(out)
    assert [m.file for m in info.members] == ["best.pth"] * n_models
    states = member_state_dicts(info, out)
    for item, state in zip(trained, states):
        original = torch.load(item.weights, weights_only=True)
        assert state.keys() == original.keys()
        assert all(torch.equal(state[key], original[key]) for key in original)
    if n_models == 1:
        assert pooled.keys() == states[0].keys()  # one model's best.pth loads into the model as it is
    else:
        assert len(pooled) == sum(len(s) for s in states)
        assert [m.prefix for m in info.members] == [f"members.{k}." for k in range(n_models)]


def test_a_member_prefix_without_tensors_is_one_line(tmp_path):
    configs = [TrainConfig().with_overrides(TINY_OVERRIDES) for _ in range(2)]
    trained = [_member_with_random_weights(tmp_path, c, k) for k, c in enumerate(configs)]
    out = tmp_path / "export"
    write_export(out, ExportPlan(members=[t.member for t in trained]), trained)
    meta = json.loads((out / "config.json").read_text())
    meta["members"][1]["prefix"] = "members.7."
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(KernelError, match=r"no tensors under the prefix 'members.7.'"):
        member_state_dicts(load_export(out), out)
