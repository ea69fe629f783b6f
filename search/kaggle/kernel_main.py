"""The Kaggle kernel's driver: load the exported members, score every test clip, write submission.csv.

This is the only kernel-specific code. ``search.kaggle.kernel`` carries it, with the ``trainer`` package it
imports, inside the generated kernel.py, so the kernel runs exactly the code that trained and validated
the models. Members of an ensemble may differ in feature parameters, model and head: each distinct
log-mel setting is computed once per clip, every member runs on the clips' features, and the members'
probabilities are pooled with their weights (arithmetic or geometric mean).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import glob
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer import (
    AudioReadError,
    CheckpointError,
    ConfigError,
    FeatureBank,
    LogMel,
    TrainConfig,
    atomic_write_text,
    build_model,
    feature_cache_key,
    load_state_dict,
    predict_bank,
    read_audio,
    resolve_device,
)

EXPORT_FORMAT = "fat2019-search-export/3"  # marks our config.json among other attached datasets
COMPETITION_INPUT = "../input/freesound-audio-tagging-2019"
CLIPS_PER_BANK = 128  # clips whose log-mels are packed into one FeatureBank
POOLINGS = ("mean", "geometric")
_GEOMETRIC_FLOOR = 1e-7  # keeps log(0) out of the geometric mean


class KernelError(RuntimeError):
    """Inputs the kernel cannot work with (missing files, a foreign config.json); the message says which."""


@dataclass(frozen=True)
class ExportMember:
    """One exported model: its weights file and the prefix of its tensors there, its weight in the pooled
    probabilities, its exact config."""

    file: str
    weight: float
    config: TrainConfig
    prefix: str = ""


@dataclass(frozen=True)
class ExportInfo:
    """What an export's config.json describes: the label order, the members and how they are pooled."""

    labels: list[str]
    members: list[ExportMember]
    pooling: str


def load_export(models_dir: Path) -> ExportInfo:
    """Read ``models_dir/config.json`` as written by ``python -m search.best --export``."""
    path = models_dir / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KernelError(f"{path}: not found (pass --models DIR, the folder with config.json and the .pth files)") from None
    except ValueError as exc:
        raise KernelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise KernelError(f"{path}: format {found!r} is not {EXPORT_FORMAT!r} (re-export with this project's "
                          f"python -m search.best --export)")
    pooling = meta.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise KernelError(f"{path}: pooling={pooling!r}; expected one of {', '.join(POOLINGS)}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels:
        raise KernelError(f"{path}: 'labels' must be the list of label names in the models' output order")
    members = []
    for k, entry in enumerate(meta.get("members") or []):
        weight = entry.get("weight") if isinstance(entry, dict) else None
        if (not isinstance(weight, (int, float)) or not weight > 0 or not isinstance(entry.get("file"), str)
                or not isinstance(entry.get("prefix", ""), str)):
            raise KernelError(f"{path}: members[{k}] needs 'file' (a .pth name), 'prefix' (text) and 'weight' > 0; "
                              f"got {entry!r:.120}")
        config = TrainConfig.from_dict(entry.get("train_config") or {}, source=f"{path} members[{k}].train_config")
        members.append(ExportMember(entry["file"], float(weight), config, entry.get("prefix", "")))
    if not members:
        raise KernelError(f"{path}: 'members' lists no model")
    return ExportInfo(list(labels), members, pooling)


def find_models_dir(explicit: str | None, script: str | None) -> Path:
    """--models, else this script's folder, else the one attached dataset holding our config.json."""
    if explicit:
        return Path(explicit)
    if script and (Path(script).resolve().parent / "config.json").is_file():
        return Path(script).resolve().parent
    candidates = []
    for pattern in ("../input/*/config.json", "../input/*/*/config.json", "/kaggle/input/*/config.json",
                    "/kaggle/input/*/*/config.json"):
        for found in sorted(glob.glob(pattern)):
            try:
                if json.loads(Path(found).read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT:
                    candidates.append(Path(found).resolve().parent)
            except (OSError, ValueError, AttributeError):
                continue
    candidates = sorted(set(candidates))
    if len(candidates) != 1:
        found_text = ", ".join(map(str, candidates)) or "none"
        raise KernelError(f"cannot tell which folder holds the models (found: {found_text}); pass --models DIR")
    return candidates[0]


def member_state_dicts(info: ExportInfo, models_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Each member's weights: the tensors of its file under its prefix (each file read once, tensors only)."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    states = []
    for member in info.members:
        if member.file not in files:
            files[member.file] = load_state_dict(models_dir / member.file)
        prefix = member.prefix
        state = {key[len(prefix):]: value for key, value in files[member.file].items() if key.startswith(prefix)}
        if not state:
            raise KernelError(f"{models_dir / member.file}: no tensors under the prefix {prefix!r} that config.json "
                              f"names for a member (re-export the folder)")
        states.append(state)
    return states


def load_models(info: ExportInfo, models_dir: Path, device: torch.device) -> list[torch.nn.Module]:
    """Build each member's network from its config and load its weights."""
    models = []
    for member, state in zip(info.members, member_state_dicts(info, models_dir)):
        model = build_model(member.config.model, n_labels=len(info.labels))
        model.load_state_dict(state)
        models.append(model.to(device).eval())
    return models


def pool_probabilities(per_model: list[np.ndarray], pooling: str, weights: list[float] | None = None) -> np.ndarray:
    """Weighted average of the members' (N, labels) probabilities: arithmetic or geometric mean.
    ``weights`` (default: equal) are normalised to sum to 1."""
    stack = np.stack(per_model).astype(np.float64)
    w = np.full(len(per_model), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    w = (w / w.sum())[:, None, None]
    if pooling == "geometric":
        return np.exp((w * np.log(np.clip(stack, _GEOMETRIC_FLOOR, 1.0))).sum(axis=0))
    return (w * stack).sum(axis=0)


def feature_groups(info: ExportInfo) -> dict[str, list[int]]:
    """Members by log-mel setting (the feature cache's key): each setting is computed once per clip."""
    groups: dict[str, list[int]] = {}
    for k, member in enumerate(info.members):
        groups.setdefault(feature_cache_key(member.config.features), []).append(k)
    return groups


def read_waves(paths: list[Path], sample_rates: list[int], threads: int = 4) -> list[dict[int, np.ndarray] | str]:
    """Each clip decoded at every needed sample rate, or the reason it could not be read."""
    def read(path: Path) -> dict[int, np.ndarray] | str:
        try:
            return {rate: read_audio(path, rate) for rate in sample_rates}
        except AudioReadError as exc:
            return exc.reason

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # decoding overlaps the log-mel
        return list(pool.map(read, paths))


def predict_files(models: list[torch.nn.Module], info: ExportInfo, paths: list[Path], *,
                  device: torch.device, batch_size: int = 64, progress: bool = True
                  ) -> tuple[np.ndarray, dict[int, str], float]:
    """Pooled probabilities (N, labels) for every path (NaN rows for unreadable clips), the reasons those
    clips failed, and the seconds of audio scored."""
    groups = feature_groups(info)
    features = {key: info.members[ks[0]].config.features for key, ks in groups.items()}
    log_mels = {key: LogMel(cfg).to(device) for key, cfg in features.items()}
    rates = sorted({cfg.sample_rate for cfg in features.values()})
    probs = np.full((len(paths), len(info.labels)), np.nan)
    failed: dict[int, str] = {}
    audio_seconds = 0.0
    bar = tqdm(total=len(paths), unit="clip", desc="test clips", file=sys.stdout, disable=not progress)
    for begin in range(0, len(paths), CLIPS_PER_BANK):
        waves = read_waves(paths[begin:begin + CLIPS_PER_BANK], rates)
        readable = [i for i, item in enumerate(waves) if not isinstance(item, str)]
        failed.update({begin + i: item for i, item in enumerate(waves) if isinstance(item, str)})
        audio_seconds += sum(len(waves[i][rates[0]]) / rates[0] for i in readable)
        if readable:
            per_member: list[np.ndarray | None] = [None] * len(info.members)
            for key, members in groups.items():
                cfg = features[key]
                with torch.no_grad():  # float16, as the training cache stores log-mels
                    arrays = [log_mels[key](torch.from_numpy(waves[i][cfg.sample_rate]).to(device)).cpu().numpy()
                              .astype(np.float16) for i in readable]
                banks: dict[str, FeatureBank] = {}
                for k in members:
                    member_features = info.members[k].config.features
                    if member_features.normalize not in banks:
                        banks[member_features.normalize] = FeatureBank.from_arrays(
                            arrays, normalize=member_features.normalize, device=device)
                    per_member[k] = predict_bank(models[k], banks[member_features.normalize],
                                                 n_frames=member_features.crop_frames,
                                                 pad_mode=member_features.pad_mode, batch_size=batch_size)
            probs[[begin + i for i in readable]] = pool_probabilities(
                per_member, info.pooling, [m.weight for m in info.members])
        bar.update(len(waves))
    bar.close()
    return probs, failed, audio_seconds


def read_sample_submission(path: Path) -> tuple[list[str], list[str]]:
    """(header, fnames) of sample_submission.csv, kept verbatim so the submission matches it exactly."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise KernelError(f"{path}: sample submission not found (pass --sample-submission CSV)") from None
    except UnicodeDecodeError as exc:
        raise KernelError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          f"expected the competition's sample_submission.csv") from None
    if not rows or not rows[0] or rows[0][0].lstrip("\ufeff") != "fname":
        raise KernelError(f"{path}:1: expected a header starting with 'fname'")
    return rows[0], [row[0] for row in rows[1:] if row]


def label_order(header: list[str], labels: list[str], sample_submission: Path) -> list[int]:
    """For each submission column after fname, the index of that label in the models' output."""
    position = {label: i for i, label in enumerate(labels)}
    columns = header[1:]
    unknown = [name for name in columns if name not in position]
    absent = [label for label in labels if label not in columns]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if unknown or absent or repeated:
        found = [f"{what}: {names[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                 for what, names in (("unknown", unknown), ("missing", absent), ("repeated", repeated)) if names]
        raise KernelError(f"{sample_submission}:1: columns do not match the models' {len(labels)} labels "
                          f"({'; '.join(found)})")
    return [position[name] for name in header[1:]]


def write_submission(out: Path, header: list[str], fnames: list[str], scores: np.ndarray) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for fname, row in zip(fnames, scores):
        writer.writerow([fname, *(repr(float(v)) for v in row)])
    atomic_write_text(out, text.getvalue())


def run(test_dir: Path, sample_submission: Path, out: Path, models_dir: Path, *, device: str = "auto",
        batch_size: int = 64, progress: bool = True) -> dict:
    """Score every clip of sample_submission, write ``out``, return timings (seconds, clips/s, audio seconds)."""
    started = time.perf_counter()
    dev = resolve_device(device)
    info = load_export(models_dir)
    if not test_dir.is_dir():
        raise KernelError(f"{test_dir}: test folder not found (pass --test DIR)")
    header, fnames = read_sample_submission(sample_submission)
    columns = label_order(header, info.labels, sample_submission)
    models = load_models(info, models_dir, dev)
    paths = [test_dir / fname for fname in fnames]
    probs, failed, audio_seconds = predict_files(models, info, paths, device=dev, batch_size=batch_size,
                                                 progress=progress)
    for i in np.flatnonzero(~np.isfinite(probs).all(axis=1)):
        failed.setdefault(int(i), "the models gave a non-finite score")
    if failed:
        readable = np.isfinite(probs).all(axis=1)
        fill = probs[readable].mean(axis=0) if readable.any() else np.zeros(probs.shape[1])
        probs[~readable] = fill
        listing = "; ".join(f"{fnames[i]} ({reason})" for i, reason in sorted(failed.items())[:20])
        warnings.warn(f"{len(failed)} test clip(s) could not be scored and get the mean prediction: {listing}",
                      stacklevel=2)
    scores = np.clip(probs[:, columns], 0.0, 1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_submission(out, header, fnames, scores)
    seconds = time.perf_counter() - started
    settings = len(feature_groups(info))
    stats = {"clips": len(fnames), "unreadable": len(failed), "seconds": seconds,
             "clips_per_second": len(fnames) / max(seconds, 1e-9), "audio_seconds": audio_seconds,
             "device": str(dev), "members": len(models), "feature_settings": settings}
    print(f"wrote {out}: {len(fnames)} clips x {len(columns)} labels in {seconds:.1f}s "
          f"({stats['clips_per_second']:.1f} clips/s on {dev}; {len(models)} member(s), {settings} feature "
          f"setting(s), {info.pooling} pooling; {len(failed)} unreadable)", flush=True)
    return stats


def main(argv: list[str] | None = None, script: str | None = None) -> int:
    """Command line of kernel.py; ``script`` is the kernel file's path (None when pasted into a notebook)."""
    parser = argparse.ArgumentParser(description="Score FAT2019 test clips with exported models; write submission.csv")
    parser.add_argument("--test", default=f"{COMPETITION_INPUT}/test", help="folder of test .wav files")
    parser.add_argument("--sample-submission", default=f"{COMPETITION_INPUT}/sample_submission.csv")
    parser.add_argument("--out", default="submission.csv")
    parser.add_argument("--models", default=None, help="folder with config.json + .pth (default: found)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--timing", help="also write the run's timings (seconds, clips/s, audio seconds) as JSON here")
    # parse_known_args: inside a notebook argv holds Jupyter's own arguments.
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        models_dir = find_models_dir(args.models, script)
        stats = run(Path(args.test), Path(args.sample_submission), Path(args.out), models_dir, device=args.device,
                    batch_size=args.batch_size, progress=not args.no_progress)
    except (KernelError, ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.timing:
        atomic_write_text(args.timing, json.dumps(stats, indent=2) + "\n")
    return 0
