"""The Kaggle kernel's driver: find the exported models, score every test clip, write submission.csv.

This is the only kernel-specific code. ``search.kernel`` inlines it after the trainer modules it
imports (audio reading, log-mel, FeatureBank, the model builder, predict_bank), so the kernel runs
exactly the code that trained and validated the models. Run here, it imports them from ``trainer``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import glob
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.audio import AudioReadError, read_audio
from trainer.batches import FeatureBank
from trainer.features import LogMel
from trainer.atomic import atomic_write_text
from trainer.config import ConfigError, TrainConfig
from trainer.inference import predict_bank, resolve_device
from trainer.models import build_model

EXPORT_FORMAT = "fat2019-search-export/1"  # marks our config.json among other attached datasets
COMPETITION_INPUT = "../input/freesound-audio-tagging-2019"
CLIPS_PER_BANK = 128  # clips whose log-mels are packed into one FeatureBank
POOLINGS = ("mean", "geometric")
_GEOMETRIC_FLOOR = 1e-7  # keeps log(0) out of the geometric mean


class KernelError(RuntimeError):
    """Inputs the kernel cannot work with (missing files, a foreign config.json); the message says which."""


@dataclass(frozen=True)
class ExportInfo:
    """What an export's config.json describes: one TrainConfig, the label order, the model files, pooling."""

    config: TrainConfig
    labels: list[str]
    model_files: list[str]
    pooling: str


def load_export(models_dir: Path) -> ExportInfo:
    """Read ``models_dir/config.json`` as written by ``python -m search.best --export``."""
    path = models_dir / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KernelError(f"{path}: not found (pass --models DIR, the folder with config.json and the .pth files)") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise KernelError(f"{path}: format {meta.get('format')!r} is not {EXPORT_FORMAT!r}")
    pooling = meta.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise KernelError(f"{path}: pooling={pooling!r}; expected one of {', '.join(POOLINGS)}")
    files = [m["file"] for m in meta["models"]]
    return ExportInfo(TrainConfig.from_dict(meta["train_config"], source=str(path)), list(meta["labels"]),
                      files, pooling)


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


def load_models(info: ExportInfo, models_dir: Path, device: torch.device) -> list[torch.nn.Module]:
    """Build each network from the exported config and load its weights (tensors only)."""
    models = []
    for name in info.model_files:
        model = build_model(info.config.model, n_labels=len(info.labels))
        model.load_state_dict(torch.load(models_dir / name, map_location="cpu", weights_only=True))
        models.append(model.to(device).eval())
    return models


def pool_probabilities(per_model: list[np.ndarray], pooling: str) -> np.ndarray:
    """Average the models' (N, labels) probabilities: arithmetic or geometric mean."""
    stack = np.stack(per_model)
    if pooling == "geometric":
        return np.exp(np.log(np.clip(stack, _GEOMETRIC_FLOOR, 1.0)).mean(axis=0))
    return stack.mean(axis=0)


def log_mels(paths: list[Path], log_mel: LogMel, device: torch.device, threads: int = 4
             ) -> tuple[list[np.ndarray | str], float]:
    """float16 log-mel per clip, as the training cache stores it, or the reason it could not be read;
    and the seconds of audio read."""
    sample_rate = log_mel.cfg.sample_rate

    def read(path: Path) -> np.ndarray | str:
        try:
            return read_audio(path, sample_rate)
        except AudioReadError as exc:
            return exc.reason

    out: list[np.ndarray | str] = []
    seconds = 0.0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # decoding overlaps the log-mel
        for wave in pool.map(read, paths):
            if isinstance(wave, str):
                out.append(wave)
                continue
            seconds += len(wave) / sample_rate
            with torch.no_grad():
                spec = log_mel(torch.from_numpy(wave).to(device))
            out.append(spec.cpu().numpy().astype(np.float16))
    return out, seconds


def predict_files(models: list[torch.nn.Module], info: ExportInfo, paths: list[Path], *,
                  device: torch.device, batch_size: int = 64, progress: bool = True
                  ) -> tuple[np.ndarray, dict[int, str], float]:
    """Pooled probabilities (N, labels) for every path (NaN rows for unreadable clips), the reasons those
    clips failed, and the seconds of audio scored."""
    features = info.config.features
    log_mel = LogMel(features).to(device)
    probs = np.full((len(paths), len(info.labels)), np.nan)
    failed: dict[int, str] = {}
    audio_seconds = 0.0
    bar = _progress(len(paths), progress)
    for begin in range(0, len(paths), CLIPS_PER_BANK):
        chunk, seconds = log_mels(paths[begin:begin + CLIPS_PER_BANK], log_mel, device)
        audio_seconds += seconds
        readable = [i for i, item in enumerate(chunk) if not isinstance(item, str)]
        failed.update({begin + i: item for i, item in enumerate(chunk) if isinstance(item, str)})
        if readable:
            bank = FeatureBank.from_arrays([chunk[i] for i in readable], normalize=features.normalize, device=device)
            per_model = [predict_bank(model, bank, n_frames=features.crop_frames, pad_mode=features.pad_mode,
                                      batch_size=batch_size) for model in models]
            probs[[begin + i for i in readable]] = pool_probabilities(per_model, info.pooling)
        bar(len(chunk))
    return probs, failed, audio_seconds


def read_sample_submission(path: Path) -> tuple[list[str], list[str]]:
    """(header, fnames) of sample_submission.csv, kept verbatim so the submission matches it exactly."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise KernelError(f"{path}: sample submission not found (pass --sample-submission CSV)") from None
    if not rows or not rows[0] or rows[0][0].lstrip("\ufeff") != "fname":
        raise KernelError(f"{path}:1: expected a header starting with 'fname'")
    return rows[0], [row[0] for row in rows[1:] if row]


def label_order(header: list[str], labels: list[str], sample_submission: Path) -> list[int]:
    """For each submission column after fname, the index of that label in the models' output."""
    position = {label: i for i, label in enumerate(labels)}
    missing = [name for name in header[1:] if name not in position]
    if missing or len(header) - 1 != len(labels):
        raise KernelError(f"{sample_submission}:1: columns do not match the models' {len(labels)} labels "
                          f"(unknown: {missing[:3]})")
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
    probs, failed, audio_seconds = predict_files(models, info, paths, device=dev, batch_size=batch_size, progress=progress)
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
    stats = {"clips": len(fnames), "unreadable": len(failed), "seconds": seconds,
             "clips_per_second": len(fnames) / max(seconds, 1e-9),
             "audio_seconds": audio_seconds, "device": str(dev), "models": len(models)}
    print(f"wrote {out}: {len(fnames)} clips x {len(columns)} labels in {seconds:.1f}s "
          f"({stats['clips_per_second']:.1f} clips/s on {dev}, {len(models)} model(s), {len(failed)} unreadable)",
          flush=True)
    return stats


def _progress(total: int, enabled: bool):
    """A callable advancing a tqdm bar when tqdm is importable, else printing every ~10%."""
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        done, step = [0, 0], max(1, math.ceil(total / 10))

        def advance(n: int) -> None:
            done[0] += n
            if done[0] // step > done[1] or done[0] >= total:
                done[1] = done[0] // step
                print(f"scored {done[0]}/{total} clips", flush=True)
        return advance
    bar = tqdm(total=total, unit="clip", desc="test clips", file=sys.stdout)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()
    return advance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score FAT2019 test clips with exported models; write submission.csv")
    parser.add_argument("--test", default=f"{COMPETITION_INPUT}/test", help="folder of test .wav files")
    parser.add_argument("--sample-submission", default=f"{COMPETITION_INPUT}/sample_submission.csv")
    parser.add_argument("--out", default="submission.csv")
    parser.add_argument("--models", default=None, help="folder with config.json + .pth (default: found)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--no-progress", action="store_true")
    # parse_known_args: inside a notebook argv holds Jupyter's own arguments.
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    script = globals().get("__file__")  # absent when pasted into a notebook cell
    try:
        models_dir = find_models_dir(args.models, script)
        run(Path(args.test), Path(args.sample_submission), Path(args.out), models_dir, device=args.device,
            batch_size=args.batch_size, progress=not args.no_progress)
    except (KernelError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
