import dataclasses
import math

import pytest
import torch

from trainer.config import ConfigError, LossConfig
from trainer.losses import LOSSES, build_loss, minmax_bce

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25


def _loss(name: str, **kw):
    return build_loss(LossConfig(name=name, **kw))


def test_registry_covers_every_config_choice():
    choices = next(f for f in dataclasses.fields(LossConfig) if f.name == "name").metadata["choices"]
    assert set(LOSSES) == set(choices)


def test_bce_at_zero_logits_is_log_two():
    logits, targets = torch.zeros(3, 4), torch.randint(0, 2, (3, 4)).float()
    assert _loss("bce")(logits, targets, None).item() == pytest.approx(math.log(2))


def test_bce_hand_value():
    logits = torch.tensor([[LN3, -LN3]])
    targets = torch.tensor([[1.0, 1.0]])
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert _loss("bce")(logits, targets, torch.tensor([False])).item() == pytest.approx(expected, rel=1e-6)


def test_bce_minmax_hand_value():
    # p = (0.25, 0.5, 0.75) rescales to (0, 0.5, 1); clamped to [eps, 1-eps] the term is about ln2 / 3.
    logits = torch.tensor([[-LN3, 0.0, LN3]])
    targets = torch.tensor([[0.0, 1.0, 1.0]])
    plain = (2 * math.log(4 / 3) + math.log(2)) / 3
    assert minmax_bce(logits, targets).item() == pytest.approx(math.log(2) / 3, abs=1e-4)
    value = _loss("bce_minmax", minmax_weight=2.0)(logits, targets, None).item()
    assert value == pytest.approx(plain + 2 * math.log(2) / 3, abs=1e-4)


def test_minmax_term_has_a_gradient():
    # The hand-tuning report computed this term in numpy on detached tensors: zero gradient. Ours trains.
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    targets = (torch.rand(4, 6) > 0.7).float()
    minmax_bce(logits, targets).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 1e-3
    # ...and it reaches every clip, not only one row of the batch.
    assert (logits.grad.abs().sum(dim=1) > 0).all()


def test_minmax_is_finite_when_all_scores_are_equal():
    logits = torch.zeros(2, 5, requires_grad=True)
    value = _loss("bce_minmax")(logits, torch.ones(2, 5), None)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_lsoft_hand_value_on_a_noisy_clip():
    # p = 0.75, y = 0, beta = 0.5 -> soft target 0.375.
    logits, targets = torch.tensor([[LN3]]), torch.tensor([[0.0]])
    value = _loss("lsoft", lsoft_beta=0.5)(logits, targets, torch.tensor([True])).item()
    assert value == pytest.approx(-(0.375 * math.log(0.75) + 0.625 * math.log(0.25)), rel=1e-6)


def test_lsoft_equals_bce_on_curated_rows_and_at_beta_one():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), (torch.rand(6, 5) > 0.5).float()
    bce = _loss("bce")(logits, targets, None)
    curated = torch.zeros(6, dtype=torch.bool)
    noisy = torch.ones(6, dtype=torch.bool)
    assert torch.allclose(_loss("lsoft", lsoft_beta=0.3)(logits, targets, curated), bce)
    assert torch.allclose(_loss("lsoft", lsoft_beta=0.3)(logits, targets, None), bce)
    assert torch.allclose(_loss("lsoft", lsoft_beta=1.0)(logits, targets, noisy), bce)
    assert not torch.allclose(_loss("lsoft", lsoft_beta=0.3)(logits, targets, noisy), bce)


def test_lsoft_mixed_batch_treats_rows_separately():
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    is_noisy = torch.tensor([True, False, True, False])
    lsoft = _loss("lsoft", lsoft_beta=0.6)
    whole = lsoft(logits, targets, is_noisy)
    per_row = torch.stack([lsoft(logits[i:i + 1], targets[i:i + 1], is_noisy[i:i + 1]) for i in range(4)])
    assert torch.allclose(whole, per_row.mean())


def test_lsoft_prediction_term_is_a_constant_target():
    # With the prediction detached, d/dlogit = (p - t) / n where t = beta*y + (1-beta)*p.
    logits = torch.tensor([[LN3]], requires_grad=True)
    _loss("lsoft", lsoft_beta=0.5)(logits, torch.tensor([[0.0]]), torch.tensor([True])).backward()
    assert logits.grad.item() == pytest.approx(0.75 - 0.375, rel=1e-6)


def test_shape_mismatch_and_unknown_name_raise():
    with pytest.raises(ValueError, match="must both be"):
        _loss("bce")(torch.zeros(2, 3), torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="is_noisy"):
        _loss("lsoft")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="loss.name='focal'"):
        build_loss(dataclasses.replace(LossConfig(), name="focal"))
