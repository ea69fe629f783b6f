import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer.data import DataError, check_unreadable, load_splits, read_labelled_csv, read_test_fnames, split_curated
from trainer.labels import load_labels

LABELS = load_labels()


def write_layout(root: Path, curated_rows: list[str], noisy_rows: list[str] | None = None) -> Path:
    for folder in ("train_curated", "train_noisy", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "train_curated.csv").write_text("fname,labels\n" + "\n".join(curated_rows) + "\n")
    (root / "train_noisy.csv").write_text("fname,labels\n" + "\n".join(noisy_rows or []) + "\n")
    return root


def test_reads_multilabel_rows_into_multi_hot_in_vocabulary_order(tmp_path):
    root = write_layout(tmp_path, ["a.wav,Accordion", '0019ef41.wav,"Bass_drum,Hi-hat"',
                                   "c.wav,Bathtub_(filling_or_washing)"])
    table = read_labelled_csv(root / "train_curated.csv", root / "train_curated")
    assert [p.name for p in table.paths] == ["a.wav", "0019ef41.wav", "c.wav"]
    assert table.targets.shape == (3, 80)
    assert np.flatnonzero(table.targets[1]).tolist() == sorted([LABELS.index("Bass_drum"), LABELS.index("Hi-hat")])
    assert table.targets[2, LABELS.index("Bathtub_(filling_or_washing)")] == 1
    assert table.targets.sum() == 4


@pytest.mark.parametrize("row, message", [
    ("a.wav,Not_a_label", r"train_curated.csv:2: label 'Not_a_label' is not one of the 80"),
    ("../x.wav,Accordion", r"train_curated.csv:2: fname '../x.wav' must be a plain file name"),
    ("/etc/passwd,Accordion", r"train_curated.csv:2: fname '/etc/passwd' must be a plain file name"),
    ("sub/x.wav,Accordion", r"train_curated.csv:2: fname 'sub/x.wav'"),
    ("a.wav,", r"train_curated.csv:2: a.wav has no labels"),
    ("a.wav,Accordion,Bark", r"train_curated.csv:2: expected 2 fields"),
])
def test_bad_rows_name_file_line_and_expectation(tmp_path, row, message):
    root = write_layout(tmp_path, [row])
    with pytest.raises(DataError, match=message):
        read_labelled_csv(root / "train_curated.csv", root / "train_curated")


def test_error_points_at_the_right_line(tmp_path):
    root = write_layout(tmp_path, ["a.wav,Accordion", "b.wav,Bark", "c.wav,Hi_hat"])
    with pytest.raises(DataError, match=r"train_curated.csv:4: label 'Hi_hat'"):
        read_labelled_csv(root / "train_curated.csv", root / "train_curated")


def test_duplicate_fname_is_rejected(tmp_path):
    root = write_layout(tmp_path, ["a.wav,Accordion", "a.wav,Bark"])
    with pytest.raises(DataError, match=r":3: fname 'a.wav' already listed on line 2"):
        read_labelled_csv(root / "train_curated.csv", root / "train_curated")


def test_wrong_header(tmp_path):
    root = write_layout(tmp_path, [])
    (root / "train_curated.csv").write_text("file,label\na.wav,Bark\n")
    with pytest.raises(DataError, match=r"train_curated.csv:1: expected the header 'fname,labels'"):
        read_labelled_csv(root / "train_curated.csv", root / "train_curated")


def test_missing_csv_and_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_splits(tmp_path / "nope", use_noisy=False)
    root = write_layout(tmp_path, ["a.wav,Bark"])
    (root / "train_noisy.csv").unlink()
    assert load_splits(root, use_noisy=False)[1] is None  # noisy is only read when used
    with pytest.raises(DataError, match=r"train_noisy.csv: file not found"):
        load_splits(root, use_noisy=True)
    (root / "train_curated").rmdir()
    with pytest.raises(DataError, match=r"train_curated: folder not found"):
        load_splits(root, use_noisy=False)


def test_sample_submission_columns_are_checked(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("fname," + ",".join(LABELS) + "\nx.wav" + ",0" * 80 + "\ny.wav" + ",0" * 80 + "\n")
    assert read_test_fnames(good) == ["x.wav", "y.wav"]
    bad = tmp_path / "bad.csv"
    bad.write_text("fname," + ",".join(LABELS[::-1]) + "\n")
    with pytest.raises(DataError, match="bad.csv:1: expected the header fname"):
        read_test_fnames(bad)


def test_unreadable_clips_warn_once_then_stop_above_one_percent(tmp_path, capsys):
    failed = [(tmp_path / "x.wav", "empty file")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_unreadable("train_curated", 200, failed)
    assert caught == []  # a Python warning would print its source line too
    assert capsys.readouterr().err == ("warning: train_curated: skipping 1 unreadable clip(s) of 200: "
                                       "x.wav (empty file)\n")
    with pytest.raises(DataError, match=r"train_curated: 2 of 100 clips are unreadable"):
        check_unreadable("train_curated", 100, failed * 2)


def random_targets(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 80)) < 0.01).astype(np.float32)
    targets[np.arange(n), rng.integers(0, 80, n)] = 1
    return targets


def test_split_is_deterministic_disjoint_and_keeps_every_label_on_both_sides():
    targets = random_targets(1000, 0)
    train, val = split_curated(targets, val_fraction=0.2, seed=3)
    again = split_curated(targets, val_fraction=0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert abs(len(val) - 200) <= 15  # label balance wins over an exact clip count
    present = targets.sum(0) >= 2
    assert (targets[val].sum(0)[present] > 0).all() and (targets[train].sum(0)[present] > 0).all()
    other = split_curated(targets, val_fraction=0.2, seed=4)[1]
    assert not np.array_equal(np.sort(val), np.sort(other))


def test_folds_partition_curated():
    targets = random_targets(300, 1)
    vals = [split_curated(targets, val_fraction=0.2, seed=0, n_folds=3, val_fold=k)[1] for k in range(3)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(300))


def test_stereo_other_rate_and_float_wavs_read(tmp_path):
    from trainer.audio import read_audio

    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="PCM_24")
    sf.write(tmp_path / "f.wav", stereo[:, 0].astype(np.float32), 44100, subtype="FLOAT")
    mono = read_audio(tmp_path / "s.wav", 44100)
    assert mono.ndim == 1 and abs(len(mono) - 44100) <= 2
    assert np.isclose(np.abs(mono).max(), 0.5, atol=0.02)  # mean of the two channels
    assert read_audio(tmp_path / "f.wav", 44100).shape == (22050,)


def test_a_csv_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "train_curated").mkdir()
    (tmp_path / "train_curated.csv").write_bytes("fname,labels\nx.wav,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train_curated.csv: not UTF-8 text; FAT2019's CSVs are UTF-8"):
        read_labelled_csv(tmp_path / "train_curated.csv", tmp_path / "train_curated")


def test_a_text_file_named_wav_is_skipped_with_one_line_naming_it(demo_data, session_cache, tmp_path, capfd):
    """As training meets it: the clips are read for the feature cache, the bad one is left out, one line says so."""
    from trainer import labelled_bank
    from trainer.config import TrainConfig
    from trainer.data import ClipTable

    curated, _ = load_splits(demo_data, use_noisy=False)
    (tmp_path / "x.wav").write_text("not audio: a text file with a .wav name")
    paths = (*curated.paths, *curated.paths, tmp_path / "x.wav")  # over 100 clips: one bad one is under 1%
    table = ClipTable("train_curated", paths, np.concatenate([curated.targets, curated.targets, curated.targets[:1]]))
    cfg = TrainConfig().with_overrides({"features.n_mels": 32}).features
    capfd.readouterr()
    bank, targets = labelled_bank(table, cfg, cache_dir=session_cache)
    err = capfd.readouterr().err
    assert len(targets) == len(paths) - 1
    warned = [line for line in err.splitlines() if "x.wav" in line]
    assert len(warned) == 1
    assert warned[0].startswith(f"warning: train_curated: skipping 1 unreadable clip(s) of {len(paths)}: x.wav (")
    assert "UserWarning" not in err and "check_unreadable" not in err


def test_a_header_only_train_curated_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "train_curated").mkdir()
    (tmp_path / "train_curated.csv").write_text("fname,labels\n")
    with pytest.raises(DataError) as raised:
        load_splits(tmp_path, use_noisy=False)
    assert str(raised.value).startswith(f"{tmp_path / 'train_curated.csv'}: no clips (only a header)")
    assert "sample(s)" not in str(raised.value)  # not scikit-learn's words


def test_more_folds_than_curated_clips_is_one_line_naming_the_setting():
    targets = np.eye(80, dtype=np.float32)[:3]
    with pytest.raises(DataError, match=r"^train_curated: 3 clips cannot be dealt into 5 folds \(data.n_folds, or a "
                                         r"study's \[study\] folds\).*use at most 3$"):
        split_curated(targets, val_fraction=0.2, seed=0, n_folds=5, val_fold=0)
