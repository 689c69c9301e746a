"""Backbones: image [B, 3, H, W] in [0, 1] -> raw embedding [B, embedding_dim] (lesson 01).

`SmallResNet` trains in minutes on two CPU cores at the course's default 32x32 faces;
`embedding_resnet` adapts a torchvision ResNet (random init, never downloaded) for GPU
runs at 112x112, the usual size of aligned face crops.
"""
from __future__ import annotations

import math

import torch
import torchvision
from torch import nn


def _ceil_halvings(size: int, times: int) -> int:
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


class _Normalize(nn.Module):
    """Maps [0, 1] pixels to [-1, 1], so callers never normalise by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must have shape [batch, 3, H, W], got {tuple(x.shape)}")
        return (x - 0.5) / 0.5


class _EmbeddingHead(nn.Module):
    """Face-recognition output block: BN -> dropout -> flatten -> linear -> BN (no ReLU)."""

    def __init__(self, channels: int, spatial: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.bn2d = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.bn1d = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1d(self.fc(torch.flatten(self.dropout(self.bn2d(x)), 1)))


class _Block(nn.Module):
    """Pre-activation residual block (BN-conv-BN-PReLU-conv, as in insightface's IResNet)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class SmallResNet(nn.Module):
    """A small IResNet-style CNN: a strided stem and three strided residual stages.

    The defaults (width 16, stem stride 2: about 0.37 M parameters) train at a few
    thousand 32x32 images per second on two CPU cores.
    """

    def __init__(self, embedding_dim: int = 128, image_size: int = 32, width: int = 16, stem_stride: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if embedding_dim < 1 or image_size < 8 or width < 4:
            raise ValueError(
                f"need embedding_dim >= 1, image_size >= 8, width >= 4; got {embedding_dim}, {image_size}, {width}"
            )
        self.embedding_dim, self.image_size = int(embedding_dim), int(image_size)
        w = int(width)
        self.body = nn.Sequential(
            _Normalize(),
            nn.Conv2d(3, w, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.PReLU(w),
            _Block(w, 2 * w, 2),
            _Block(2 * w, 4 * w, 2),
            _Block(4 * w, 8 * w, 2),
        )
        self.head = _EmbeddingHead(8 * w, _ceil_halvings(self.image_size, 3 + (stem_stride == 2)), self.embedding_dim, dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the backbone was built for image_size={self.image_size}; "
                "build it with the dataset's image_size"
            )
        return self.head(self.body(images))


class _ResNetEmbedding(nn.Module):
    def __init__(self, trunk: nn.Module, head: nn.Module, embedding_dim: int, image_size: int) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head
        self.embedding_dim, self.image_size = embedding_dim, image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Without this check a wrong size fails deep inside the Linear layer with a shape error.
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the backbone was built for image_size={self.image_size}; "
                "build it with the dataset's image_size"
            )
        return self.head(self.trunk(images))


def embedding_resnet(arch: str = "resnet18", embedding_dim: int = 512, image_size: int = 112, dropout: float = 0.0) -> nn.Module:
    """A torchvision ResNet (random weights) turned into a face embedder.

    The 7x7/2 stem and max-pool become a 3x3/2 conv, so a 112x112 crop leaves a 7x7 map
    (as in IResNet), and global pooling + classifier become the BN-dropout-FC-BN block.
    """
    builders = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
                "resnet50": torchvision.models.resnet50}
    if arch not in builders:
        raise ValueError(f"arch must be one of {sorted(builders)}, got {arch!r}")
    net = builders[arch](weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
    channels = net.fc.in_features
    trunk = nn.Sequential(_Normalize(), net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)
    head = _EmbeddingHead(channels, _ceil_halvings(image_size, 4), embedding_dim, dropout)
    return _ResNetEmbedding(trunk, head, embedding_dim, image_size)


BACKBONES = ("small", "resnet18", "resnet34", "resnet50")


def make_backbone(name: str = "small", embedding_dim: int = 128, image_size: int = 32, **kwargs) -> nn.Module:
    """'small' -> SmallResNet; 'resnet18' / 'resnet34' / 'resnet50' -> embedding_resnet."""
    from .checks import as_choice

    as_choice("backbone", name, BACKBONES)
    if name == "small":
        return SmallResNet(embedding_dim, image_size, **kwargs)
    return embedding_resnet(name, embedding_dim, image_size, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
