"""Model constructors: a multilayer perceptron and a small CNN for 8x8 digits.

Owns: building `torch.nn.Module`s from shapes. Seeding is the caller's job
(`training.init_model`).

Must not touch: data loading, training loops, sockets, aggregation.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(input_dim: int, num_classes: int, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """Fully connected net input_dim -> hidden... -> num_classes with ReLU; flattens its input."""
    if input_dim < 1 or num_classes < 2 or any(h < 1 for h in hidden):
        raise ValueError(
            f"mlp needs input_dim >= 1, num_classes >= 2 and positive hidden sizes, "
            f"got {input_dim}, {num_classes}, {hidden}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class _AsImage(nn.Module):
    """Reshape flat rows (N, C*side*side) to (N, C, side, side); leave 4-D input alone."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.channels = channels
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x
        return x.reshape(-1, self.channels, self.side, self.side)


def small_cnn(num_classes: int, in_channels: int = 1, side: int = 8) -> nn.Module:
    """Two 3x3 convs (16, 32 channels), one 2x2 max-pool, then 64 -> num_classes.

    Accepts (N, C, side, side) images or flat (N, C*side*side) vectors.
    """
    if num_classes < 2 or in_channels < 1 or side < 2 or side % 2:
        raise ValueError(
            f"small_cnn needs num_classes >= 2, in_channels >= 1 and an even side >= 2, "
            f"got {num_classes}, {in_channels}, {side}"
        )
    half = side // 2
    return nn.Sequential(
        _AsImage(in_channels, side),
        nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * half * half, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
