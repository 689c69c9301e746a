"""Backbones: shapes, input checks, normalisation and a parameter count derived by hand."""
from __future__ import annotations

import math

import pytest
import torch

from attfc_lite.backbones import SmallResNet, _Normalize, count_parameters, embedding_resnet, make_backbone


def _hand_count_small_resnet(embedding_dim: int, image_size: int, width: int, stem_stride: int) -> int:
    """Parameters of SmallResNet from its layer list.

    stem: conv 3x3 (3 -> w, no bias), BN (2 per channel), PReLU (1 per channel).
    block(ci, co): BN(ci), conv3x3 ci->co, BN(co), PReLU(co), conv3x3 co->co, BN(co),
    shortcut conv1x1 ci->co + BN(co) (every block changes width).
    head: BN2d(8w), Linear(8w * side^2 -> E) with bias, BN1d(E).
    """
    w = width
    total = 3 * w * 9 + 2 * w + w
    for ci, co in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
        total += 2 * ci + ci * co * 9 + 2 * co + co + co * co * 9 + 2 * co + ci * co + 2 * co
    side = image_size
    for _ in range(3 + (stem_stride == 2)):  # each stride-2 3x3 conv with padding 1 gives ceil(n / 2)
        side = (side + 1) // 2
    total += 2 * 8 * w + (8 * w * side * side + 1) * embedding_dim + 2 * embedding_dim
    return total


def test_default_small_resnet_parameter_count():
    # 32 px, stem stride 2: a 2x2 map of 128 channels feeds Linear(512 -> 128).
    assert count_parameters(SmallResNet()) == _hand_count_small_resnet(128, 32, 16, 2) == 369_504


@pytest.mark.parametrize("embedding_dim,image_size,width,stem_stride", [(64, 40, 8, 1), (32, 33, 4, 2)])
def test_other_small_resnet_parameter_counts(embedding_dim, image_size, width, stem_stride):
    net = SmallResNet(embedding_dim, image_size, width, stem_stride)
    assert count_parameters(net) == _hand_count_small_resnet(embedding_dim, image_size, width, stem_stride)


@pytest.mark.parametrize("image_size", [32, 40])
def test_small_resnet_output_shape(image_size):
    torch.manual_seed(0)
    net = SmallResNet(embedding_dim=24, image_size=image_size)
    out = net(torch.rand(3, 3, image_size, image_size))
    assert out.shape == (3, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_small_resnet_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = SmallResNet(embedding_dim=8, image_size=16, width=4)
    net(torch.rand(4, 3, 16, 16)).pow(2).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_embedding_resnet18_at_112():
    torch.manual_seed(0)
    net = embedding_resnet("resnet18", 64, 112)
    out = net(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 64)
    # Linear layer of the head: 512 channels on a 7x7 map (112 halved 4 times).
    assert net.head.fc.in_features == 512 * 7 * 7 and net.head.fc.out_features == 64


@pytest.mark.parametrize(
    "build,size",
    [(lambda: SmallResNet(16, 32), 40), (lambda: SmallResNet(16, 40), 32), (lambda: embedding_resnet("resnet18", 16, 112), 96)],
)
def test_wrong_image_size_raises_naming_image_size(build, size):
    with pytest.raises(ValueError, match="image_size"):
        build()(torch.rand(2, 3, size, size))


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match="3"):
        SmallResNet(16, 32)(torch.rand(2, 1, 32, 32))


def test_normalize_maps_unit_interval_to_minus_one_one():
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    y = _Normalize()(x)
    assert torch.equal(y[1], torch.zeros(3, 4, 4))
    assert torch.equal(y[0], torch.full((3, 4, 4), -1.0)) and torch.equal(y[2], torch.ones(3, 4, 4))


def test_backbone_normalises_internally():
    # The first layer after _Normalize sees zeros for a constant 0.5 image.
    net = SmallResNet(8, 16, width=4)
    seen = {}
    net.body[1].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    net(torch.full((2, 3, 16, 16), 0.5))
    assert torch.equal(seen["x"], torch.zeros(2, 3, 16, 16))


def test_make_backbone_and_bad_arguments():
    assert isinstance(make_backbone("small", 8, 16, width=4), SmallResNet)
    with pytest.raises(ValueError, match="^backbone must be one of"):
        make_backbone("vgg16", 8, 32)
    with pytest.raises(ValueError, match="stem_stride"):
        SmallResNet(stem_stride=3)
    with pytest.raises(ValueError):
        SmallResNet(image_size=4)


def test_documented_size_claim():
    # The class docstring says "about 0.37 M parameters" for the defaults.
    assert math.isclose(count_parameters(SmallResNet()) / 1e6, 0.37, abs_tol=0.005)
