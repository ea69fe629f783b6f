import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import file_hashes
from trainer import synth
from trainer.labels import load_labels
from trainer.synth import layout

SCALE = 0.05  # the per-split minimums dominate: 60 curated, 30 noisy, 20 test clips


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "data", scale=SCALE, seed=7)


@pytest.mark.slow
def test_layout_csvs_and_submission_header(demo):
    vocab = load_labels()
    assert {p.name for p in demo.iterdir()} == {
        "train_curated.csv", "train_curated", "train_noisy.csv", "train_noisy", "test",
        "sample_submission.csv", "test_labels.csv", synth.COMPLETE_MARKER,
    }
    all_names = []
    pairs = (("train_curated.csv", "train_curated"), ("train_noisy.csv", "train_noisy"), ("test_labels.csv", "test"))
    for csv_name, folder in pairs:
        header, *rows = _rows(demo / csv_name)
        assert header == ["fname", "labels"]
        assert sorted(r[0] for r in rows) == sorted(p.name for p in (demo / folder).iterdir())
        for fname, labels in rows:
            assert re.fullmatch(r"[0-9a-f]{8}\.wav", fname)
            assert set(labels.split(",")) <= set(synth.REALISED_LABELS) <= set(vocab)
        all_names += [r[0] for r in rows]
    assert len(all_names) == len(set(all_names)), "fnames must be unique across splits"
    raw = "".join((demo / name).read_text() for name in ("train_curated.csv", "train_noisy.csv", "test_labels.csv"))
    assert re.search(r'\.wav,"[^",]+,[^"]+"\n', raw), "multi-label rows are quoted, comma-joined"

    header, *rows = _rows(demo / "sample_submission.csv")
    assert header == ["fname", *vocab]
    assert [r[0] for r in rows] == [r[0] for r in _rows(demo / "test_labels.csv")[1:]]
    assert all(value == "0" for r in rows for value in r[1:])


def test_every_realised_label_has_curated_clips(demo):
    counts = {label: 0 for label in synth.REALISED_LABELS}
    for _, labels in _rows(demo / "train_curated.csv")[1:]:
        for label in labels.split(","):
            counts[label] += 1
    assert min(counts.values()) >= layout.MIN_CURATED_PER_LABEL


def test_wavs_are_16bit_mono_44k_within_length_bounds(demo):
    lo, hi = layout.CLIP_BOUNDS_S
    wavs = sorted(demo.rglob("*.wav"))
    assert len(wavs) == sum(layout.split_sizes(SCALE, len(synth.REALISED_LABELS)).values())
    for path in wavs:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (44_100, 1, "PCM_16", "WAV")
        assert lo - 0.01 <= info.frames / info.samplerate <= hi
    audio, _ = sf.read(wavs[0], dtype="int16")
    assert audio.std() > 0


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    again = synth.generate(tmp_path / "again", scale=SCALE, seed=7)
    assert file_hashes(again) == file_hashes(demo)
    other = synth.generate(tmp_path / "other", scale=SCALE, seed=8)
    other_hashes = file_hashes(other)
    assert set(other_hashes.values()).isdisjoint(h for k, h in file_hashes(demo).items() if k.endswith(".wav"))


def test_scale_grows_counts_linearly():
    assert layout.split_sizes(1.0, len(synth.REALISED_LABELS)) == layout.BASE_COUNTS
    assert layout.split_sizes(2.0, len(synth.REALISED_LABELS)) == {k: 2 * v for k, v in layout.BASE_COUNTS.items()}
    tiny = layout.split_sizes(0.01, len(synth.REALISED_LABELS))
    assert tiny["curated"] == layout.MIN_CURATED_PER_LABEL * len(synth.REALISED_LABELS)


@pytest.mark.slow
def test_generate_fills_an_empty_dir_but_refuses_a_full_one_and_bad_args(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (synth.generate(tmp_path / "empty", scale=SCALE) / "train_curated.csv").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        synth.generate(tmp_path / "full", scale=SCALE)
    with pytest.raises(ValueError, match="scale"):
        synth.generate(tmp_path / "new", scale=0.0)
    with pytest.raises(ValueError, match="seed"):
        synth.generate(tmp_path / "new", seed=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"], "no temporary directory left behind"


def test_noisy_labels_corrupted_at_the_configured_rate():
    noisy = layout.plan_split("noisy", 3000, 0, synth.REALISED_LABELS)
    corrupted = sum(c.written != c.labels for c in noisy) / len(noisy)
    assert abs(corrupted - layout.NOISY_CORRUPT_P) < 0.04
    wrong = [c for c in noisy if c.written != c.labels]
    assert all(set(c.written) - set(c.labels) for c in wrong), "each corruption brings in a wrong label"
    curated = layout.plan_split("curated", 3000, 0, synth.REALISED_LABELS)
    assert all(c.written == c.labels for c in curated)


def test_curated_multi_label_fraction_about_one_in_seven():
    curated = layout.plan_split("curated", 5000, 3, synth.REALISED_LABELS)
    multi = sum(len(c.labels) > 1 for c in curated) / len(curated)
    assert 0.11 < multi < 0.18
    assert all(len(set(c.labels)) == len(c.labels) <= 3 for c in curated)


@pytest.mark.slow
def test_ensure_demo_data_is_race_safe_and_generates_once(tmp_path, capsys):
    code = "import sys, trainer.synth as s; print(s.ensure_demo_data(scale=0.01, seed=1, cache_dir=sys.argv[1]))"
    command = [sys.executable, "-c", code, str(tmp_path)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    expected = tmp_path / "demo" / "scale-0.01-seed-1"
    assert {out.strip() for out, _ in results} == {str(expected)}
    assert all("generating demo data set (scale 0.01)" in err for _, err in results)
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [expected.name], "losers discard their copies"
    before = file_hashes(expected)

    assert synth.ensure_demo_data(scale=0.01, seed=1, cache_dir=tmp_path) == expected
    assert capsys.readouterr().err == "", "a complete set is reused, not regenerated"
    assert file_hashes(expected) == before


@pytest.mark.slow
def test_cli_writes_the_data_set_and_rejects_bad_scale(tmp_path):
    out = tmp_path / "cli"
    cli = [sys.executable, "-m", "trainer.synth", "--scale"]
    run = subprocess.run([*cli, "0.05", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert (out / synth.COMPLETE_MARKER).exists() and len(list((out / "test").iterdir())) == 20
    bad = subprocess.run([*cli, "-1", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "scale" in bad.stderr and not (tmp_path / "x").exists()
