import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from trainer import feature_cache
from trainer.config import FeatureConfig
from trainer.feature_cache import feature_cache_key, load_features
from trainer.features import LogMel

SR = 44100
CFG = FeatureConfig(n_mels=32, n_fft=1024, hop=256)


@pytest.fixture(autouse=True)
def fresh_memo():
    feature_cache._memo.clear()
    yield
    feature_cache._memo.clear()


def write_clips(folder, count, seconds=0.2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR * (1 + i % 3)))).astype(np.float32), SR)
        paths.append(path)
    return paths


@pytest.fixture
def decodes(monkeypatch):
    """Count audio decodes (i.e. feature computations) done in this process."""
    calls = []
    real = feature_cache.read_audio

    def counting(data, sample_rate, *, name=None):
        calls.append(name)
        return real(data, sample_rate, name=name)

    monkeypatch.setattr(feature_cache, "read_audio", counting)
    return calls


def npy_files(cache):
    return sorted((cache / "features").rglob("*.npy"))


def test_arrays_are_float16_logmel_of_the_unpadded_clip(tmp_path):
    paths = write_clips(tmp_path / "wav", 3)
    result = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert result.failed == []
    for path, array in zip(paths, result.arrays):
        wave = sf.read(path, dtype="float32")[0]
        expected = LogMel(CFG)(torch.from_numpy(wave)).numpy().astype(np.float16)
        np.testing.assert_array_equal(array, expected)
        assert array.dtype == np.float16 and not array.flags.writeable
    assert (tmp_path / "cache" / "features" / feature_cache_key(CFG) / "params.json").exists()


def test_second_load_hits_the_cache(tmp_path, decodes):
    paths = write_clips(tmp_path / "wav", 4)
    first = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(decodes) == 4
    stamps = {p: p.stat().st_mtime_ns for p in npy_files(tmp_path / "cache")}
    feature_cache._memo.clear()  # as a new process would start
    second = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(decodes) == 4
    assert {p: p.stat().st_mtime_ns for p in npy_files(tmp_path / "cache")} == stamps
    for a, b in zip(first.arrays, second.arrays):
        np.testing.assert_array_equal(a, b)


def test_in_process_memo_skips_the_disk(tmp_path):
    paths = write_clips(tmp_path / "wav", 2)
    first = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    shutil.rmtree(tmp_path / "cache")
    again = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert again.arrays[0] is first.arrays[0] and not (tmp_path / "cache").exists()


def test_feature_params_change_the_key_but_crop_and_pad_do_not(tmp_path, decodes):
    assert feature_cache_key(CFG) != feature_cache_key(FeatureConfig(n_mels=33, n_fft=1024, hop=256))
    assert feature_cache_key(FeatureConfig()) != feature_cache_key(FeatureConfig(top_db=None))
    assert feature_cache_key(FeatureConfig()) == feature_cache_key(FeatureConfig(crop_frames=100, pad_mode="wrap"))
    paths = write_clips(tmp_path / "wav", 2)
    load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    other = load_features(paths, FeatureConfig(n_mels=16), cache_dir=tmp_path / "cache", progress=False)
    assert len(decodes) == 4 and other.arrays[0].shape[0] == 16


def test_same_content_at_another_path_reuses_the_entry(tmp_path, decodes):
    paths = write_clips(tmp_path / "wav", 2)
    load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    copy = tmp_path / "elsewhere" / "renamed.wav"
    copy.parent.mkdir()
    shutil.copy(paths[1], copy)
    before = npy_files(tmp_path / "cache")
    result = load_features([copy], CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(decodes) == 2 and npy_files(tmp_path / "cache") == before
    assert result.arrays[0].shape == (32, 1 + int(0.4 * SR) // 256)


def test_changed_file_content_is_recomputed(tmp_path, decodes):
    paths = write_clips(tmp_path / "wav", 1)
    old = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False).arrays[0]
    sf.write(paths[0], np.zeros(int(0.5 * SR), dtype=np.float32) + 0.01, SR)
    feature_cache._memo.clear()
    new = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False).arrays[0]
    assert len(decodes) == 2 and new.shape != old.shape


def test_corrupt_digest_index_only_costs_rehashing(tmp_path, decodes):
    paths = write_clips(tmp_path / "wav", 2)
    load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    (tmp_path / "cache" / "features" / "digests.json").write_text("{not json")
    feature_cache._memo.clear()
    result = load_features(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    assert len(decodes) == 2 and all(a is not None for a in result.arrays)


def test_leftover_temp_file_and_truncated_entry_do_not_break_loading(tmp_path):
    paths = write_clips(tmp_path / "wav", 3)
    cache = tmp_path / "cache"
    good = load_features(paths, CFG, cache_dir=cache, progress=False).arrays
    entries = npy_files(cache)
    (entries[0].parent / f".tmp-{entries[0].name}.crashed").write_bytes(b"\x93NUMPY partial")
    size = entries[1].stat().st_size
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # as if the disk filled up mid-write
    feature_cache._memo.clear()
    result = load_features(paths, CFG, cache_dir=cache, progress=False)
    assert result.failed == []
    for a, b in zip(good, result.arrays):
        np.testing.assert_array_equal(a, b)
    assert entries[1].stat().st_size == size  # rewritten whole


def test_unreadable_and_missing_files_are_reported(tmp_path):
    paths = write_clips(tmp_path / "wav", 2)
    broken = tmp_path / "wav" / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEjunk")
    empty = tmp_path / "wav" / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    missing = tmp_path / "wav" / "missing.wav"
    result = load_features([broken, paths[0], empty, missing, paths[1]], CFG,
                           cache_dir=tmp_path / "cache", progress=False)
    assert [a is None for a in result.arrays] == [True, False, True, True, False]
    reasons = dict(result.failed)
    assert set(reasons) == {broken, empty, missing}
    assert reasons[broken] == "corrupt or truncated audio file (libsndfile: Error in WAV file. No 'data' chunk marker)"
    assert reasons[empty] == "empty audio (0 samples)"
    assert reasons[missing] == "file not found"


def test_non_finite_samples_are_a_data_error_naming_the_file(tmp_path):
    paths = write_clips(tmp_path / "wav", 1)
    poisoned = tmp_path / "wav" / "poisoned.wav"
    wave = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    wave[100] = np.nan
    wave[200] = np.inf
    sf.write(poisoned, wave, SR, subtype="FLOAT")
    result = load_features([poisoned, paths[0]], CFG, cache_dir=tmp_path / "cache", progress=False)
    assert result.arrays[0] is None and result.arrays[1] is not None
    assert dict(result.failed)[poisoned] == "2 NaN or infinite sample(s) in the audio data"


def _fill_in_child(paths, cache, barrier, out):
    barrier.wait()
    result = load_features(paths, CFG, cache_dir=cache, workers=2, progress=False)
    np.savez(out, *result.arrays)


def test_two_processes_filling_one_cache_agree(tmp_path):
    paths = write_clips(tmp_path / "wav", feature_cache.MIN_FILES_FOR_POOL)  # enough to use the pool
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    children = [context.Process(target=_fill_in_child, args=(paths, cache, barrier, tmp_path / f"out{i}.npz"))
                for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    outputs = [np.load(tmp_path / f"out{i}.npz") for i in range(2)]
    here = load_features(paths, CFG, cache_dir=cache, progress=False).arrays
    for i, array in enumerate(here):
        np.testing.assert_array_equal(outputs[0][f"arr_{i}"], array)
        np.testing.assert_array_equal(outputs[1][f"arr_{i}"], array)
    leftovers = [p for p in (cache / "features").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == [] and len(npy_files(cache)) == len(paths)


_FILL_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
import trainer.feature_cache as fc
from trainer.config import FeatureConfig
parent = os.getpid()
def on_sigterm(signum, frame):  # like a search worker's: must not run in a fill process
    print("worker's SIGTERM handler ran in", "the parent" if os.getpid() == parent else "a fill process", flush=True)
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, on_sigterm)
real = fc._fill_one
def fill_one(job):
    if os.getpid() != parent:
        if sys.argv[3] == "die" and job[0].name == "clip005.wav":
            os.kill(os.getpid(), 9)  # a fill process killed mid-fill
        if sys.argv[3] == "hang":
            time.sleep(120)
    return real(job)
fc._fill_one = fill_one
paths = sorted(Path(sys.argv[1]).glob("*.wav"))
result = fc.load_features(paths, FeatureConfig(n_mels=32, n_fft=1024, hop=256), cache_dir=sys.argv[2],
                          workers=2, progress=False)
print("filled", sum(a is not None for a in result.arrays), "of", len(paths), flush=True)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.slow
def test_a_fill_process_killed_mid_fill_does_not_fail_the_fill(tmp_path):
    write_clips(tmp_path / "wav", 24)
    done = subprocess.run([sys.executable, "-c", _FILL_SCRIPT, str(tmp_path / "wav"), str(tmp_path / "cache"), "die"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "filled 24 of 24" in done.stdout
    assert "a feature-cache fill process died; computing the remaining" in done.stderr
    # the pool stops the surviving fill process with SIGTERM: it must just die, not run the worker's handler
    assert "handler ran" not in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr


@pytest.mark.slow
def test_fill_processes_die_with_their_parent(tmp_path):
    write_clips(tmp_path / "wav", 24)
    parent = subprocess.Popen([sys.executable, "-c", _FILL_SCRIPT, str(tmp_path / "wav"), str(tmp_path / "cache"),
                               "hang"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_children(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    fillers = _children(parent.pid)
    assert len(fillers) >= 2
    time.sleep(1)  # past their start-up, into the (hanging) fill
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in (Path(f"/proc/{pid}/stat").read_text().split()[2])
              for pid in fillers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in fillers if Path(f"/proc/{pid}").exists()
             and (Path(f"/proc/{pid}/stat").read_text().split()[2]) != "Z"]
    assert alive == [], "fill processes outlived their parent"


def test_entries_of_a_new_feature_setting_are_computed_though_the_files_were_hashed_before(tmp_path):
    from trainer.feature_cache import cache_entries

    paths = write_clips(tmp_path / "wav", 3)
    first = cache_entries(paths, CFG, cache_dir=tmp_path / "cache", progress=False)
    other = FeatureConfig(n_mels=24, n_fft=1024, hop=256)  # the digest memo knows these files already
    second = cache_entries(paths, other, cache_dir=tmp_path / "cache", progress=False)
    assert second.digests == first.digests
    assert all(second.entry_path(i).is_file() for i in range(3))
    assert second.load(0).shape[0] == 24
