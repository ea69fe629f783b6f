"""Retrain a chosen config (one model or an ensemble) and write the folder a user uploads as a Kaggle dataset.

The folder holds the weights (tensors only), config.json (TrainConfig, labels, model files, pooling: all
the kernel reads), the generated kernel.py, dataset-metadata.json for ``kaggle datasets create``,
SUBMIT.md and export.json (where it came from, retrained vs reported lwlrap, measured inference cost).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.kernel import write_kernel
from search.kernel_main import EXPORT_FORMAT, POOLINGS
from trainer import (ConfigError, Result, TrainConfig, atomic_torch_save, atomic_write_text, load_labels,
                     load_state_dict, train_and_evaluate)

KAGGLE_TEST_CLIPS = 3361  # clips the FAT2019 kernel scored in the 2nd stage
MEASURE_CLIPS = 64  # test clips the export scores with the generated kernel to time it
PLACEHOLDER_USER = "YOUR-KAGGLE-USERNAME"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{3,48}[a-z0-9]$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ExportPlan:
    """What to train and how to name it: one config per model, the ensemble pooling, the dataset identity."""

    configs: list[TrainConfig]
    pooling: str = "mean"
    kaggle_user: str | None = None
    dataset_slug: str = "fat2019-model"
    title: str = "FAT2019 audio tagging model"
    source: dict[str, Any] = field(default_factory=dict)  # provenance for export.json (study, trial, ...)


def member_configs(base: TrainConfig, *, seeds: int = 1, folds: int | None = None, full_curated: bool = False,
                   epochs: int | None = None) -> list[TrainConfig]:
    """The configs of an export: ``seeds`` models (seed, seed+1, ...) or one per curated fold."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: expected at least 1")
    if folds is not None and seeds > 1:
        raise ConfigError("--seeds and --folds both ask for an ensemble; choose one")
    if folds is not None and full_curated:
        raise ConfigError("--folds with --full-curated would train every fold model on the same clips; choose one")
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    if full_curated:
        overrides["data.full_curated"] = True
    base = base.with_overrides(overrides, source="export") if overrides else base
    if folds is not None:
        if folds < 2:
            raise ConfigError(f"--folds {folds}: expected at least 2")
        return [base.with_overrides({"data.n_folds": folds, "data.val_fold": k}, source="--folds") for k in range(folds)]
    return [base.with_overrides({"seed": base.seed + k}, source="--seeds") for k in range(seeds)]


def model_files(n_models: int) -> list[str]:
    """``best.pth`` for one model, ``model-0.pth`` ... for an ensemble."""
    return ["best.pth"] if n_models == 1 else [f"model-{k}.pth" for k in range(n_models)]


def config_digest(config: TrainConfig) -> str:
    return hashlib.blake2b(config.to_json().encode("utf-8"), digest_size=8).hexdigest()


def retrain(configs: list[TrainConfig], data_dir: str | Path | None, runs_dir: Path, *,
            cache_dir: str | Path | None = None, progress: bool | None = None,
            threads: int | None = None) -> list[Result]:
    """Train each config in ``runs_dir/<config digest>`` (an interrupted export resumes there)."""
    results = []
    for k, config in enumerate(configs):
        print(f"training model {k + 1}/{len(configs)} ({config.optim.epochs} epochs, seed {config.seed}"
              f"{f', fold {config.data.val_fold}' if config.data.val_fold is not None else ''})", file=sys.stderr)
        results.append(train_and_evaluate(config, data_dir, workdir=runs_dir / config_digest(config),
                                          progress=progress, cache_dir=cache_dir, threads=threads))
    return results


def write_export(out: Path, plan: ExportPlan, results: list[Result]) -> dict[str, Any]:
    """Write weights, config.json, kernel.py, dataset-metadata.json, SUBMIT.md and export.json into ``out``."""
    if plan.pooling not in POOLINGS:
        raise ConfigError(f"pooling={plan.pooling!r}: expected one of {', '.join(POOLINGS)}")
    first = plan.configs[0]
    for config in plan.configs[1:]:
        if config.features != first.features or config.model != first.model:
            raise ConfigError("an exported ensemble shares one feature and model config; members differ in "
                              + ", ".join(sorted(k for k in config.diff(first) if k.startswith(("features.", "model.")))))
    out.mkdir(parents=True, exist_ok=True)
    files = model_files(len(results))
    members = []
    for name, config, result in zip(files, plan.configs, results):
        # With full_curated the validation clips were trained on, so the last epoch is the model, not the "best".
        use_last = config.data.full_curated
        state = _load_state_dict(result.last_path if use_last else result.best_path, use_last)
        atomic_torch_save(state, out / name)
        members.append({"file": name, "seed": config.seed, "val_fold": config.data.val_fold,
                        "checkpoint": "last" if use_last else "best",
                        "epoch": result.epochs_run if use_last else result.best_epoch,
                        "val_lwlrap": result.last_lwlrap if use_last else result.best_lwlrap})
    for stale in out.glob("*.pth"):
        if stale.name not in files:
            stale.unlink()
    meta = {"format": EXPORT_FORMAT, "train_config": first.to_dict(), "labels": list(load_labels()),
            "models": members, "pooling": plan.pooling}
    atomic_write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    kernel_text = write_kernel(out / "kernel.py")
    dataset_id = f"{plan.kaggle_user or PLACEHOLDER_USER}/{plan.dataset_slug}"
    atomic_write_text(out / "dataset-metadata.json", json.dumps(
        {"title": plan.title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}, indent=2) + "\n")
    atomic_write_text(out / "SUBMIT.md", submit_steps(out, dataset_id, plan.kaggle_user is None))
    record = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **plan.source,
              "models": members, "pooling": plan.pooling, "dataset_id": dataset_id,
              "kernel_sha256": hashlib.sha256(kernel_text.encode("utf-8")).hexdigest(),
              "configs": [c.to_dict() for c in plan.configs]}
    atomic_write_text(out / "export.json", json.dumps(record, indent=2) + "\n")
    return record


def record_inference(out: Path, timing: dict[str, Any]) -> None:
    """Add the kernel's measured cost to export.json."""
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    record["inference"] = timing
    atomic_write_text(out / "export.json", json.dumps(record, indent=2) + "\n")


def measure_kernel(out: Path, data_dir: Path, *, clips: int = MEASURE_CLIPS, device: str = "auto") -> dict[str, Any] | None:
    """Run the generated kernel.py (in this process, from its own file) on the first ``clips`` test clips.

    Returns seconds per clip and the projection for Kaggle's test set, or None when ``data_dir`` has no test set.
    """
    test_dir, sample = data_dir / "test", data_dir / "sample_submission.csv"
    if not test_dir.is_dir() or not sample.is_file():
        return None
    with open(sample, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    subset = [row for row in rows[1:clips + 1] if row]
    if not subset:
        return None
    kernel = load_kernel(out / "kernel.py")
    with tempfile.TemporaryDirectory(prefix="fat2019-kernel-") as tmp:
        subset_csv = Path(tmp) / "sample_submission.csv"
        with open(subset_csv, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([rows[0], *subset])
        stats = kernel.run(test_dir, subset_csv, Path(tmp) / "submission.csv", out, device=device, progress=False)
    per_clip = stats["seconds"] / stats["clips"]
    return {"clips": stats["clips"], "seconds": round(stats["seconds"], 3), "seconds_per_clip": per_clip,
            "seconds_per_audio_second": stats["seconds"] / max(stats["audio_seconds"], 1e-9),
            "device": stats["device"], "projected_kaggle_seconds": per_clip * KAGGLE_TEST_CLIPS,
            "projected_for_clips": KAGGLE_TEST_CLIPS}


def load_kernel(path: Path) -> Any:
    """Import a generated kernel.py as a module of its own (its classes are not the project's)."""
    name = f"fat2019_kernel_{hashlib.blake2b(str(path.resolve()).encode(), digest_size=4).hexdigest()}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and get_type_hints look the module up by name
    spec.loader.exec_module(module)
    return module


def submit_steps(out: Path, dataset_id: str, placeholder: bool) -> str:
    """SUBMIT.md: from this folder to a scored Kaggle submission."""
    user, slug = dataset_id.split("/", 1)
    fix = (f"\n0. Edit `dataset-metadata.json`: replace `{PLACEHOLDER_USER}` with your Kaggle user name "
           "(or re-export with `--kaggle-user NAME`).\n") if placeholder else "\n"
    return f"""# Submitting this export to Freesound Audio Tagging 2019

The competition is a kernels-only one: Kaggle runs `kernel.py` in a notebook with a GPU, no internet and a
1 hour limit on the hidden test set (~{KAGGLE_TEST_CLIPS:,} clips). `export.json` holds the measured inference cost.
Needs the Kaggle CLI (`pip install kaggle`, API token in `~/.kaggle/kaggle.json`).
{fix}
1. Upload this folder as a private dataset:

       kaggle datasets create -p {out}

   Later exports of the same study update it instead:

       kaggle datasets version -p {out} -m "new export"

2. On kaggle.com open the competition "Freesound Audio Tagging 2019" -> Code -> New Notebook.
   In the notebook's side panel: Add Input -> Your Datasets -> `{slug}`; Settings: Accelerator GPU,
   Internet off.
3. In one cell run

       !python ../input/{slug}/kernel.py

   (or paste kernel.py into the cell; it then finds its models under `../input/*/config.json`).
   It scores every clip of `../input/freesound-audio-tagging-2019/test`, prints clips/s, and writes
   `submission.csv` in the working folder with sample_submission.csv's header and rows.
4. Save Version -> "Save & Run All (Commit)". When the run has finished, open the version's Output
   tab and press "Submit" (late submissions are still scored).

Try it locally first, on any folder in the FAT2019 layout:

    python {out}/kernel.py --test DATA/test --sample-submission DATA/sample_submission.csv --out submission.csv --models {out}
"""


def _load_state_dict(path: Path, from_last: bool) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in load_state_dict(path).items()}


def check_dataset_identity(kaggle_user: str | None, dataset_slug: str) -> None:
    """Fail early on a user name or slug Kaggle would reject (after a long retraining)."""
    if kaggle_user is not None and not _USER.match(kaggle_user):
        raise ConfigError(f"--kaggle-user {kaggle_user!r}: expected letters, digits, '-' or '_'")
    if not _SLUG.match(dataset_slug):
        raise ConfigError(f"--dataset-slug {dataset_slug!r}: expected 5-50 lowercase letters, digits and '-', "
                          f"not starting or ending with '-'")
