"""Packed bank files in the cache: built once under concurrent workers, rebuilt when damaged, mapped by all."""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from trainer import bank_file, banks, file_lock
from trainer.bank_file import BankFileError, open_bank_file
from trainer.banks import bank_path, open_bank, prune_banks
from trainer.batches import FeatureBank
from trainer.config import ConfigError, FeatureConfig
from trainer.prefetch import crop_batches

N_MELS = 8
KEY = "0123456789abcdef"


def clip_arrays(n=12, seed=0):
    """Clips of assorted lengths, some shorter than the 16-frame crops used below."""
    rng = np.random.default_rng(seed)
    return [rng.normal(-30, 8, (N_MELS, int(rng.integers(3, 60)))).astype(np.float16) for _ in range(n)]


def digests_of(arrays, tag="a"):
    return [f"{tag}{i:031x}" for i in range(len(arrays))]


def build(tmp_path, arrays, *, tag="a", normalize="clip", status=None, calls=None):
    def load_clip(i):
        if calls is not None:
            calls.append(i)
        return arrays[i]

    return open_bank(tmp_path / "features", KEY, digests_of(arrays, tag), n_mels=N_MELS, load_clip=load_clip,
                     normalize=normalize, name="train", status=status)


@pytest.mark.parametrize("normalize", ["clip", "none"])
def test_memory_mapped_and_in_memory_banks_give_identical_batches(tmp_path, normalize):
    arrays = clip_arrays()
    in_memory = FeatureBank.from_arrays(arrays, normalize=normalize)
    mapped = build(tmp_path, arrays, normalize=normalize)
    path = bank_path(tmp_path / "features", KEY, digests_of(arrays))
    assert str(path) in open("/proc/self/maps").read()  # the frames are the file's pages, not a copy
    fed = mapped.feeding("cpu")  # the host-gather path (pinned-memory copy on a GPU) run on the CPU
    assert fed.host_mapped and not mapped.host_mapped
    for name in ("offsets", "lengths", "mean", "std", "floor"):
        assert torch.equal(getattr(in_memory, name), getattr(mapped, name)), name
    clips = torch.tensor([0, 3, 3, 11, 5, 7])
    starts = torch.tensor([0, 1, 50, 2, 0, 9])
    for pad_mode in ("wrap", "constant"):
        expected = in_memory.crops(clips, starts, 16, pad_mode)
        assert torch.equal(mapped.crops(clips, starts, 16, pad_mode), expected)
        assert torch.equal(fed.crops(clips, starts, 16, pad_mode), expected)
        random = [bank.random_crops(clips, 16, pad_mode, torch.Generator().manual_seed(7))
                  for bank in (in_memory, mapped, fed)]
        assert torch.equal(random[0], random[1]) and torch.equal(random[0], random[2])
    for a, b in zip(in_memory.windows(16, "wrap"), mapped.windows(16, "wrap")):
        assert torch.equal(a, b)


def test_epoch_batches_read_ahead_from_a_host_bank_match_cutting_them_one_by_one(tmp_path):
    arrays = clip_arrays(20)
    mapped = build(tmp_path, arrays)
    features = FeatureConfig(n_mels=N_MELS, crop_frames=16)
    order = np.random.default_rng(1).permutation(20)
    # A bank on the training device: cut when asked, with the run's generator, as before.
    lazy = list(crop_batches(mapped, order, 6, 3, features, torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    for step, (clips, crops) in enumerate(lazy):
        assert clips.tolist() == order[step * 6:(step + 1) * 6].tolist()
        assert torch.equal(crops, mapped.random_crops(clips, 16, "constant", g))
    # A host bank feeding another device: read ahead, positions from a generator seeded by the run's.
    run_generator = torch.Generator().manual_seed(3)
    ahead = list(crop_batches(mapped.feeding("cpu"), order, 6, 3, features, run_generator))
    g = torch.Generator().manual_seed(3)
    positions = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
    assert torch.equal(run_generator.get_state(), g.get_state())  # one draw per epoch from the run's generator
    for step, (clips, crops) in enumerate(ahead):
        assert clips.tolist() == order[step * 6:(step + 1) * 6].tolist()
        assert torch.equal(crops, mapped.random_crops(clips, 16, "constant", positions))


def _build_in_child(cache, arrays, barrier, out, calls_file):
    barrier.wait()
    statuses = []

    def slow_load(i):
        with open(calls_file, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.05)
        return arrays[i]

    bank = open_bank(cache, KEY, digests_of(arrays), n_mels=N_MELS, load_clip=slow_load, normalize="clip",
                     name="train", status=statuses.append)
    np.save(out, bank.frames.numpy())
    with open(f"{out}.status", "w") as handle:
        handle.write("\n".join(statuses))


@pytest.mark.slow
def test_concurrent_workers_build_one_bank_once_and_never_see_a_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(file_lock, "REPORT_EVERY_S", 0.1)  # inherited by the forked workers
    arrays = clip_arrays(20)
    cache = tmp_path / "features"
    path = bank_path(cache, KEY, digests_of(arrays))
    calls_file = tmp_path / "calls"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    children = [context.Process(target=_build_in_child,
                                args=(cache, arrays, barrier, tmp_path / f"out{i}.npy", calls_file)) for i in range(3)]
    sizes_seen, refused, done = set(), [], threading.Event()

    def watch():  # whenever the final name exists, it is the whole, valid file
        while not done.is_set():
            if path.exists():
                sizes_seen.add(path.stat().st_size)
                try:
                    open_bank_file(path, bank_id=path.stem, n_mels=N_MELS, n_clips=len(arrays))
                except BankFileError as exc:  # a thread's exception would not fail the test: collect it
                    refused.append(str(exc))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    done.set()
    watcher.join()
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert refused == []
    builders = set(calls_file.read_text().split())
    assert len(builders) == 1 and len(calls_file.read_text().split()) == len(arrays)  # one build, each clip once
    assert sizes_seen == {path.stat().st_size}
    expected = FeatureBank.from_arrays(arrays, normalize="clip").frames.numpy()
    for i in range(3):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{i}.npy"), expected)
    waited = [(tmp_path / f"out{i}.npy.status").read_text() for i in range(3)]
    builder = builders.pop()
    assert sum(f"waiting for pid {builder} (packing the train bank)" in text for text in waited) == 2
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-100], "size"),
    (lambda data: data[:5000], "truncated"),
    (lambda data: data[:4100] + bytes([data[4100] ^ 0xFF]) + data[4101:], "checksum"),
    (lambda data: b"garbage!" + data[8:], "bad magic"),
])
def test_a_damaged_bank_file_is_refused_and_packed_again(tmp_path, damage, reason):
    arrays = clip_arrays()
    good = build(tmp_path, arrays).frames.numpy().copy()
    path = bank_path(tmp_path / "features", KEY, digests_of(arrays))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BankFileError, match=reason):
        open_bank_file(path, bank_id=path.stem, n_mels=N_MELS, n_clips=len(arrays))
    lines, calls = [], []
    rebuilt = build(tmp_path, arrays, status=lines.append, calls=calls)
    assert calls == list(range(len(arrays)))
    assert any(f"train bank {path.name}:" in line and "packing it again" in line for line in lines)
    np.testing.assert_array_equal(rebuilt.frames.numpy(), good)


def test_a_warm_bank_is_mapped_without_loading_any_clip(tmp_path):
    arrays = clip_arrays()
    build(tmp_path, arrays)
    calls = []
    build(tmp_path, arrays, calls=calls)
    assert calls == []


def _die_while_packing(cache, arrays):
    def load_then_hang(i):
        if i == 3:
            time.sleep(600)  # killed here, mid-build, holding the lock with a partial temp file
        return arrays[i]

    open_bank(cache, KEY, digests_of(arrays), n_mels=N_MELS, load_clip=load_then_hang, normalize="clip")


def test_a_builder_killed_mid_build_does_not_block_the_next_one(tmp_path):
    arrays = clip_arrays()
    cache = tmp_path / "features"
    path = bank_path(cache, KEY, digests_of(arrays))
    child = multiprocessing.get_context("fork").Process(target=_die_while_packing, args=(cache, arrays))
    child.start()
    deadline = time.monotonic() + 30
    while not list(path.parent.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(path.parent.glob(".tmp-*")), "the builder never started"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert (path.with_suffix(".lock")).read_text().strip() == str(child.pid)  # the lock file stays, unlocked
    statuses = []
    bank = build(tmp_path, arrays, status=statuses.append)
    assert not any("waiting for pid" in line for line in statuses), statuses  # the dead builder's lock is free
    np.testing.assert_array_equal(bank.frames.numpy(), FeatureBank.from_arrays(arrays, normalize="clip").frames.numpy())
    assert not list(path.parent.glob(".tmp-*"))  # the dead builder's partial file was cleaned up


def test_least_recently_used_banks_beyond_the_limit_are_deleted(tmp_path, monkeypatch):
    sets = [clip_arrays(seed=seed) for seed in range(3)]
    paths = []
    for tag, arrays in zip("abc", sets):
        build(tmp_path, arrays, tag=tag)
        paths.append(bank_path(tmp_path / "features", KEY, digests_of(arrays, tag)))
    os.utime(paths[0], (1, 1))  # a used long ago, b recently, c just now
    os.utime(paths[1], (2, 2))
    sizes = [p.stat().st_size for p in paths]
    monkeypatch.setenv(banks.BANK_LIMIT_ENV, str((sizes[1] + sizes[2]) / 1e9))
    assert prune_banks(tmp_path / "features", keep=paths[2]) == [paths[0]]
    assert [p.exists() for p in paths] == [False, True, True]
    monkeypatch.setenv(banks.BANK_LIMIT_ENV, "1e-12")  # below any bank: the one in use is still kept
    assert prune_banks(tmp_path / "features", keep=paths[2]) == [paths[1]] and paths[2].exists()
    monkeypatch.setenv(banks.BANK_LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match=r"\$FAT2019_SEARCH_BANK_LIMIT_GB='lots': expected a positive number"):
        prune_banks(tmp_path / "features", keep=paths[2])


def test_bank_files_round_trip_their_index_exactly(tmp_path):
    arrays = clip_arrays()
    path = tmp_path / "x.bank"
    bank_file.write_bank_file(path, bank_id="f" * 32, n_mels=N_MELS, arrays=iter(arrays), n_clips=len(arrays))
    opened = open_bank_file(path, bank_id="f" * 32, n_mels=N_MELS, n_clips=len(arrays))
    assert opened.lengths.tolist() == [a.shape[1] for a in arrays]
    assert path.stat().st_size == bank_file.file_bytes(len(arrays), sum(a.shape[1] for a in arrays), N_MELS)
    with pytest.raises(BankFileError, match="another bank"):
        open_bank_file(path, bank_id="e" * 32, n_mels=N_MELS, n_clips=len(arrays))
