"""AttFC's parts against naive per-sample loops written from the equations.

Attention loader: s_j = cos(q, k_j), a = softmax(s / T), GCC = (sum_j a_j k_j) / ||.||.
Head: loss_i = -z_0 + log(exp(z_0) + sum over valid slots t of exp(s * q . d_t)), with
z_0 = s * margin(clamp(q . GCC)), and a slot valid when it is filled and holds another identity.
Container: a FIFO, pushed one entry at a time in the reference.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attfc_lite.attention import attention_weights, generative_class_centres
from attfc_lite.heads.attfc import AttFC, attfc_loss, container_capacity
from attfc_lite.container import EMPTY, DynamicClassContainer
from attfc_lite.encoders import KeyEncoder
from attfc_lite.heads import make_head
from attfc_lite.margins import ArcFace, make_margin

# --------------------------------------------------------------------------- references


def naive_gcc(q_row, keys_row, temperature=1.0):
    """One query: weights and GCC by plain loops over the K keys."""
    qnorm = math.sqrt(sum(float(v) ** 2 for v in q_row))
    qn = [float(v) / qnorm for v in q_row]
    sims = []
    for k in keys_row:
        kn = math.sqrt(sum(float(v) ** 2 for v in k))
        sims.append(sum(float(a) * float(b) for a, b in zip(qn, k)) / kn / temperature)
    top = max(sims)
    exps = [math.exp(v - top) for v in sims]
    weights = [e / sum(exps) for e in exps]
    centre = [sum(w * float(k[d]) for w, k in zip(weights, keys_row)) for d in range(len(q_row))]
    norm = math.sqrt(sum(v * v for v in centre))
    return weights, [v / norm for v in centre]


def arcface_value(c, m):
    theta = math.acos(max(-1.0, min(1.0, c)))
    return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)


class FifoReference:
    """The container as a list, one push at a time."""

    def __init__(self, capacity, dim):
        self.capacity = capacity
        self.centres = [[0.0] * dim for _ in range(capacity)]
        self.labels = [EMPTY] * capacity
        self.pointer = 0

    def push_batch(self, centres, labels):
        for c, y in zip(centres.tolist(), labels.tolist()):
            self.centres[self.pointer] = c
            self.labels[self.pointer] = y
            self.pointer = (self.pointer + 1) % self.capacity


def naive_loss_and_grad(emb, labels, keys, centres, centre_labels, s, m, temperature=1.0):
    """Mean loss and its gradient w.r.t. emb by per-sample loops (autograd only through q)."""
    emb = emb.detach().double().clone().requires_grad_(True)
    total = 0.0
    losses = []
    for i in range(emb.shape[0]):
        q = emb[i] / emb[i].norm()
        _, g = naive_gcc(q.detach().tolist(), keys[i].double().tolist(), temperature)
        c0 = (q * torch.tensor(g, dtype=torch.float64)).sum().clamp(-1, 1)
        theta = torch.acos(c0.clamp(-1 + 1e-7, 1 - 1e-7))
        if float(theta.detach()) + m < math.pi:
            z0 = s * torch.cos(theta + m)
        else:
            z0 = s * (c0 - m * math.sin(m))
        zs = [z0]
        for t in range(len(centre_labels)):
            if centre_labels[t] == EMPTY or centre_labels[t] == int(labels[i]):
                continue
            d = torch.tensor(centres[t], dtype=torch.float64)
            zs.append(s * (q * d).sum())
        z = torch.stack(zs)
        losses.append(torch.logsumexp(z, 0) - z0)
    total = torch.stack(losses).mean()
    total.backward()
    return float(total.detach()), emb.grad


# --------------------------------------------------------------------------- attention loader


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_weights_and_gcc_match_the_loop(k, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    keys = torch.randn(5, k, 7, generator=gen, dtype=torch.float64) * torch.rand(5, k, 1, generator=gen,
                                                                                   dtype=torch.float64).add(0.5)
    for temperature in (1.0, 0.3):
        weights, gcc = generative_class_centres(q, keys, temperature)
        assert torch.allclose(attention_weights(q, keys, temperature), weights)
        for i in range(5):
            w_ref, g_ref = naive_gcc(q[i].tolist(), keys[i].tolist(), temperature)
            assert weights[i].tolist() == pytest.approx(w_ref, abs=1e-12)
            assert gcc[i].tolist() == pytest.approx(g_ref, abs=1e-12)


def test_one_key_is_the_key_itself_and_weights_sum_to_one():
    gen = torch.Generator().manual_seed(3)
    q, keys = torch.randn(4, 6, generator=gen), torch.randn(4, 1, 6, generator=gen)
    weights, gcc = generative_class_centres(q, keys)
    assert torch.equal(weights, torch.ones(4, 1))  # K = 1: the DCQ-style case
    assert torch.allclose(gcc, F.normalize(keys[:, 0], dim=1))
    weights = attention_weights(q, torch.randn(4, 3, 6, generator=gen))
    assert torch.allclose(weights.sum(1), torch.ones(4))


def test_gcc_is_a_constant_even_from_a_query_and_keys_that_need_gradients():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(3, 6, generator=gen).requires_grad_(True)
    keys = torch.randn(3, 2, 6, generator=gen).requires_grad_(True)
    weights, gcc = generative_class_centres(q, keys)
    assert not weights.requires_grad and not gcc.requires_grad
    # the same numbers as from detached inputs, by the loop
    for i in range(3):
        _, g_ref = naive_gcc(q[i].tolist(), keys[i].tolist(), 1.0)
        assert gcc[i].tolist() == pytest.approx(g_ref, abs=1e-6)


def test_attention_prefers_the_key_closest_to_the_query():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    w = attention_weights(q, keys)[0]
    # cosines 1, 0, -1: weights proportional to e^1, e^0, e^-1; the extremes differ by e^2
    assert w.tolist() == pytest.approx([math.e / (math.e + 1 + 1 / math.e), 1 / (math.e + 1 + 1 / math.e),
                                        (1 / math.e) / (math.e + 1 + 1 / math.e)], rel=1e-6)


def test_attention_rejects_bad_shapes_by_name():
    with pytest.raises(ValueError, match="keys"):
        attention_weights(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match="keys"):
        attention_weights(torch.randn(4, 6), torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match="temperature"):
        attention_weights(torch.randn(4, 6), torch.randn(4, 2, 6), temperature=0.0)


# --------------------------------------------------------------------------- container


@pytest.mark.parametrize("capacity,batch", [(3, 8), (8, 8), (20, 8), (13, 8), (1, 4), (5, 1)])
def test_container_is_a_fifo_for_any_capacity(capacity, batch):
    gen = torch.Generator().manual_seed(capacity * 31 + batch)
    box, ref = DynamicClassContainer(capacity, 4), FifoReference(capacity, 4)
    assert box.labels.tolist() == [EMPTY] * capacity and int(box.filled()) == 0
    for step in range(7):  # several wrap-arounds for the small ones
        centres = torch.randn(batch, 4, generator=gen)
        labels = torch.randint(0, 50, (batch,), generator=gen)
        box.enqueue(centres, labels)
        ref.push_batch(centres, labels)
        assert box.labels.tolist() == ref.labels, step
        assert torch.allclose(box.centres, torch.tensor(ref.centres)), step
        assert int(box.pointer) == ref.pointer, step
        assert int(box.filled()) == min(capacity, batch * (step + 1))


def test_container_batch_larger_than_capacity_keeps_the_newest():
    box = DynamicClassContainer(3, 2)
    box.enqueue(torch.arange(10.0).view(5, 2), torch.tensor([10, 11, 12, 13, 14]))
    # pushed one by one: slots 0,1,2,0,1 -> slot 0 holds 13, slot 1 holds 14, slot 2 holds 12
    assert box.labels.tolist() == [13, 14, 12] and int(box.pointer) == 2
    assert box.centres[0].tolist() == [6.0, 7.0]


def test_container_takes_no_gradient_and_survives_a_state_dict():
    box = DynamicClassContainer(5, 3)
    grad_source = torch.randn(4, 3, requires_grad=True)
    box.enqueue(grad_source * 2, torch.tensor([1, 2, 3, 4]))
    assert not box.centres.requires_grad and list(box.parameters()) == []
    copy = DynamicClassContainer(5, 3)
    copy.load_state_dict(box.state_dict())
    assert torch.equal(copy.centres, box.centres) and torch.equal(copy.labels, box.labels)
    assert int(copy.pointer) == 4 and copy.labels.dtype == torch.int64
    box.reset()
    assert int(box.filled()) == 0 and int(box.pointer) == 0


def test_container_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="capacity"):
        DynamicClassContainer(0, 4)
    box = DynamicClassContainer(4, 3)
    with pytest.raises(ValueError, match="centres"):
        box.enqueue(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        box.enqueue(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_container_capacity_from_ratio_or_size():
    assert container_capacity(1000, 0.3) == 300
    assert container_capacity(1_000_000, 0.3) == 300_000
    assert container_capacity(10, 0.01) == 1  # at least one slot
    assert container_capacity(1000, 0.3, container_size=77) == 77
    with pytest.raises(ValueError, match="container_ratio"):
        container_capacity(1000, 1.5)
    with pytest.raises(ValueError, match="container_size"):
        container_capacity(1000, 0.3, container_size=0)


# --------------------------------------------------------------------------- the head


def _run_head_against_reference(capacity, batch, k, seed, num_classes=12, steps=5, margin="arcface", s=16.0, m=0.5):
    gen = torch.Generator().manual_seed(seed)
    head = AttFC(6, num_classes, container_size=capacity, num_keys=k, margin=margin, s=s, m=m).double()
    ref = FifoReference(capacity, 6)
    for step in range(steps):
        emb = torch.randn(batch, 6, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, num_classes, (batch,), generator=gen)
        if step == 1:
            labels[1] = labels[0]  # repeated identity within a batch
        keys = torch.randn(batch, k, 6, generator=gen, dtype=torch.float64)
        want_loss, want_grad = naive_loss_and_grad(emb, labels, keys, ref.centres, ref.labels, s, m)
        x = emb.clone().requires_grad_(True)
        loss = head(x, labels, keys)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-9, abs=1e-9), (step, capacity)
        assert torch.allclose(x.grad, want_grad, rtol=1e-7, atol=1e-9), (step, capacity)
        # the enqueue: this batch's GCCs and labels, after the loss
        _, gccs = generative_class_centres(emb, keys)
        ref.push_batch(gccs, labels)
        assert head.container.labels.tolist() == ref.labels
        assert torch.allclose(head.container.centres, torch.tensor(ref.centres, dtype=torch.float64))


@pytest.mark.parametrize("capacity", [3, 8, 21, 13])  # smaller than, equal to, larger than, not a multiple of B=8
@pytest.mark.parametrize("k", [1, 2, 4])
def test_head_loss_gradient_and_enqueue_match_the_loop(capacity, k):
    _run_head_against_reference(capacity, batch=8, k=k, seed=capacity * 10 + k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_matches_the_loop_over_seeds_with_many_repeats(seed):
    # 3 identities in batches of 8: most container entries are masked for most rows
    _run_head_against_reference(capacity=10, batch=8, k=2, seed=100 + seed, num_classes=3)


def test_head_matches_the_loop_in_the_fallback_region_and_with_cosface():
    gen = torch.Generator().manual_seed(9)
    head = AttFC(4, 10, container_size=6, num_keys=2, s=8.0, m=0.5).double()
    head.container.enqueue(F.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1),
                           torch.arange(6))
    emb = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    keys = -emb[:, None, :].repeat(1, 2, 1) + 0.01 * torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([7, 8, 9])  # keys opposite the query: theta + m > pi
    want_loss, want_grad = naive_loss_and_grad(emb, labels, keys, head.container.centres.tolist(),
                                               head.container.labels.tolist(), 8.0, 0.5)
    x = emb.clone().requires_grad_(True)
    loss = head(x, labels, keys)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-9)
    assert torch.allclose(x.grad, want_grad, rtol=1e-7, atol=1e-9)
    # CosFace on the positive: s * (c - m), against autograd on the same expression
    cos_head = AttFC(4, 10, container_size=6, margin="cosface", s=8.0, m=0.35).double()
    cos_head.container.load_state_dict(head.container.state_dict())
    q = F.normalize(emb.clone().requires_grad_(True), dim=1)
    _, g = generative_class_centres(q.detach(), keys)
    z = torch.cat([8.0 * ((q * g).sum(1, keepdim=True) - 0.35), 8.0 * q @ cos_head.container.centres.t()], 1)
    mask = cos_head.container.labels[None, :] == labels[:, None]
    z = z.masked_fill(torch.cat([torch.zeros(3, 1, dtype=torch.bool), mask], 1), float("-inf"))
    want = float(F.cross_entropy(z, torch.zeros(3, dtype=torch.long)).detach())
    assert float(cos_head(emb, labels, keys).detach()) == pytest.approx(want)


def test_empty_container_gives_zero_loss_and_no_gradient():
    head = AttFC(6, 50, container_size=16, num_keys=2)
    x = torch.randn(4, 6, requires_grad=True)
    loss = head(x, torch.tensor([0, 1, 2, 3]), torch.randn(4, 2, 6))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(x.grad.abs().max()) == 0.0
    assert int(head.container.filled()) == 4


def test_no_gradient_reaches_the_keys_the_gccs_or_the_container():
    head = AttFC(6, 50, container_size=16, num_keys=2)
    keys = torch.randn(4, 2, 6, requires_grad=True)
    x = torch.randn(4, 6, requires_grad=True)
    for _ in range(3):
        head(x, torch.tensor([0, 1, 2, 3]), keys).backward()
    assert keys.grad is None
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not head.container.centres.requires_grad and list(head.parameters()) == []
    held = head.held_tensors()
    assert set(held) == {"container.centres", "container.labels", "container.pointer"}


def test_eval_mode_does_not_enqueue_and_keys_are_required():
    head = AttFC(6, 50, container_size=16).eval()
    head(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), torch.randn(4, 2, 6))
    assert int(head.container.filled()) == 0
    with pytest.raises(ValueError, match="keys"):
        head(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="keys"):
        head(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), torch.randn(4, 6))
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(4, 6), torch.tensor([0, 1, 2, 50]), torch.randn(4, 2, 6))


def test_loss_function_matches_plain_autograd_in_float32():
    # the fused loss against the readable autograd version (the one lesson 08 writes out)
    gen = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(16, 32, generator=gen), dim=1).requires_grad_(True)
    gcc = F.normalize(torch.randn(16, 32, generator=gen), dim=1)
    centres = F.normalize(torch.randn(40, 32, generator=gen), dim=1)
    centre_labels = torch.randint(-1, 10, (40,), generator=gen)
    labels = torch.randint(0, 10, (16,), generator=gen)
    margin = ArcFace(s=32.0, m=0.5)
    loss = attfc_loss(q, gcc, centres, centre_labels, labels, margin)
    (grad,) = torch.autograd.grad(loss, q)
    q2 = q.detach().clone().requires_grad_(True)
    pos = margin.positive_logit((q2 * gcc).sum(1).clamp(-1, 1))[:, None] * 32.0
    neg = (q2 @ centres.t()) * 32.0
    neg = neg.masked_fill((centre_labels[None, :] == labels[:, None]) | (centre_labels[None, :] < 0), float("-inf"))
    plain = F.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(16, dtype=torch.long))
    (grad2,) = torch.autograd.grad(plain, q2)
    assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    assert torch.allclose(grad, grad2, rtol=1e-4, atol=1e-6)


def test_without_the_mask_own_identity_entries_count_as_negatives():
    # hand case: one query of identity 3, container holds [its own GCC, a stranger]
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    gcc = torch.tensor([[1.0, 0.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centre_labels = torch.tensor([3, 7])
    margin = make_margin("cosface", s=2.0, m=0.0)  # logits 2 * cos: positive 2, own entry 2, stranger 0
    masked = attfc_loss(q, gcc, centres, centre_labels, torch.tensor([3]), margin)
    plain = attfc_loss(q, gcc, centres, centre_labels, torch.tensor([3]), margin, mask_own=False)
    assert float(masked.detach()) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert float(plain.detach()) == pytest.approx(math.log(2 + math.exp(-2)), rel=1e-6)
    head = AttFC(2, 10, container_size=2, mask_own=False, margin=margin)
    assert "mask_own=False" in repr(head)
    with pytest.raises(ValueError, match="mask_own"):
        AttFC(2, 10, container_size=2, mask_own="no")


def test_make_head_builds_attfc_from_a_ratio():
    head = make_head("attfc", 8, 1000, container_ratio=0.3, num_keys=4)
    assert isinstance(head, AttFC) and head.container.capacity == 300 and head.num_keys == 4
    assert make_head("fc", 8, 10).num_keys == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    gen = torch.Generator().manual_seed(5)
    emb, keys = torch.randn(8, 16, generator=gen), torch.randn(8, 2, 16, generator=gen)
    labels = torch.randint(0, 20, (8,), generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        head = AttFC(16, 20, container_size=13).to(device)
        head.container.enqueue(F.normalize(torch.randn(13, 16, generator=torch.Generator().manual_seed(6)), dim=1)
                               .to(device), torch.arange(13, device=device))
        x = emb.clone().to(device).requires_grad_(True)  # a leaf on either device; emb itself stays as it is
        loss = head(x, labels.to(device), keys.to(device))
        loss.backward()
        weights, gcc = generative_class_centres(emb.to(device), keys.to(device))
        results.append((float(loss.detach()), x.grad.cpu(), weights.cpu(), gcc.cpu(), head.container.labels.cpu()))
    (l0, g0, w0, c0, y0), (l1, g1, w1, c1, y1) = results
    assert l0 == pytest.approx(l1, rel=1e-5)
    assert torch.allclose(g0, g1, atol=1e-5) and torch.allclose(w0, w1, atol=1e-6) and torch.allclose(c0, c1, atol=1e-6)
    assert torch.equal(y0, y1)


# --------------------------------------------------------------------------- key encoder


def test_ema_hand_computed():
    q = nn.Linear(1, 1, bias=False)
    q.weight.data.fill_(1.0)
    k = KeyEncoder(q, momentum=0.75)
    assert float(k.encoder.weight) == 1.0 and not k.encoder.weight.requires_grad
    q.weight.data.fill_(3.0)
    k.update(q)  # 0.75 * 1 + 0.25 * 3
    assert float(k.encoder.weight) == 1.5
    k.update(q)  # 0.75 * 1.5 + 0.25 * 3
    assert float(k.encoder.weight) == 1.875
    assert k.drift(q) == pytest.approx(abs(1.875 - 3.0) / 3.0)
    assert float(q.weight.detach()) == 3.0  # encoder_q untouched


def test_ema_momentum_zero_copies_and_one_freezes():
    q = nn.Linear(3, 2)
    with torch.no_grad():  # exactly representable values, so (w + 1) - 1 == w
        q.weight.copy_(torch.tensor([[0.5, -0.25, 0.75], [1.0, 2.0, -1.5]]))
    frozen, follower = KeyEncoder(q, momentum=1.0), KeyEncoder(q, momentum=0.0)
    with torch.no_grad():
        q.weight.add_(1.0)
    frozen.update(q)
    follower.update(q)
    assert torch.equal(follower.encoder.weight, q.weight)
    assert torch.equal(frozen.encoder.weight, q.weight - 1.0)


def test_key_encoder_takes_no_gradient_and_keeps_bn_buffers_its_own():
    q = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    k = KeyEncoder(q, momentum=0.5)
    out = k(torch.randn(8, 4))
    assert not out.requires_grad
    q[1].running_mean.fill_(7.0)
    k.update(q)  # parameters only: the BatchNorm running statistics are not averaged
    assert not torch.equal(k.encoder[1].running_mean, q[1].running_mean)
    with pytest.raises(ValueError, match="momentum"):
        KeyEncoder(q, momentum=1.5)
    with pytest.raises(ValueError, match="encoder_q"):
        k.update(nn.Linear(4, 3))


def test_container_knows_when_it_is_full_after_a_load_or_reset():
    box = DynamicClassContainer(4, 2)
    assert not box.is_full()
    box.enqueue(torch.randn(3, 2), torch.tensor([1, 2, 3]))
    assert not box.is_full()
    box.enqueue(torch.randn(1, 2), torch.tensor([4]))
    assert box.is_full()
    empty = DynamicClassContainer(4, 2)
    box.load_state_dict(empty.state_dict())
    assert not box.is_full()
    box.enqueue(torch.randn(5, 2), torch.arange(5))
    assert box.is_full()
    box.reset()
    assert not box.is_full()


# --------------------------------------------------------------------------- lesson helpers


def test_drift_tracker_follows_a_backbone_by_hand():
    from attfc_lite.encoders import DriftTracker

    net = nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(2.0)
    tracker = DriftTracker(momenta=(0.5, 0.0))
    for step, value in enumerate((2.0, 4.0, 4.0), start=1):  # the backbone after each step
        net.weight.data.fill_(value)
        tracker({"step": step, "backbone": net})
    # m = 0.5 starts at 2 (a copy at step 1), then 0.5*2 + 0.5*2 = 2, 0.5*2 + 0.5*4 = 3, 0.5*3 + 0.5*4 = 3.5
    assert tracker.steps == [1, 2, 3]
    assert tracker.drift[0.5] == pytest.approx([0.0, (4 - 3) / 4, (4 - 3.5) / 4])
    assert tracker.drift[0.0] == pytest.approx([0.0, 0.0, 0.0])  # momentum 0 copies every step
    with pytest.raises(ValueError, match="momentum"):
        DriftTracker(momenta=(2.0,))


def test_rank_correlation_hand_cases():
    from attfc_lite.attention import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks x = [0, 1.5, 1.5, 3], y = [0, 1, 2, 3] -> Pearson of the ranks
    import numpy as np

    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1])
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


def test_quality_study_shapes_and_a_quality_reading_encoder():
    from attfc_lite.attention import DEGRADATIONS, quality_study
    from attfc_lite.faces import FaceWorld

    class Sharpness(nn.Module):
        """Embeds an image by its mean absolute horizontal gradient along one axis: a crude quality reader."""

        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            g = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
            return torch.stack([torch.ones_like(g), 20 * g], 1)

    world = FaceWorld(seed=0)
    study = quality_study(Sharpness(), Sharpness(), world, torch.arange(40), k=3)
    assert study["weights"].shape == study["quality"].shape == (40, 3)
    assert study["num_identities"] == 40 and study["chance"] == pytest.approx(1 / 3)
    assert set(study["by_degradation"]) == set(DEGRADATIONS)
    assert abs(study["weights"].sum(1) - 1).max() < 1e-5
    # the keys' qualities are the world's ground truth for images 1..3
    want = world.quality(torch.arange(40).repeat_interleave(3), torch.arange(1, 4).repeat(40)).view(40, 3)
    assert torch.allclose(torch.as_tensor(study["quality"]), want)


def test_plot_key_views_and_quality_study_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.attention import plot_quality_study, quality_study
    from attfc_lite.faces import FaceWorld, SyntheticFaces
    from attfc_lite.sampling import plot_key_views

    data = SyntheticFaces(5, 4)
    axes = plot_key_views(data.images, data.labels, data.quality, [0, 5], k=3,
                          generator=torch.Generator().manual_seed(0))
    assert len(axes) == 2 and len(axes[0]) == 4 and axes[0][0].get_title().startswith("query")
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8))
    study = quality_study(net, net, FaceWorld(), torch.arange(12), k=2)
    ax1, ax2 = plot_quality_study(study)
    assert "Spearman" in ax1.get_title() and ax2.get_ylabel().startswith("Spearman")
    plt.close("all")


def test_plot_quality_study_bars_start_at_zero_and_every_panel_is_labelled():
    import matplotlib.pyplot as plt
    import numpy as np

    from attfc_lite.attention import DEGRADATIONS, plot_quality_study

    rng = np.random.default_rng(0)
    study = {"quality": rng.random((6, 2)), "weights": rng.random((6, 2)), "degradation": rng.integers(0, 4, (6, 2)),
             "k": 2, "num_identities": 6, "spearman": 0.3,
             "by_degradation": {n: {"keys": 3, "spearman": v} for n, v in zip(DEGRADATIONS, (0.4, 0.2, 0.1, 0.3))}}
    ax1, ax2 = plot_quality_study(study)
    for ax in (ax1, ax2):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    assert len(ax1.get_legend().get_texts()) == len(DEGRADATIONS) + 1  # each type and the uniform weight 1/K
    assert {t.get_text() for t in ax2.get_legend().get_texts()} == {"0: no rank correlation", "bars: 95 % interval"}
    assert ax2.get_ylim()[0] == 0  # all correlations positive: the bars start at 0
    study["by_degradation"]["blur"]["spearman"] = -0.2
    assert plot_quality_study(study)[1].get_ylim()[0] == pytest.approx(-0.3)  # room for the negative bar's label
    plt.close("all")


def test_spearman_interval_and_gaps_follow_fishers_z_by_hand():
    from attfc_lite.attention import degradation_gaps, spearman_interval

    se = math.sqrt(1.06 / 100)  # n = 103 pairs
    lo, hi = spearman_interval(0.0, 103)
    assert lo == pytest.approx(-math.tanh(1.96 * se)) and hi == pytest.approx(math.tanh(1.96 * se))
    lo, hi = spearman_interval(0.5, 103)
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - 1.96 * se)) and hi < 0.7 and lo > 0.3
    assert all(math.isnan(v) for v in spearman_interval(0.5, 3))  # too few pairs for an interval
    study = {"by_degradation": {"blur": {"keys": 103, "spearman": 0.0}, "noise": {"keys": 103, "spearman": 0.5},
                                "down": {"keys": 103, "spearman": 0.1}, "occ": {"keys": 2, "spearman": float("nan")}}}
    gaps = degradation_gaps(study)
    assert [(g["higher"], g["lower"]) for g in gaps] == [("noise", "blur"), ("noise", "down"), ("down", "blur")]
    # noise - blur: |atanh(0.5) - 0| / (sqrt(2) se) = 3.77 standard errors; down - blur: 0.69
    assert gaps[0]["z"] == pytest.approx(math.atanh(0.5) / (math.sqrt(2) * se)) and gaps[0]["beyond_noise"]
    assert gaps[2]["difference"] == pytest.approx(0.1) and not gaps[2]["beyond_noise"]


def test_plot_quality_study_draws_each_interval():
    import matplotlib.pyplot as plt
    import numpy as np

    from attfc_lite.attention import DEGRADATIONS, plot_quality_study

    rng = np.random.default_rng(0)
    rows = {n: {"keys": 50, "spearman": v, "interval": (v - 0.1, v + 0.2)}
            for n, v in zip(DEGRADATIONS, (0.4, 0.2, 0.1, 0.3))}
    study = {"quality": rng.random((6, 2)), "weights": rng.random((6, 2)), "degradation": rng.integers(0, 4, (6, 2)),
             "k": 2, "num_identities": 6, "spearman": 0.3, "by_degradation": rows}
    ax2 = plot_quality_study(study)[1]
    segments = ax2.collections[0].get_segments()
    assert [(round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in segments] == [
        (round(r["interval"][0], 6), round(r["interval"][1], 6)) for r in rows.values()]
    assert ax2.get_ylim()[1] == pytest.approx(0.6 + 0.15)  # room above the highest interval for its label
    plt.close("all")


def test_drift_plot_says_its_axis_is_log_scale():
    import matplotlib.pyplot as plt

    from attfc_lite.encoders import DriftTracker

    tracker = DriftTracker(momenta=(0.9, 0.99))
    tracker.steps = [1, 2, 3]
    tracker.drift = {0.9: [0.1, 0.05, 0.02], 0.99: [0.01, 0.02, 0.03]}
    ax = tracker.plot()
    assert ax.get_title() and ax.get_xlabel() == "training step" and ax.get_yscale() == "log"
    assert "log scale" in ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 2
    plt.close("all")


@pytest.mark.parametrize("which", ["embeddings", "keys"])
def test_non_finite_embeddings_or_keys_are_refused_and_the_container_kept(which):
    head = AttFC(4, 10, container_size=6)
    gen = torch.Generator().manual_seed(2)
    emb, keys, labels = torch.randn(3, 4, generator=gen), torch.randn(3, 2, 4, generator=gen), torch.tensor([0, 1, 2])
    head(emb, labels, keys)  # one clean batch in the container
    before = head.container.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    bad_emb, bad_keys = emb.clone(), keys.clone()
    (bad_emb if which == "embeddings" else bad_keys).view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match=rf"^{which} hold nan or inf"):
        head(bad_emb, labels, bad_keys)
    for name, value in head.container.state_dict().items():
        assert torch.equal(value, before[name]), name  # nothing of the bad batch went in
    assert torch.isfinite(head(emb, labels, keys))  # the next clean batch is unharmed


def test_the_container_refuses_non_finite_centres():
    dcc = DynamicClassContainer(capacity=4, embedding_dim=2)
    centres = torch.tensor([[1.0, 0.0], [float("inf"), 0.0]])
    with pytest.raises(ValueError, match=r"^centres hold 1 of 2 rows with nan or inf; nothing was enqueued"):
        dcc.enqueue(centres, torch.tensor([0, 1]))
    assert dcc.labels.tolist() == [-1, -1, -1, -1] and int(dcc.pointer) == 0
