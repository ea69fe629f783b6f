import dataclasses
import io
import math

import pytest
import torch

from trainer.config import ConfigError, OptimConfig
from trainer.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler


def _choices(name: str) -> set:
    return set(next(f for f in dataclasses.fields(OptimConfig) if f.name == name).metadata["choices"])


def _lrs(cfg: OptimConfig, n: int | None = None) -> list[float]:
    """The lr each epoch runs at: read before the epoch, step after it (as the training loop does)."""
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    sched = build_scheduler(cfg, opt)
    out = []
    for _ in range(n or cfg.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_registries_cover_every_config_choice():
    assert set(OPTIMIZERS) == _choices("optimizer")
    assert set(SCHEDULES) == _choices("schedule")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_takes_lr_and_weight_decay_and_steps(name):
    cfg = OptimConfig(optimizer=name, lr=0.1, weight_decay=0.01)
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(cfg, [p])
    group = opt.param_groups[0]
    assert group["lr"] == 0.1 and group["weight_decay"] == 0.01
    p.sum().backward()
    opt.step()
    assert (p < 1).all()


def test_sgd_uses_nesterov_momentum_and_adamw_keeps_zero_decay():
    sgd = build_optimizer(OptimConfig(optimizer="sgd"), [torch.nn.Parameter(torch.ones(1))])
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"]
    adamw = build_optimizer(OptimConfig(optimizer="adamw"), [torch.nn.Parameter(torch.ones(1))])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.0


def test_constant_schedule_with_warmup_hand_values():
    lrs = _lrs(OptimConfig(lr=0.3, epochs=5, warmup_epochs=2, schedule="none"))
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert _lrs(OptimConfig(lr=0.3, epochs=3)) == pytest.approx([0.3, 0.3, 0.3])


def test_cosine_with_warmup_hand_values():
    lrs = _lrs(OptimConfig(lr=1.0, eta_min=0.2, epochs=5, warmup_epochs=1, schedule="cosine"))
    # warm-up 1/2, then cosine over 4 epochs: 0.2 + 0.8 * (1 + cos(pi k / 4)) / 2 for k = 0..3
    expected = [0.5] + [0.2 + 0.8 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert lrs == pytest.approx(expected)
    assert lrs[1:] == pytest.approx([1.0, 0.2 + 0.4 * (1 + math.sqrt(0.5)), 0.6, 0.2 + 0.4 * (1 - math.sqrt(0.5))])


@pytest.mark.parametrize(("epochs", "eta_min"), [(4, 0.0), (10, 1e-5)])
def test_cosine_without_warmup_matches_torch(epochs, eta_min):
    cfg = OptimConfig(lr=3e-4, eta_min=eta_min, epochs=epochs, schedule="cosine")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
    expected = []
    for _ in range(epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(cfg) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_cosine_stays_at_eta_min_past_the_last_epoch_and_long_warmup_is_harmless():
    lrs = _lrs(OptimConfig(lr=1.0, eta_min=0.1, epochs=3, schedule="cosine"), n=6)
    assert lrs[3:] == pytest.approx([0.1, 0.1, 0.1])
    assert _lrs(OptimConfig(lr=1.0, epochs=2, warmup_epochs=3)) == pytest.approx([0.25, 0.5])


def test_state_dict_resume_continues_the_same_lrs():
    cfg = OptimConfig(optimizer="adamw", lr=1e-3, eta_min=1e-5, epochs=8, warmup_epochs=2, schedule="cosine")
    full = _lrs(cfg)

    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg, [p])
    sched = build_scheduler(cfg, opt)
    for _ in range(3):
        opt.step()
        sched.step()
    buffer = io.BytesIO()  # through a checkpoint file, loadable with weights_only=True
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    p2 = torch.nn.Parameter(torch.zeros(2))
    opt2 = build_optimizer(cfg, [p2])
    sched2 = build_scheduler(cfg, opt2)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = []
    for _ in range(5):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(full[3:])


def test_unknown_names_raise():
    with pytest.raises(ConfigError, match="optim.optimizer='lamb'"):
        build_optimizer(dataclasses.replace(OptimConfig(), optimizer="lamb"), [torch.nn.Parameter(torch.ones(1))])
    opt = build_optimizer(OptimConfig(), [torch.nn.Parameter(torch.ones(1))])
    with pytest.raises(ConfigError, match="optim.schedule='step'"):
        build_scheduler(dataclasses.replace(OptimConfig(), schedule="step"), opt)
