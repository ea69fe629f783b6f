import dataclasses
import itertools

import pytest
import torch
from torch import nn

from trainer.config import ConfigError, ModelConfig
from trainer.models import (
    ACTIVATIONS,
    ARCHS,
    BN_POSITIONS,
    HEADS,
    RESNET_STAGES,
    build_model,
    count_parameters,
    make_activation,
    stage_widths,
)

TINY = dict(width=0.125, head_hidden=16)
# Every registered (arch, depth) x activation x head x BN position: a new entry is tested the day it lands.
ARCH_DEPTHS = [("resnet", d) for d in RESNET_STAGES] + [("cnn", 34)]
CASES = [pytest.param(ad, act, head, bn, id=f"{ad[0]}{ad[1]}-{act}-{head}-bn_{bn}")
         for ad, act, head, bn in itertools.product(ARCH_DEPTHS, ACTIVATIONS, HEADS, BN_POSITIONS)]


def _choices(name: str) -> set:
    return set(next(f for f in dataclasses.fields(ModelConfig) if f.name == name).metadata["choices"])


def test_registries_cover_every_config_choice():
    assert set(ARCHS) == _choices("arch")
    assert set(ACTIVATIONS) == _choices("activation")
    assert set(HEADS) == _choices("head")
    assert set(BN_POSITIONS) == _choices("bn_position")
    assert set(RESNET_STAGES) == _choices("depth")


@pytest.mark.parametrize(("arch_depth", "activation", "head", "bn_position"), CASES)
def test_forward_backward_every_registered_variant(arch_depth, activation, head, bn_position):
    torch.manual_seed(0)
    arch, depth = arch_depth
    cfg = ModelConfig(arch=arch, depth=depth, activation=activation, head=head, bn_position=bn_position,
                      dropout=0.2, **TINY)
    model = build_model(cfg, n_labels=5)
    logits = model(torch.randn(2, 32, 64))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()  # a loss whose gradient is non-zero for every logit
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize(("n_mels", "frames"), [(8, 16), (64, 17), (128, 301)])
def test_small_and_odd_input_sizes(n_mels, frames):
    model = build_model(ModelConfig(depth=18, **TINY), n_labels=80).eval()
    assert model(torch.randn(1, n_mels, frames)).shape == (1, 80)


def test_bn_position_changes_module_order():
    def leaf_types(cfg):
        stem = build_model(cfg).stem
        return [type(m) for m in stem]

    before = leaf_types(ModelConfig(depth=18, bn_position="before", **TINY))
    after = leaf_types(ModelConfig(depth=18, bn_position="after", **TINY))
    assert before == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert after == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d]
    block_before = build_model(ModelConfig(depth=18, bn_position="before", **TINY)).layers[0][0]
    block_after = build_model(ModelConfig(depth=18, bn_position="after", **TINY)).layers[0][0]
    assert [type(m) for m in block_before.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in block_after.conv2] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]


def test_depth_and_width_change_parameter_count():
    small = count_parameters(build_model(ModelConfig(depth=18, width=0.125)))
    wider = count_parameters(build_model(ModelConfig(depth=18, width=0.25)))
    deeper = count_parameters(build_model(ModelConfig(depth=34, width=0.125)))
    assert small < wider and small < deeper
    assert stage_widths(0.125) == (8, 16, 32, 64)
    assert stage_widths(0.0625) == (8, 16, 32, 64)  # floor of 8 channels
    assert stage_widths(1.0) == (64, 128, 256, 512)


def test_default_config_is_resnet34_with_the_usual_size():
    # torchvision's resnet34 has 21.8M parameters; one input channel and 80 outputs change little.
    n = count_parameters(build_model(ModelConfig()))
    assert 21.0e6 < n < 21.5e6


def test_mlp_head_matches_the_seed_variant():
    head = build_model(ModelConfig(depth=18, head="mlp", **TINY)).head
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.PReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert head[0].p == 0.5 and head[4].p == 0.1
    assert head[1].in_features == 64 and head[1].out_features == 16 and head[5].out_features == 80


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, dropout=0.5, head="mlp", **TINY))
    x = torch.randn(4, 32, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_prelu_has_one_slope_per_channel():
    assert make_activation("prelu", 12).weight.shape == (12,)
    assert make_activation("prelu", 12) is not make_activation("prelu", 12)


def test_unknown_names_raise_config_errors():
    with pytest.raises(ConfigError, match="model.activation='gelu'"):
        make_activation("gelu", 8)
    with pytest.raises(ConfigError, match="model.head='attention'"):
        build_model(dataclasses.replace(ModelConfig(**TINY), head="attention"))
    with pytest.raises(ConfigError, match="model.depth=50"):
        build_model(dataclasses.replace(ModelConfig(**TINY), depth=50))


def test_rejects_input_without_the_mel_axis():
    with pytest.raises(ValueError, match=r"\(batch, n_mels, frames\)"):
        build_model(ModelConfig(depth=18, **TINY))(torch.randn(2, 1, 32, 64))


def test_a_few_steps_fit_a_tiny_batch():
    # End to end with the BN-after variant and the MLP head: the network is trainable, not just shaped right.
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, bn_position="after", head="mlp", activation="prelu", **TINY),
                        n_labels=3)
    x, y = torch.randn(8, 16, 32), torch.eye(3)[torch.arange(8) % 3]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_output_bias_starts_at_the_label_prior(head):
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, head=head, **TINY), n_labels=80).eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.randn(4, 32, 64)))
    assert 0.002 < p.mean().item() < 0.05  # ~1/80 rather than 0.5


def test_the_cnn_keeps_time_resolution_and_costs_less_than_resnet34():
    cnn = build_model(ModelConfig(arch="cnn", width=1.0))
    resnet = build_model(ModelConfig())
    assert count_parameters(cnn) < count_parameters(resnet)
    blocks = cnn.blocks(torch.randn(1, 1, 64, 160))
    assert blocks.shape == (1, 512, 4, 10)  # four 2x2 pools: 64 x 160 -> 4 x 10; the ResNet stem alone is 4x
    assert build_model(ModelConfig(arch="cnn", **TINY)).eval()(torch.randn(3, 64, 100)).shape == (3, 80)
