"""Model constructors by name: an MLP, small CNNs (8x8 digits, 28x28), a CNN and ResNet-8/20 for 32x32 colour,
a character LSTM for Shakespeare; and the baselines' augmentation as a layer.

Owns: building `torch.nn.Module`s from shapes, the registry `MODELS` (name -> builder(input_shape,
num_classes)) and `Augment` (random crop with 4-pixel zero padding and horizontal flip, active in
training mode only). Seeding is the caller's job (`training.init_model`).

ResNets use GroupNorm, not BatchNorm: BatchNorm's running statistics are buffers, not parameters,
so decentralized averaging (which mixes parameters only) would leave every node with its own
statistics, and under label skew those differ badly (Hsieh et al. 2020, "The non-IID data quagmire").

Must not touch: data loading, training loops, sockets, aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def cnn32(num_classes: int, in_channels: int = 3, side: int = 32) -> nn.Module:
    """The FedAvg paper's CIFAR CNN (McMahan et al. 2017), 128 hidden units: two 5x5 convs (32, 64 channels),
    each followed by a 2x2 max-pool, then side/4 x side/4 x 64 -> 128 -> num_classes."""
    if num_classes < 2 or in_channels < 1 or side < 4 or side % 4:
        raise ValueError(f"cnn32 needs num_classes >= 2, in_channels >= 1 and a side divisible by 4, "
                         f"got {num_classes}, {in_channels}, {side}")
    q = side // 4
    return nn.Sequential(
        _AsImage(in_channels, side),
        nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * q * q, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


GROUPNORM_GROUPS = 2  # Hsieh et al. 2020 use 2 groups per layer for decentralized ResNets


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(GROUPNORM_GROUPS, channels)


class _BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(depth: int, num_classes: int, in_channels: int = 3, side: int = 32) -> nn.Module:
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers (8: n = 1, 20: n = 3): widths 16, 32, 64, GroupNorm."""
    if (depth - 2) % 6 or depth < 8 or num_classes < 2 or in_channels < 1 or side < 4:
        raise ValueError(f"resnet needs depth = 6n + 2 >= 8, num_classes >= 2, in_channels >= 1, side >= 4, "
                         f"got {depth}, {num_classes}, {in_channels}, {side}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [_AsImage(in_channels, side), nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                               _norm(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for b in range(n):
            layers.append(_BasicBlock(cin, width, 2 if stage and b == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: an 8-dimensional embedding of each character, two LSTM layers of 256 units,
    the last step's output -> num_classes. Input: character indices (N, seq), as floats or integers."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        if vocab < 2:
            raise ValueError(f"char_lstm needs a vocabulary of at least 2, got {vocab}")
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Datasets hold float32 rows; the indices are exact integers in them (leaf.py).
        h, _ = self.lstm(self.embed(x.long()))
        return self.out(h[:, -1])


class Augment(nn.Module):
    """The common CIFAR baseline's augmentation, in training mode only: a random crop of the image padded with
    `pad` zero pixels on each side, and a horizontal flip with probability 1/2. Evaluation sees the image as is.

    It draws from its own generator, seeded when the model is built (`training.init_model` seeds torch),
    so a node's augmentation does not depend on what other nodes in its process draw.
    """

    def __init__(self, pad: int = 4, flip: bool = True) -> None:
        super().__init__()
        self.pad = pad
        self.flip = flip
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.dim() != 4:
            return x
        n, _, h, w = x.shape
        padded = nn.functional.pad(x, (self.pad,) * 4)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=self.generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * self.pad)
        out = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        out = out.gather(3, cols)
        if self.flip:
            flip = torch.rand(n, generator=self.generator) < 0.5
            out = torch.where(flip[:, None, None, None], out.flip(3), out)
        return out


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(channels, side) of square image inputs (C, side, side); ValueError naming the model otherwise."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"model {name} needs square images (channels, side, side), the dataset gives {input_shape}")
    return input_shape[0], input_shape[1]


def _cnn28(shape: tuple[int, ...], classes: int) -> nn.Module:
    c, side = _image_shape("cnn28", shape)
    return small_cnn(classes, c, side)


def _cnn32(shape: tuple[int, ...], classes: int) -> nn.Module:
    c, side = _image_shape("cnn32", shape)
    return cnn32(classes, c, side)


def _resnet(depth: int) -> Callable[[tuple[int, ...], int], nn.Module]:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        c, side = _image_shape(f"resnet{depth}", shape)
        return resnet(depth, classes, c, side)
    return build


def _char_lstm(shape: tuple[int, ...], classes: int) -> nn.Module:
    if len(shape) != 1:
        raise ValueError(f"model char-lstm needs sequences of character indices (seq,), the dataset gives {shape}")
    return CharLSTM(classes)


def _mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    return mlp(int(math.prod(shape)), classes)


ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]
# name -> builder(input_shape, num_classes); config.MODELS names the same keys without importing torch
MODELS: dict[str, ModelBuilder] = {
    "mlp": _mlp,  # input -> 64 -> 64 -> classes
    "cnn28": _cnn28,  # small_cnn: the digits CNN at any even side (28x28: MNIST, FEMNIST)
    "cnn32": _cnn32,  # the FedAvg paper's CIFAR CNN
    "resnet8": _resnet(8),
    "resnet20": _resnet(20),
    "char-lstm": _char_lstm,  # LEAF's Shakespeare LSTM
}


def build(name: str, input_shape: tuple[int, ...], num_classes: int, augment: bool = False) -> nn.Module:
    """Model `name` for inputs of `input_shape` and `num_classes`; with `augment`, `Augment` first (images only)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    model = MODELS[name](tuple(input_shape), num_classes)
    if not augment:
        return model
    if len(input_shape) != 3:
        raise ValueError(f"augment crops and flips images; the dataset gives rows of shape {tuple(input_shape)}")
    return nn.Sequential(_AsImage(input_shape[0], input_shape[1]), Augment(), model)


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The model that fits a dataset of `input_shape` when the registry says "auto"."""
    if len(input_shape) == 3 and input_shape[1] == input_shape[2]:
        return "cnn32" if input_shape[1] % 4 == 0 and input_shape[1] >= 32 else "cnn28" if input_shape[1] % 2 == 0 else "mlp"
    return "mlp"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
