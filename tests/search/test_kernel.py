"""The generated kernel: self-contained, equal to in-project inference, robust to unreadable clips, ensembles."""
from __future__ import annotations

import ast
import csv
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from search.export import ExportPlan, load_kernel, member_configs, retrain, write_export
from search.kernel import ALLOWED_THIRD_PARTY, KernelGenerationError, generate_kernel
from search.kernel_main import EXPORT_FORMAT, KernelError, find_models_dir, pool_probabilities
from trainer.batches import FeatureBank
from trainer.config import TrainConfig
from trainer.data import read_labelled_csv, read_test_fnames
from trainer.feature_cache import load_features
from trainer.inference import predict_bank
from trainer.metrics import lwlrap
from trainer.models import build_model

from tests.conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def trained(demo_data, session_cache, tmp_path_factory):
    """Two tiny models (seeds 0 and 1) of one config, trained once for this module."""
    base = TrainConfig().with_overrides({**TINY_OVERRIDES, "optim.epochs": 3})
    configs = member_configs(base, seeds=2)
    results = retrain(configs, demo_data, tmp_path_factory.mktemp("runs"), cache_dir=session_cache, progress=False)
    return configs, results


@pytest.fixture(scope="module")
def single_export(trained, tmp_path_factory) -> Path:
    configs, results = trained
    out = tmp_path_factory.mktemp("export")
    write_export(out, ExportPlan(configs=configs[:1]), results[:1])
    return out


def in_project_scores(config: TrainConfig, weights: Path, paths: list[Path], cache_dir: Path) -> np.ndarray:
    """What the project itself predicts: cached log-mels -> FeatureBank -> predict_bank."""
    features = load_features(paths, config.features, cache_dir=cache_dir, progress=False)
    bank = FeatureBank.from_arrays(features.arrays, normalize=config.features.normalize)
    model = build_model(config.model)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return predict_bank(model, bank, n_frames=config.features.crop_frames, pad_mode=config.features.pad_mode)


def read_submission(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def isolated_env() -> dict[str, str]:
    """An environment where torch & co. import but the project does not (no site, so no editable-install hook)."""
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": os.pathsep.join(paths)}


def test_generated_kernel_imports_only_allowed_modules():
    text = generate_kernel()
    assert text == generate_kernel()  # deterministic: re-exporting the same code gives the same file
    tree = ast.parse(text)
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert not roots & {"trainer", "search"}
    assert roots - sys.stdlib_module_names - {"__future__"} <= ALLOWED_THIRD_PARTY
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert {"LogMel", "FeatureBank", "predict_bank", "build_model", "read_audio", "TrainConfig", "main"} <= defined


def test_kernel_runs_without_the_project_and_matches_in_project_inference(single_export, demo_data, session_cache,
                                                                          trained, tmp_path):
    env = isolated_env()
    probe = subprocess.run([sys.executable, "-S", "-c", "import trainer"], cwd=single_export, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'trainer'" in probe.stderr
    out = tmp_path / "submission.csv"
    run = subprocess.run([sys.executable, "-S", "kernel.py", "--test", str(demo_data / "test"),
                          "--sample-submission", str(demo_data / "sample_submission.csv"), "--out", str(out),
                          "--device", "cpu", "--batch-size", "7", "--no-progress"], cwd=single_export, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "clips/s" in run.stdout

    header, fnames, scores = read_submission(out)
    with open(demo_data / "sample_submission.csv", newline="", encoding="utf-8") as handle:
        sample = list(csv.reader(handle))
    assert header == sample[0]
    assert fnames == [row[0] for row in sample[1:]]
    assert np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0

    config = trained[0][0]
    paths = [demo_data / "test" / f for f in read_test_fnames(demo_data / "sample_submission.csv")]
    expected = in_project_scores(config, single_export / "best.pth", paths, session_cache)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)

    truth = read_labelled_csv(demo_data / "test_labels.csv", demo_data / "test")
    order = [fnames.index(p.name) for p in truth.paths]
    score = lwlrap(truth.targets, scores[order])
    chance = np.mean([lwlrap(truth.targets, np.random.default_rng(s).random(scores[order].shape)) for s in range(50)])
    print(f"kernel lwlrap on the demo test set: {score:.4f} (chance {chance:.4f})")
    assert score > chance + 0.05


def test_unreadable_clip_still_gets_a_row(single_export, demo_data, tmp_path):
    test_dir = tmp_path / "test"
    shutil.copytree(demo_data / "test", test_dir)
    fnames = read_test_fnames(demo_data / "sample_submission.csv")
    (test_dir / fnames[1]).write_bytes(b"not a wav file")
    (test_dir / fnames[2]).unlink()
    kernel = load_kernel(single_export / "kernel.py")
    out = tmp_path / "submission.csv"
    with pytest.warns(UserWarning, match=f"{fnames[1]}.*{fnames[2]}"):
        kernel.run(test_dir, demo_data / "sample_submission.csv", out, single_export, device="cpu", progress=False)
    _, written, scores = read_submission(out)
    assert written == fnames
    readable = np.ones(len(fnames), dtype=bool)
    readable[[1, 2]] = False
    np.testing.assert_allclose(scores[1], scores[readable].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(scores[2], scores[1])


@pytest.mark.parametrize("pooling", ["mean", "geometric"])
def test_ensemble_export_pools_its_models(trained, demo_data, session_cache, tmp_path, pooling):
    configs, results = trained
    out = tmp_path / "export"
    write_export(out, ExportPlan(configs=configs, pooling=pooling), results)
    assert sorted(p.name for p in out.glob("*.pth")) == ["model-0.pth", "model-1.pth"]
    for name in ("model-0.pth", "model-1.pth"):
        state = torch.load(out / name, weights_only=True)
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    kernel = load_kernel(out / "kernel.py")
    kernel.run(demo_data / "test", demo_data / "sample_submission.csv", tmp_path / "sub.csv", out, progress=False)
    _, fnames, scores = read_submission(tmp_path / "sub.csv")
    paths = [demo_data / "test" / f for f in fnames]
    per_model = [in_project_scores(c, out / n, paths, session_cache)
                 for c, n in zip(configs, ["model-0.pth", "model-1.pth"])]
    assert np.abs(per_model[0] - per_model[1]).max() > 1e-3  # two seeds really are two models
    np.testing.assert_allclose(scores, pool_probabilities(per_model, pooling), atol=1e-5, rtol=0)


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
    ({"a": "def _check(x):\n    return x\n", "b": "def _check(x):\n    return -x\n",
      "driver": "from fakeproj.a import _check\nfrom fakeproj.b import _check as other\n"},
     "import its names plainly"),
    ({"a": "def _check(x):\n    return x\n", "b": "def _check(x):\n    return -x\ndef g():\n    return 1\n",
      "driver": "from fakeproj.a import _check\nfrom fakeproj.b import g\n"},
     "'_check' is defined in both fakeproj.a and fakeproj.b"),
    ({"a": "def f():\n    from fakeproj.b import g\n    return g()\n", "b": "def g():\n    return 1\n",
      "driver": "from fakeproj.a import f\n"},
     "inside a function"),
    ({"a": "import optuna\n", "driver": "from fakeproj.a import optuna\n"}, "imports 'optuna'"),
    ({"a": "X = 1\n", "driver": "from fakeproj.a import Y\n"}, "imports 'Y' from fakeproj.a"),
    ({"a": "X = 1\nif __name__ == '__main__':\n    print(X)\n", "driver": "from fakeproj.a import X\n"},
     "__main__"),
    ({"a": "import fakeproj.b\n", "b": "X = 1\n", "driver": "from fakeproj.a import fakeproj\n"},
     "write 'from <module> import <names>'"),
])
def test_generation_refuses_what_cannot_be_inlined(fake_package, modules, message):
    fake_package(modules)
    with pytest.raises(KernelGenerationError, match=re.escape(message)):
        generate_kernel("fakeproj.driver", packages=("fakeproj",))


def test_generation_inlines_dependencies_first(fake_package, tmp_path):
    fake_package({
        "a": "import math\n\ndef area(r):\n    return math.pi * r * r\n",
        "b": "from fakeproj.a import area\n\ndef main():\n    print(area(1.0))\n    return 0\n",
        "driver": "from fakeproj.b import main\n",
    })
    text = generate_kernel("fakeproj.driver", packages=("fakeproj",))
    assert text.index("def area") < text.index("def main")
    assert not [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and "fakeproj" in n.module]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([sys.executable, "-S", "-c", text], capture_output=True, text=True, cwd=elsewhere)
    assert run.returncode == 0 and run.stdout.strip() == str(3.141592653589793)
