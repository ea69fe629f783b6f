"""Audio-tagging networks on log-mel spectrograms, chosen by name from small registries (timm-style).

``build_model(cfg.model)`` is the front door: input ``(batch, n_mels, frames)`` log-mel, output raw
logits ``(batch, n_labels)``. Two architectures:

- ``resnet``: torchvision's layout (conv7x7/2 stem + max-pool, four stages of basic blocks, depth 18 or
  34) with one input channel: the m12sl baseline.
- ``cnn``: the plain 2D CNN of the popular FAT2019 public kernels (four blocks of two 3x3 convs and a 2x2
  average pool, 64-128-256-512 channels, then mean over mel bands and max + mean over time). No
  downsampling stem, so it keeps time resolution; several times cheaper than ResNet34 per clip.

Both take a width multiplier, a chosen activation and BatchNorm placement, dropout and a chosen head.
No pretrained weights: the competition forbade them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from trainer.config import ConfigError, ModelConfig

# -- activations ------------------------------------------------------------------------------------
# Each entry takes the channel count so per-channel activations (PReLU) get one slope per channel.
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda channels: nn.ReLU(inplace=True),
    "prelu": lambda channels: nn.PReLU(num_parameters=channels),
    "elu": lambda channels: nn.ELU(),
    "silu": lambda channels: nn.SiLU(),
    "sigmoid": lambda channels: nn.Sigmoid(),
}


def make_activation(name: str, channels: int) -> nn.Module:
    """A fresh activation module by registry name (fresh because PReLU has parameters)."""
    return ACTIVATIONS[_registered(ACTIVATIONS, name, "model.activation")](channels)


# -- ResNet -----------------------------------------------------------------------------------------
BN_POSITIONS = ("before", "after")

RESNET_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, activation: str,
                 bn_position: str) -> nn.Sequential:
    """conv -> BN -> act ("before", the standard) or conv -> act -> BN ("after")."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    act, bn = make_activation(activation, out_ch), nn.BatchNorm2d(out_ch)
    return nn.Sequential(conv, bn, act) if bn_position == "before" else nn.Sequential(conv, act, bn)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 conv + BN) shortcut.

    "before": conv-BN-act, conv-BN, add, act (torchvision). "after": conv-act-BN twice, then add; the
    sum is not activated again because each branch already ends with its activation + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: str, bn_position: str) -> None:
        super().__init__()
        self.conv1 = _conv_bn_act(in_ch, out_ch, 3, stride, activation, bn_position)
        if bn_position == "before":
            self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(out_ch))
            self.post = make_activation(activation, out_ch)
        else:
            self.conv2 = _conv_bn_act(out_ch, out_ch, 3, 1, activation, bn_position)
            self.post = nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv2(self.conv1(x)) + self.shortcut(x))


class AudioResNet(nn.Module):
    """ResNet over a single-channel (n_mels, frames) image; global average pool -> dropout -> head."""

    def __init__(self, stages: tuple[int, ...], widths: tuple[int, ...], activation: str,
                 bn_position: str, dropout: float, head: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_act(1, widths[0], 7, 2, activation, bn_position),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        layers, in_ch = [], widths[0]
        for i, (n_blocks, out_ch) in enumerate(zip(stages, widths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_ch if b == 0 else out_ch, out_ch, stride if b == 0 else 1,
                                 activation, bn_position) for b in range(n_blocks)]
            layers.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = head
        self.out_channels = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected log-mel input of shape (batch, n_mels, frames), got {tuple(x.shape)}")
        x = self.layers(self.stem(x.unsqueeze(1)))
        return self.head(self.dropout(torch.flatten(self.pool(x), 1)))


def _build_resnet(cfg: ModelConfig, n_labels: int) -> nn.Module:
    if cfg.depth not in RESNET_STAGES:
        raise ConfigError(f"model.depth={cfg.depth!r} is not available for resnet; "
                          f"expected one of: {', '.join(map(str, RESNET_STAGES))}")
    widths = stage_widths(cfg.width)
    head = build_head(cfg, widths[-1], n_labels)
    return AudioResNet(RESNET_STAGES[cfg.depth], widths, cfg.activation, cfg.bn_position, cfg.dropout, head)


class AudioCNN(nn.Module):
    """Four blocks of (conv3x3-BN-act) x 2 + 2x2 average pool; mean over mel bands, max + mean over time."""

    def __init__(self, widths: tuple[int, ...], activation: str, bn_position: str, dropout: float,
                 head: nn.Module) -> None:
        super().__init__()
        blocks, in_ch = [], 1
        for out_ch in widths:
            blocks.append(nn.Sequential(_conv_bn_act(in_ch, out_ch, 3, 1, activation, bn_position),
                                        _conv_bn_act(out_ch, out_ch, 3, 1, activation, bn_position),
                                        nn.AvgPool2d(2, ceil_mode=True)))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected log-mel input of shape (batch, n_mels, frames), got {tuple(x.shape)}")
        x = self.blocks(x.unsqueeze(1)).mean(dim=2)  # (batch, channels, frames)
        # Max finds short events, mean the steady ones; their sum is what the public kernels used.
        x = x.amax(dim=2) + x.mean(dim=2)
        return self.head(self.dropout(x))


def _build_cnn(cfg: ModelConfig, n_labels: int) -> nn.Module:
    widths = stage_widths(cfg.width)
    return AudioCNN(widths, cfg.activation, cfg.bn_position, cfg.dropout, build_head(cfg, widths[-1], n_labels))


ARCHS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "resnet": _build_resnet,
    "cnn": _build_cnn,
}


# -- heads ------------------------------------------------------------------------------------------
def _linear_head(in_features: int, n_labels: int, cfg: ModelConfig) -> nn.Module:
    return nn.Linear(in_features, n_labels)


def _mlp_head(in_features: int, n_labels: int, cfg: ModelConfig) -> nn.Module:
    # The hand-tuned FAT2019 baseline's head, dropout rates included.
    hidden = cfg.head_hidden
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(in_features, hidden), nn.PReLU(),
                         nn.BatchNorm1d(hidden), nn.Dropout(0.1), nn.Linear(hidden, n_labels))


HEADS: dict[str, Callable[[int, int, ModelConfig], nn.Module]] = {
    "linear": _linear_head,
    "mlp": _mlp_head,
}


def build_head(cfg: ModelConfig, in_features: int, n_labels: int) -> nn.Module:
    """The classifier on the pooled features, by ``cfg.head``; its output bias starts at the label prior.

    A bias of logit(1 / n_labels) makes the first sigmoid outputs ~ the rate of a one-label clip, so
    early BCE gradients teach which label, not "all labels are rare" (on a tiny run this roughly
    tripled the 2-epoch lwlrap; rankings, hence lwlrap, are unchanged by the shift itself).
    """
    head = HEADS[_registered(HEADS, cfg.head, "model.head")](in_features, n_labels, cfg)
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.constant_(last.bias, -math.log(max(n_labels - 1, 1)))
    return head


# -- front door -------------------------------------------------------------------------------------
def stage_widths(width: float) -> tuple[int, int, int, int]:
    """Channels of the four stages: round(64 * width) (at least 8) times 1, 2, 4, 8."""
    base = max(8, round(64 * width))
    return base, 2 * base, 4 * base, 8 * base


def build_model(cfg: ModelConfig, n_labels: int = 80) -> nn.Module:
    """The network a ModelConfig describes, freshly initialised; it returns raw logits."""
    arch = _registered(ARCHS, cfg.arch, "model.arch")
    _registered(ACTIVATIONS, cfg.activation, "model.activation")
    if cfg.bn_position not in BN_POSITIONS:
        raise ConfigError(f"model.bn_position={cfg.bn_position!r} is not allowed; "
                          f"expected one of: {', '.join(BN_POSITIONS)}")
    return ARCHS[arch](cfg, n_labels)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (for logs and for comparing widths)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _registered(registry: dict[str, object], name: str, key: str) -> str:
    if name not in registry:
        raise ConfigError(f"{key}={name!r} is not registered; expected one of: {', '.join(registry)}")
    return name
