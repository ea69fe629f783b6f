import pytest
import torch

from trainer.augment import mixup, sample_mixup, spec_augment
from trainer.config import AugmentConfig


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int = 8, mels: int = 16, frames: int = 40):
    torch.manual_seed(0)
    x = torch.randn(b, mels, frames)
    y = torch.eye(b, 10)[:, :10]  # one distinct label per row so the permutation is visible
    return x, y


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_is_the_convex_combination_of_drawn_pairs(alpha):
    x, y = _batch()
    lam, perm = sample_mixup(x.shape[0], alpha, _gen(3))
    xm, ym = mixup(x, y, alpha, _gen(3))
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(x.shape[0]))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(ym, lam * y + (1 - lam) * y[perm])
    # Targets stay in [0, 1] and keep their total mass.
    assert ym.min() >= 0 and ym.max() <= 1
    assert torch.allclose(ym.sum(dim=1), y.sum(dim=1))


def test_mixup_alpha_zero_is_identity():
    x, y = _batch()
    xm, ym = mixup(x, y, 0.0, _gen())
    assert xm is x and ym is y


def test_mixup_is_deterministic_per_generator_and_varies_across_seeds():
    x, y = _batch()
    a, b, c = mixup(x, y, 0.4, _gen(1)), mixup(x, y, 0.4, _gen(1)), mixup(x, y, 0.4, _gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mixup_rejects_negative_alpha():
    x, y = _batch()
    with pytest.raises(ValueError, match="mixup_alpha=-1"):
        mixup(x, y, -1.0, _gen())


def _runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, n = [], 0
    for f in flags.tolist() + [False]:
        if f:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_time_masks_respect_count_width_and_fill():
    x, _ = _batch(b=64)
    cfg = AugmentConfig(time_masks=2, time_mask_frames=5)
    out = spec_augment(x, cfg, _gen())
    fill = x.mean(dim=(1, 2), keepdim=True)
    masked = out == fill  # random normal values never equal their mean exactly
    assert torch.equal(out[~masked], x[~masked])
    cols = masked.all(dim=1)
    assert torch.equal(masked.any(dim=1), cols), "a time mask must cover every mel bin of its frames"
    longest = 0
    for row in cols:
        runs = _runs(row)
        assert len(runs) <= 2 and sum(runs) <= 10 and all(r <= 10 for r in runs)
        longest = max([longest] + runs)
    assert longest >= 5  # the full width is reachable
    assert any(len(_runs(row)) == 2 for row in cols)


def test_freq_masks_respect_count_and_width():
    x, _ = _batch(b=64)
    out = spec_augment(x, AugmentConfig(freq_masks=3, freq_mask_bins=2), _gen())
    masked = out == x.mean(dim=(1, 2), keepdim=True)
    rows = masked.all(dim=2)
    assert torch.equal(masked.any(dim=2), rows), "a frequency mask must cover every frame of its bins"
    per_clip = rows.sum(dim=1)
    assert per_clip.max() <= 6 and per_clip.max() >= 3
    assert all(len(_runs(r)) <= 3 for r in rows)


def test_mask_width_is_capped_at_the_axis_length():
    x, _ = _batch(b=4, mels=8, frames=6)
    out = spec_augment(x, AugmentConfig(time_masks=1, time_mask_frames=100), _gen())
    assert torch.isfinite(out).all() and out.shape == x.shape


def test_spec_augment_no_op_when_counts_or_widths_are_zero():
    x, _ = _batch()
    for cfg in (AugmentConfig(), AugmentConfig(time_masks=3, time_mask_frames=0),
                AugmentConfig(freq_masks=0, freq_mask_bins=8)):
        assert spec_augment(x, cfg, _gen()) is x


def test_spec_augment_is_deterministic_and_leaves_input_untouched():
    x, _ = _batch()
    before = x.clone()
    cfg = AugmentConfig(time_masks=2, time_mask_frames=8, freq_masks=2, freq_mask_bins=4)
    a, b = spec_augment(x, cfg, _gen(5)), spec_augment(x, cfg, _gen(5))
    assert torch.equal(a, b) and torch.equal(x, before)
    assert not torch.equal(a, x)
