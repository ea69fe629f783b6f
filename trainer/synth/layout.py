"""What every built-in data set shares: the plan of its clips and how it is written in the FAT2019 layout.

A built-in set only says which labels it can realise and how to render one planned clip; this module draws
the labels per clip (primary labels balanced, about 1 clip in 7 multi-label, noisy labels corrupted), the clip
lengths and the fnames, writes the CSVs, ``sample_submission.csv`` and ``test_labels.csv``, and publishes the
folder atomically: built beside its destination, then renamed, with a ``.complete`` marker for the cache.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from trainer.atomic import atomic_write_text
from trainer.labels import load_labels
from trainer.paths import cache_root
from trainer.synth.dsp import SAMPLE_RATE

MULTI_LABEL_P = 1 / 7  # share of curated/test clips with more than one label
NOISY_CORRUPT_P = 0.35  # share of noisy clips whose written labels differ from the audio

BASE_COUNTS = {"curated": 600, "noisy": 600, "test": 300}  # clips at scale 1.0
MIN_CURATED_PER_LABEL = 3  # so a train/valid split keeps every realised label on both sides
CLIP_SECONDS = {"curated": (2.0, 0.6), "noisy": (3.5, 0.6), "test": (2.0, 0.6)}  # lognormal median, sigma
CLIP_BOUNDS_S = (0.3, 10.0)
COMPLETE_MARKER = ".complete"
MANIFEST = "sources.csv"
SPLIT_IDS = {"curated": 1, "noisy": 2, "test": 3}
SPLIT_FOLDERS = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}


class MissingSoundSourceError(RuntimeError):
    """A system package a built-in set renders from is not installed; the message names it and the fix."""


@dataclass(frozen=True)
class Clip:
    """One planned clip: what the audio contains (``labels``) and what its CSV row says (``written``)."""

    split: str
    index: int
    fname: str
    labels: tuple[str, ...]
    written: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class RenderedClip:
    audio: np.ndarray  # int16, mono, SAMPLE_RATE
    sources: tuple[str, ...] = ()  # what was mixed in, for the manifest; empty where a set keeps none


# A renderer is built once per generation (it may load sound banks) and then called for every clip.
Renderer = Callable[[Clip], RenderedClip]


@dataclass(frozen=True)
class BuiltinSet:
    """A built-in data set: its name, the labels it realises and the factory of its clip renderer."""

    name: str
    labels: tuple[str, ...]  # in vocabulary order
    make_renderer: Callable[[int], Renderer]  # seed -> renderer; raises MissingSoundSourceError
    fname_namespace: str = ""  # mixed into fname hashes, so two sets never share a clip name
    provenance: Callable[[], str] = lambda: ""  # extra lines for the .complete marker (source versions)


def split_sizes(scale: float, n_labels: int) -> dict[str, int]:
    """Clips per split at ``scale``: BASE_COUNTS scaled, every split holding each label at least once."""
    sizes = {split: max(round(count * scale), n_labels) for split, count in BASE_COUNTS.items()}
    sizes["curated"] = max(sizes["curated"], MIN_CURATED_PER_LABEL * n_labels)
    return sizes


def plan_fnames(seed: int, sizes: dict[str, int], namespace: str = "") -> dict[str, list[str]]:
    """8-hex-digit names hashed from (seed, split, index); a collision takes the next hash, in a fixed order."""
    # The demo's names were hashed before there were namespaces; an empty one keeps its bytes.
    prefix = f"{namespace}/" if namespace else ""
    taken: set[str] = set()
    names: dict[str, list[str]] = {}
    for split in SPLIT_IDS:
        names[split] = []
        for index in range(sizes[split]):
            attempt = 0
            while True:
                key = f"{prefix}{seed}/{split}/{index}/{attempt}".encode()
                name = hashlib.blake2b(key, digest_size=4).hexdigest() + ".wav"
                if name not in taken:
                    break
                attempt += 1
            taken.add(name)
            names[split].append(name)
    return names


def plan_split(split: str, n: int, seed: int, labels: tuple[str, ...], fnames: list[str] | None = None) -> list[Clip]:
    """Labels and lengths of a split, without audio: primary labels balanced, the rest random."""
    split_id = SPLIT_IDS[split]
    primaries = np.random.default_rng([seed, split_id]).permutation(np.resize(np.arange(len(labels)), n))
    median_s, sigma = CLIP_SECONDS[split]
    clips = []
    for index in range(n):
        rng = np.random.default_rng([seed, split_id, index, 0])
        true = [labels[primaries[index]]]
        if rng.random() < MULTI_LABEL_P:
            others = [label for label in labels if label != true[0]]
            extra = 1 if rng.random() < 0.8 else 2
            true += [str(x) for x in rng.choice(others, size=extra, replace=False)]
        written = list(true)
        if split == "noisy" and rng.random() < NOISY_CORRUPT_P:
            wrong_pool = [label for label in labels if label not in true]
            wrong = wrong_pool[rng.integers(len(wrong_pool))]
            if rng.random() < 0.7:
                written[rng.integers(len(written))] = wrong
            else:
                written.append(wrong)
        seconds = float(np.clip(median_s * math.exp(sigma * rng.standard_normal()), *CLIP_BOUNDS_S))
        name = fnames[index] if fnames is not None else f"{index:08x}.wav"
        clips.append(Clip(split, index, name, tuple(true), tuple(written), round(seconds, 3)))
    return clips


def plan(builtin: BuiltinSet, scale: float, seed: int) -> dict[str, list[Clip]]:
    """Every clip of the set at (scale, seed), by split."""
    sizes = split_sizes(scale, len(builtin.labels))
    names = plan_fnames(seed, sizes, builtin.fname_namespace)
    return {split: plan_split(split, sizes[split], seed, builtin.labels, names[split]) for split in SPLIT_IDS}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _build(tmp: Path, builtin: BuiltinSet, render: Renderer, scale: float, seed: int, progress: bool) -> None:
    plans = plan(builtin, scale, seed)
    all_clips = [clip for split in SPLIT_IDS for clip in plans[split]]
    if progress:
        from tqdm import tqdm

        all_clips = tqdm(all_clips, desc=f"rendering {builtin.name} clips", unit="clip")
    for folder in SPLIT_FOLDERS.values():
        (tmp / folder).mkdir()
    manifest = []
    for clip in all_clips:
        rendered = render(clip)
        path = tmp / SPLIT_FOLDERS[clip.split] / clip.fname
        sf.write(path, rendered.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        if rendered.sources:
            manifest.append([clip.split, clip.fname, ",".join(clip.labels), ";".join(rendered.sources)])
    for split in ("curated", "noisy"):
        rows = [[clip.fname, ",".join(clip.written)] for clip in plans[split]]
        _write_csv(tmp / f"train_{split}.csv", ["fname", "labels"], rows)
    _write_csv(tmp / "test_labels.csv", ["fname", "labels"], [[c.fname, ",".join(c.labels)] for c in plans["test"]])
    zeros = ["0"] * len(load_labels())
    _write_csv(tmp / "sample_submission.csv", ["fname", *load_labels()], [[c.fname, *zeros] for c in plans["test"]])
    if manifest:
        _write_csv(tmp / MANIFEST, ["split", "fname", "true_labels", "sources"], manifest)
    atomic_write_text(tmp / COMPLETE_MARKER, f"scale={scale:g} seed={seed}\n{builtin.provenance()}")


def check_args(scale: float, seed: int) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"data set scale: expected a positive number, got {scale!r}")
    if seed < 0:
        raise ValueError(f"data set seed: expected an integer >= 0, got {seed!r}")


def _build_beside(out: Path, builtin: BuiltinSet, scale: float, seed: int, progress: bool) -> Path:
    """Build the whole set in a fresh temporary sibling of ``out`` (same file system, so renaming is atomic)."""
    render = builtin.make_renderer(seed)  # before any folder exists: a missing source leaves nothing behind
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    built = False
    try:
        _build(tmp, builtin, render, scale, seed, progress)
        built = True
    finally:  # also on KeyboardInterrupt: never leave a half-written copy behind
        if not built:
            shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def generate(out: Path, builtin: BuiltinSet, *, scale: float, seed: int, progress: bool) -> Path:
    """Write the set into ``out`` (absent or empty); it appears there complete or not at all."""
    check_args(scale, seed)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: expected a missing or empty directory for the {builtin.name} data set")
    tmp = _build_beside(out, builtin, scale, seed, progress)
    try:
        os.replace(tmp, out)  # replaces an empty directory; fails if someone filled ``out`` meanwhile
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{out}: became non-empty while the {builtin.name} data set was generated") from error
    return out


def ensure(builtin: BuiltinSet, *, scale: float, seed: int, cache_dir: str | os.PathLike | None) -> Path:
    """The cached set for (scale, seed), generated on first use; concurrent callers share one copy."""
    check_args(scale, seed)
    out = cache_root(cache_dir) / builtin.name / f"scale-{scale:g}-seed-{seed}"
    if (out / COMPLETE_MARKER).exists():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists without its {COMPLETE_MARKER} marker; delete it to regenerate")
    print(f"generating {builtin.name} data set (scale {scale:g}) into {out}", file=sys.stderr)
    tmp = _build_beside(out, builtin, scale, seed, progress=False)
    try:
        os.replace(tmp, out)
    except OSError:  # another process published first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / COMPLETE_MARKER).exists():
            raise
    return out
