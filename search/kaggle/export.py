"""Write the folder a user uploads as a Kaggle dataset: the members' weights and the generated kernel.

An export is a list of members (one model, a seed or fold ensemble of one config, or an ensemble chosen
from a whole study), each with its exact TrainConfig and its weight in the pooled probabilities. A
member's weights come from retraining its config (``retrain``) or from its trial's own best.pth
(``reuse_checkpoints``). The folder holds best.pth (one plain state_dict of tensors: one model's as it is, or
every member's under its own ``members.K.`` prefix), config.json (format ``fat2019-search-export/3``: labels,
pooling, one entry per member with file, prefix, weight, train_config and provenance; all the kernel reads), kernel.py, dataset-metadata.json for ``kaggle datasets create``,
SUBMIT.md and export.json (where it came from, validation lwlrap, measured inference cost).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.kaggle.kernel import write_kernel
from search.kaggle.kernel_main import EXPORT_FORMAT, POOLINGS
from search.study.artifacts import TrialFiles
from search.study.folds import fold_file
from trainer import (
    ConfigError,
    TrainConfig,
    atomic_torch_save,
    atomic_write_text,
    load_labels,
    load_state_dict,
    train_and_evaluate,
)

KAGGLE_TEST_CLIPS = 3361  # clips the FAT2019 kernel scored in the 2nd stage
MEASURE_CLIPS = 64  # test clips the export scores with the generated kernel to time it
PLACEHOLDER_USER = "YOUR-KAGGLE-USERNAME"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{3,48}[a-z0-9]$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class KernelRunError(RuntimeError):
    """The generated kernel.py failed when run; the message has its exit status and last error line."""


@dataclass(frozen=True)
class Member:
    """One model of an export: its config, its weight in the pooled probabilities, the trial it comes from."""

    config: TrainConfig
    weight: float = 1.0
    trial: int | None = None
    trial_lwlrap: float | None = None
    threads: int | None = None  # torch threads for retraining: the trial's own, so CPU numbers reproduce
    fold_of_trial: int | None = None  # the fold of a cross-validated trial this member's weights are (as trained)


@dataclass(frozen=True)
class TrainedMember:
    """A member with weights: the state_dict file and what its validation said."""

    member: Member
    weights: Path
    checkpoint: str  # "best" / "last" epoch of a retraining, or "trial" = the trial's own best.pth
    epoch: int
    val_lwlrap: float
    val_predictions: Path | None = None


@dataclass(frozen=True)
class ExportPlan:
    """What to export and how to name it: the members, the pooling, the dataset identity."""

    members: list[Member]
    pooling: str = "mean"
    kaggle_user: str | None = None
    dataset_slug: str = "fat2019-model"
    title: str = "FAT2019 audio tagging model"
    source: dict[str, Any] = field(default_factory=dict)  # provenance for export.json (study, trials, ...)


def member_configs(base: TrainConfig, *, seeds: int = 1, folds: int | None = None, full_curated: bool = False,
                   epochs: int | None = None, epochs_scale: int = 1) -> list[TrainConfig]:
    """The configs of an export of one config: ``seeds`` models (seed, seed+1, ...) or one per curated fold."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: expected at least 1")
    if folds is not None and seeds > 1:
        raise ConfigError("--seeds and --folds both ask for an ensemble; choose one")
    if folds is not None and full_curated:
        raise ConfigError("--folds with --full-curated would train every fold model on the same clips; choose one")
    base = retrain_config(base, full_curated=full_curated, epochs=epochs, epochs_scale=epochs_scale)
    if folds is not None:
        if folds < 2:
            raise ConfigError(f"--folds {folds}: expected at least 2")
        return [base.with_overrides({"data.n_folds": folds, "data.val_fold": k}, source="--folds") for k in range(folds)]
    return [base.with_overrides({"seed": base.seed + k}, source="--seeds") for k in range(seeds)]


def retrain_config(config: TrainConfig, *, full_curated: bool = False, epochs: int | None = None,
                   epochs_scale: int = 1) -> TrainConfig:
    """``config`` with the export's retraining options (``--epochs``, a recipe's epoch scale, ``--full-curated``)
    applied. A scaled budget scales the warm-up with it, and the cosine schedule spans the epochs it is given:
    a longer training follows the same curve, stretched."""
    if epochs is not None and epochs_scale != 1:
        raise ConfigError(f"--epochs {epochs} and a recipe at {epochs_scale}x its trial's epochs: choose one")
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    elif epochs_scale != 1:
        overrides["optim.epochs"] = config.optim.epochs * epochs_scale
        if config.optim.warmup_epochs:
            overrides["optim.warmup_epochs"] = config.optim.warmup_epochs * epochs_scale
    if full_curated:
        overrides["data.full_curated"] = True
    return config.with_overrides(overrides, source="export") if overrides else config


WEIGHTS_FILE = "best.pth"  # the one file a user uploads as the Kaggle dataset's weights, whatever the recipe


def member_prefixes(n_models: int) -> list[str]:
    """Where each member's tensors sit in best.pth: one model's state_dict as it is (loadable on its own), an
    ensemble's under ``members.0.``, ``members.1.``, ... (one file, one ``torch.load(weights_only=True)``)."""
    return [""] if n_models == 1 else [f"members.{k}." for k in range(n_models)]


def config_digest(config: TrainConfig) -> str:
    return hashlib.blake2b(config.to_json().encode("utf-8"), digest_size=8).hexdigest()


def retrain(members: list[Member], data_dir: str | Path | None, runs_dir: Path, *,
            cache_dir: str | Path | None = None, progress: bool | None = None,
            threads: int | None = None) -> list[TrainedMember]:
    """Train each member's config in ``runs_dir/<config digest>`` (an interrupted export resumes there) with
    ``threads`` or the member's own. With full_curated the validation clips were trained on, so the last
    epoch is the model, not the "best"."""
    trained = []
    for k, member in enumerate(members):
        config = member.config
        print(f"training model {k + 1}/{len(members)}{f' (trial {member.trial})' if member.trial is not None else ''}: "
              f"{config.optim.epochs} epochs, seed {config.seed}"
              f"{f', fold {config.data.val_fold}' if config.data.val_fold is not None else ''}", file=sys.stderr)
        result = train_and_evaluate(config, data_dir, workdir=runs_dir / config_digest(config), progress=progress,
                                    cache_dir=cache_dir, threads=threads or member.threads)
        last = config.data.full_curated
        trained.append(TrainedMember(member, result.last_path if last else result.best_path, "last" if last else "best",
                                     result.epochs_run if last else result.best_epoch,
                                     result.last_lwlrap if last else result.best_lwlrap,
                                     None if last else result.val_predictions_path))
    return trained


def member_weights_file(member: Member) -> str:
    """The artifact that holds ``member``'s weights: its trial's best.pth, or a cross-validated trial's fold
    model (``fold{k}-best.pth``) when the member is one of its folds."""
    return "best.pth" if member.fold_of_trial is None else fold_file(member.fold_of_trial, "best.pth")


def check_reusable(members: list[Member], files: TrialFiles) -> None:
    """Refuse (one line) members whose trial's best.pth (or fold model) is not in the artifact store."""
    missing = [m.trial for m in members if m.trial is None or not files.has(m.trial, member_weights_file(m))]
    if missing:
        raise ConfigError(f"--reuse-checkpoints: trial(s) {', '.join(map(str, missing))} have no stored best.pth "
                          f"(checkpoint retention keeps weights only for the spec's keep_weights best trials); "
                          f"export without --reuse-checkpoints to retrain them")


def reuse_checkpoints(members: list[Member], files: TrialFiles, staging: Path) -> list[TrainedMember]:
    """Each member's trial's own best.pth from the artifact store (the exact validated weights)."""
    check_reusable(members, files)
    trained = []
    for member in members:
        folder = staging / f"trial-{member.trial}"
        if member.fold_of_trial is not None:
            folder = folder / f"fold-{member.fold_of_trial}"
        folder.mkdir(parents=True, exist_ok=True)
        if member.fold_of_trial is None:
            weights = files.pull(member.trial, "best.pth", folder)
            predictions = files.pull(member.trial, "val_predictions.npz", folder)
        else:
            weights = files.pull(member.trial, member_weights_file(member), folder, as_name="best.pth")
            predictions = files.pull(member.trial, fold_file(member.fold_of_trial, "val_predictions.npz"), folder,
                                     as_name="val_predictions.npz")
        epoch, lwlrap = -1, member.trial_lwlrap
        if predictions is not None:  # written with best.pth: its epoch and validation score
            with np.load(predictions) as stored:
                epoch, lwlrap = int(stored["epoch"]), float(stored["lwlrap"])
        trained.append(TrainedMember(member, weights, "trial", epoch, float("nan") if lwlrap is None else lwlrap,
                                     predictions))
    return trained


def write_export(out: Path, plan: ExportPlan, trained: list[TrainedMember]) -> dict[str, Any]:
    """Write weights, config.json, kernel.py, dataset-metadata.json, SUBMIT.md and export.json into ``out``."""
    if plan.pooling not in POOLINGS:
        raise ConfigError(f"pooling={plan.pooling!r}: expected one of {', '.join(POOLINGS)}")
    out.mkdir(parents=True, exist_ok=True)
    total = sum(t.member.weight for t in trained)
    pooled: dict[str, Any] = {}
    members = []
    for prefix, item in zip(member_prefixes(len(trained)), trained):
        pooled.update({prefix + key: value.detach().clone() for key, value in load_state_dict(item.weights).items()})
        config = item.member.config
        members.append({"file": WEIGHTS_FILE, "prefix": prefix, "weight": item.member.weight / total,
                        "train_config": config.to_dict(),
                        "trial": item.member.trial, "seed": config.seed, "val_fold": config.data.val_fold,
                        "checkpoint": item.checkpoint, "epoch": item.epoch, "val_lwlrap": item.val_lwlrap,
                        "trial_lwlrap": item.member.trial_lwlrap})
    atomic_torch_save(pooled, out / WEIGHTS_FILE)
    for stale in out.glob("*.pth"):  # an earlier export's model-K.pth into the same folder
        if stale.name != WEIGHTS_FILE:
            stale.unlink()
    meta = {"format": EXPORT_FORMAT, "labels": list(load_labels()), "pooling": plan.pooling, "members": members}
    atomic_write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    kernel_text = write_kernel(out / "kernel.py")
    dataset_id = f"{plan.kaggle_user or PLACEHOLDER_USER}/{plan.dataset_slug}"
    atomic_write_text(out / "dataset-metadata.json", json.dumps(
        {"title": plan.title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}, indent=2) + "\n")
    atomic_write_text(out / "SUBMIT.md", submit_steps(out, dataset_id, plan.kaggle_user is None))
    record = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **plan.source,
              "members": [{k: v for k, v in m.items() if k != "train_config"} for m in members],
              "pooling": plan.pooling, "dataset_id": dataset_id,
              "kernel_sha256": hashlib.sha256(kernel_text.encode("utf-8")).hexdigest()}
    write_record(out, record)
    return record


def write_record(out: Path, record: dict[str, Any]) -> None:
    """(Re)write export.json: provenance, members, measured inference."""
    atomic_write_text(out / "export.json", json.dumps(record, indent=2) + "\n")


def isolated_env() -> dict[str, str]:
    """Environment for ``python -S``: torch & co. import from site-packages, the project does not (no site
    module, so no editable-install hook and no .pth file; the project folder is not on the path)."""
    site_dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": os.pathsep.join(dict.fromkeys(site_dirs))}
    for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def run_kernel(models_dir: Path, test_dir: Path, sample_submission: Path, out: Path, *, device: str = "auto",
               timing: Path | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``models_dir/kernel.py`` as Kaggle would: a separate process where the project is not importable.
    Raises KernelRunError with the kernel's last error line when it fails."""
    command = [sys.executable, "-S", str((models_dir / "kernel.py").resolve()), "--test", str(Path(test_dir).resolve()),
               "--sample-submission", str(Path(sample_submission).resolve()), "--out", str(Path(out).resolve()),
               "--models", str(models_dir.resolve()), "--device", device, "--no-progress"]
    if timing is not None:
        command += ["--timing", str(Path(timing).resolve())]
    done = subprocess.run(command, cwd=models_dir, env=isolated_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KernelRunError(f"{models_dir / 'kernel.py'} exited with {done.returncode}: {last}")
    return done


def measure_kernel(out: Path, data_dir: Path, *, clips: int = MEASURE_CLIPS, device: str = "auto") -> dict[str, Any] | None:
    """Run the generated kernel.py (a separate process without the project) on the first ``clips`` test clips.

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
    with tempfile.TemporaryDirectory(prefix="fat2019-kernel-") as tmp:
        subset_csv = Path(tmp) / "sample_submission.csv"
        with open(subset_csv, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([rows[0], *subset])
        run_kernel(out, test_dir, subset_csv, Path(tmp) / "submission.csv", device=device, timing=Path(tmp) / "t.json")
        stats = json.loads((Path(tmp) / "t.json").read_text(encoding="utf-8"))
    per_clip = stats["seconds"] / stats["clips"]
    return {"clips": stats["clips"], "seconds": round(stats["seconds"], 3), "seconds_per_clip": per_clip,
            "seconds_per_audio_second": stats["seconds"] / max(stats["audio_seconds"], 1e-9),
            "device": stats["device"], "projected_kaggle_seconds": per_clip * KAGGLE_TEST_CLIPS,
            "projected_for_clips": KAGGLE_TEST_CLIPS}


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

and, where the folder has labels for its test clips (the built-in sets' `test_labels.csv`), score it:

    python -m search.score submission.csv DATA/test_labels.csv
"""


def check_dataset_identity(kaggle_user: str | None, dataset_slug: str) -> None:
    """Fail early on a user name or slug Kaggle would reject (after a long retraining)."""
    if kaggle_user is not None and not _USER.match(kaggle_user):
        raise ConfigError(f"--kaggle-user {kaggle_user!r}: expected letters, digits, '-' or '_'")
    if not _SLUG.match(dataset_slug):
        raise ConfigError(f"--dataset-slug {dataset_slug!r}: expected 5-50 lowercase letters, digits and '-', "
                          f"not starting or ending with '-'")
