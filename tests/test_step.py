"""One training step, one house: `train` and the whole-step measurement run `step.training_step`,
and `train` trains exactly what the recipe written out by hand trains (bit for bit, on the CPU)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import attfc_lite.memory.step as memory_step
import attfc_lite.train as train_module
from attfc_lite.config import build
from attfc_lite.encoders import KeyEncoder
from attfc_lite.faces import SyntheticFaces
from attfc_lite.sampling import identity_index, sample_keys
from attfc_lite.step import NonFiniteLoss, training_step
from attfc_lite.train import TrainConfig, lr_at, train
from attfc_lite.utils import seed_everything

TINY = TrainConfig(num_classes=12, images_per_identity=4, eval_identities=6, eval_images_per_identity=3, epochs=2,
                   batch_size=8, embedding_dim=16, image_size=16, num_pairs=30, device="cpu")
HEADS = {"fc": {}, "partial_fc": {"sample_rate": 0.5}, "attfc": {"num_keys": 2, "container_size": 6,
                                                                  "ema_momentum": 0.9}}


def _by_hand(config: TrainConfig):
    """The recipe written out step by step, as `train` ran it before it had a step function:
    the epoch's order and flips, EMA then keys, forward, backward, the backbone's clipping, SGD."""
    config = config.validate()
    data = SyntheticFaces(config.num_classes, config.images_per_identity, "train", config.image_size, config.seed)
    seed_everything(config.seed)
    backbone, head = build(config, torch.device("cpu"))
    encoder_k = KeyEncoder(backbone, config.ema_momentum) if head.num_keys else None
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(data)
    per_epoch = n // config.batch_size
    total, warmup = per_epoch * config.epochs, int(config.warmup_epochs * per_epoch)
    index = identity_index(data.labels)
    step = 0

    def load(idx, flip):
        images, labels, _ = data.get_batch(idx)
        return torch.where(flip[:, None, None, None], images.flip(-1), images), labels

    for epoch in range(config.epochs):
        for module in (backbone, head, encoder_k):
            if module is not None:
                module.train()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order, flips = torch.randperm(n, generator=gen), torch.rand(n, generator=gen) < 0.5
        for b in range(per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            images, labels = load(idx, flips[idx])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config.lr)
            keys = None
            if encoder_k is not None:
                encoder_k.update(backbone)
                key_idx = sample_keys(data.labels, idx, head.num_keys, generator=gen, index=index).reshape(-1)
                key_images, _ = load(key_idx, torch.rand(key_idx.numel(), generator=gen) < 0.5)
                keys = encoder_k(key_images).view(idx.numel(), head.num_keys, -1)
            embeddings = backbone(images)
            loss = head(embeddings, labels) if keys is None else head(embeddings, labels, keys)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(list(backbone.parameters()), config.clip_grad_norm)
            optimizer.step()
            step += 1
    return backbone, head, encoder_k


def _same(a, b) -> bool:
    """Equal tensors, in equal nests of dicts (Partial FC's state holds its sampler's generator)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("head", sorted(HEADS))
def test_train_trains_what_the_recipe_by_hand_trains_bit_for_bit(head):
    config = replace(TINY, head=head, **HEADS[head])
    result = train(config, progress=False, evaluate=False)
    backbone, head_module, encoder_k = _by_hand(config)
    assert result.metrics["steps"] == 2 * (12 * 4 // 8)
    assert _same(result.backbone.state_dict(), backbone.state_dict())
    assert _same(result.head.state_dict(), head_module.state_dict())  # AttFC: the container too
    if encoder_k is not None:
        assert _same(result.encoder_k.state_dict(), encoder_k.state_dict())
    # and the weights moved: equality with an untrained model would prove little
    seed_everything(config.seed)
    untrained, _ = build(config.validate(), torch.device("cpu"))
    assert not _same(untrained.state_dict(), backbone.state_dict())


def test_train_and_the_whole_step_measurement_run_one_step_function(monkeypatch):
    calls = []
    real = training_step

    def spy(*args, **kwargs):
        calls.append(kwargs.get("clip_grad_norm"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_step", spy)
    monkeypatch.setattr(memory_step, "training_step", spy)
    train(replace(TINY, epochs=1, max_steps=3), progress=False, evaluate=False)
    assert calls == [TINY.clip_grad_norm] * 3
    calls.clear()
    memory_step.measure_model_step(replace(TINY, head="attfc", num_keys=2, container_size=6), warmup_steps=1)
    assert len(calls) >= 3 and set(calls) == {TINY.clip_grad_norm}  # warm-up, timing, measurement: with clipping


def test_a_non_finite_loss_stops_the_step_before_any_weight_changes():
    config = TINY.validate()
    backbone, head = build(config, torch.device("cpu"))
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.1)
    before = {k: v.clone() for k, v in backbone.state_dict().items() if v.is_floating_point()}
    images = torch.rand(4, 3, 16, 16)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="nan"):
        training_step(backbone.eval(), head, optimizer, images, torch.tensor([0, 1, 2, 3]))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in backbone.parameters())


def test_the_step_clips_the_backbone_gradient_to_the_recipe_norm():
    torch.manual_seed(0)
    backbone, head = build(TINY.validate(), torch.device("cpu"))
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.0)  # lr 0: the step leaves the weights, we read grads
    norms = []
    real_step = optimizer.step

    def read_then_step():
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in backbone.parameters()]))))
        return real_step()

    optimizer.step = read_then_step
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8)
    training_step(backbone, head, optimizer, images, labels, clip_grad_norm=0.0)
    training_step(backbone, head, optimizer, images, labels, clip_grad_norm=1e-3)
    assert norms[0] > 1e-2 and norms[1] == pytest.approx(1e-3, rel=1e-4)
