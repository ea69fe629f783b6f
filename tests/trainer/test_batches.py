import numpy as np
import pytest
import torch

from trainer.batches import FeatureBank, window_starts


def bank(arrays, normalize="none"):
    return FeatureBank.from_arrays([np.asarray(a, dtype=np.float16) for a in arrays], normalize=normalize)


def test_crops_cut_at_the_start_and_pad_by_wrapping_or_with_the_clip_silence():
    b = bank([[[1, 2, 3], [4, 5, 6]], [[9, 8, 7, 6, 5, 4], [0, 0, 0, 0, 0, 0]]])
    clips, starts = torch.tensor([0, 1]), torch.tensor([0, 2])
    wrap = b.crops(clips, starts, 5, "wrap")
    assert wrap.shape == (2, 2, 5) and wrap.dtype == torch.float32
    assert wrap[0].tolist() == [[1, 2, 3, 1, 2], [4, 5, 6, 4, 5]]
    assert wrap[1].tolist() == [[7, 6, 5, 4, 9], [0, 0, 0, 0, 0]]
    constant = b.crops(clips, starts, 5, "constant")
    assert constant[0].tolist() == [[1, 2, 3, 1, 1], [4, 5, 6, 1, 1]]  # the clip's minimum = its silence


def test_clip_normalisation_uses_each_clips_own_statistics():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(-40, 10, (8, 50)), rng.normal(-10, 3, (8, 30))]
    b = bank(arrays, normalize="clip")
    whole = b.crops(torch.tensor([0, 1]), torch.tensor([0, 0]), 30, "wrap")
    assert whole[1].mean().item() == pytest.approx(0.0, abs=1e-2)
    assert whole[1].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-2)


def test_random_crops_stay_inside_long_clips_and_are_seeded():
    b = bank([np.tile(np.arange(100), (2, 1))])
    g = torch.Generator().manual_seed(0)
    crops = b.random_crops(torch.zeros(50, dtype=torch.long), 10, "constant", g)
    firsts = crops[:, 0, 0]
    assert (crops[:, 0, 1:] - crops[:, 0, :-1] == 1).all()  # contiguous, never padded
    assert firsts.min() >= 0 and firsts.max() <= 90 and len(set(firsts.tolist())) > 10
    again = b.random_crops(torch.zeros(50, dtype=torch.long), 10, "constant", torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)


@pytest.mark.parametrize("length, frames", [(5, 10), (10, 10), (11, 10), (37, 10), (100, 16)])
def test_windows_cover_every_frame_of_the_clip(length, frames):
    starts = window_starts(length, frames).tolist()
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + frames, length)))
    assert covered == set(range(length))
    assert all(0 <= s <= max(0, length - frames) for s in starts)


def test_bank_windows_index_every_clip():
    b = bank([np.zeros((2, 5)), np.zeros((2, 40)), np.zeros((2, 12))])
    clips, starts = b.windows(10, "wrap")
    assert sorted(set(clips.tolist())) == [0, 1, 2]
    assert len(clips) == len(starts)


def test_padded_tails_are_the_same_by_loop_and_by_mask():
    from trainer.batches import fill_tails

    batch = torch.randn(4, 3, 10)
    valid = torch.tensor([10, 4, 0, 12])  # full, a tail, all padding, longer than the crop
    silence = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    looped = fill_tails(batch.clone(), valid, silence, masked=False)
    assert torch.equal(fill_tails(batch.clone(), valid, silence, masked=True), looped)
    assert torch.equal(looped[0], batch[0]) and torch.equal(looped[3], batch[3])
    assert (looped[1, :, 4:] == -2.0).all() and torch.equal(looped[1, :, :4], batch[1, :, :4])
    assert (looped[2] == -3.0).all()
