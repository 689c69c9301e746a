"""FullFC against a naive loss written with loops, plus its input checks and memory report."""
from __future__ import annotations

import math

import pytest
import torch

from attfc_lite.heads import FullFC, make_head
from attfc_lite.margins import ArcFace, CosFace


def _naive_loss(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, s: float, margin_fn) -> float:
    """Cross-entropy of margin softmax, one scalar at a time."""
    total = 0.0
    for b in range(emb.shape[0]):
        e = emb[b].tolist()
        ne = math.sqrt(sum(v * v for v in e))
        logits = []
        for c in range(weight.shape[0]):
            w = weight[c].tolist()
            nw = math.sqrt(sum(v * v for v in w))
            cos = sum(x * y for x, y in zip(e, w)) / (ne * nw)
            logits.append(s * (margin_fn(cos) if c == int(labels[b]) else cos))
        top = max(logits)
        log_z = top + math.log(sum(math.exp(z - top) for z in logits))
        total += log_z - logits[int(labels[b])]
    return total / emb.shape[0]


def _arc(m):
    return lambda c: math.cos(math.acos(c) + m) if math.acos(c) + m <= math.pi else c - m * math.sin(m)


@pytest.mark.parametrize(
    "margin,kwargs,fn",
    [
        ("arcface", dict(s=8.0, m=0.5), _arc(0.5)),
        ("cosface", dict(s=8.0, m=0.35), lambda c: c - 0.35),
    ],
)
def test_fullfc_loss_matches_naive_reference(margin, kwargs, fn):
    torch.manual_seed(0)
    head = FullFC(5, 7, margin=margin, **kwargs).double()
    with torch.no_grad():
        head.weight.normal_()
    emb = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 6, 3, 1, 2])
    got = head(emb, labels).item()
    assert got == pytest.approx(_naive_loss(emb, head.weight.detach(), labels, kwargs["s"], fn), rel=1e-9)


def test_fullfc_accepts_a_built_margin_and_int32_labels():
    torch.manual_seed(1)
    head = FullFC(4, 3, margin=CosFace(s=2.0, m=0.2)).double()
    with torch.no_grad():
        head.weight.normal_()
    emb = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1], dtype=torch.int32)
    want = _naive_loss(emb, head.weight.detach(), labels, 2.0, lambda c: c - 0.2)
    assert head(emb, labels).item() == pytest.approx(want, rel=1e-9)


def test_built_margin_with_extra_kwargs_is_refused():
    with pytest.raises(ValueError, match="margin"):
        FullFC(4, 3, margin=ArcFace(), s=10.0)


def test_cosine_is_normalised_dot_product():
    torch.manual_seed(2)
    head = FullFC(3, 4)
    emb = torch.randn(2, 3) * 5
    got = head.cosine(emb)
    w = head.weight.detach()
    for b in range(2):
        for c in range(4):
            want = float(emb[b] @ w[c]) / (float(emb[b].norm()) * float(w[c].norm()))
            assert got[b, c].item() == pytest.approx(want, abs=1e-5)


def test_gradient_reaches_weight_and_embeddings():
    torch.manual_seed(3)
    head = FullFC(8, 5, margin="arcface", s=16.0, m=0.5)
    emb = torch.randn(4, 8, requires_grad=True)
    head(emb, torch.tensor([0, 1, 2, 4])).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert head.weight.grad is not None
    # Only the rows of classes in the batch and the others through the softmax: all get gradient.
    assert bool((head.weight.grad.abs().sum(1) > 0).all())


def test_gradient_matches_finite_differences():
    torch.manual_seed(4)
    head = FullFC(4, 3, margin="arcface", s=4.0, m=0.3).double()
    with torch.no_grad():
        head.weight.normal_()
    labels = torch.tensor([0, 2])
    emb = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: head(e, labels), (emb,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "emb,labels,name",
    [
        (torch.randn(3, 8), torch.tensor([0, 1, 5]), "labels"),  # 5 >= num_classes
        (torch.randn(3, 8), torch.tensor([0, -1, 2]), "labels"),  # negative
        (torch.randn(3, 8), torch.tensor([0.0, 1.0, 2.0]), "labels"),  # float
        (torch.randn(3, 8), torch.tensor([0, 1]), "labels"),  # one too few
        (torch.randn(3, 8), torch.tensor([[0, 1, 2]]), "labels"),  # 2-D
        (torch.randn(3, 7), torch.tensor([0, 1, 2]), "embedding"),  # wrong embedding_dim
        (torch.randn(8), torch.tensor([0]), "embedding"),  # 1-D
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(emb, labels, name):
    head = FullFC(8, 5)
    with pytest.raises(ValueError, match=name):
        head(emb, labels)


@pytest.mark.parametrize("dim,classes", [(0, 5), (8, 1)])
def test_bad_construction_raises(dim, classes):
    with pytest.raises(ValueError):
        FullFC(dim, classes)


def test_held_tensors_and_bytes():
    n, d = 37, 11
    head = FullFC(d, n)
    held = head.held_tensors()
    assert "weight" in held and tuple(held["weight"].shape) == (n, d)
    assert head.held_bytes() == n * d * 4
    assert FullFC(d, n).double().held_bytes() == n * d * 8


def test_make_head():
    head = make_head("FC", 6, 9, margin="cosface", s=3.0, m=0.1)
    assert isinstance(head, FullFC) and head.num_classes == 9 and head.embedding_dim == 6
    assert isinstance(head.margin, CosFace) and head.margin.s == 3.0
    with pytest.raises(ValueError, match="head"):
        make_head("attfc-nope", 6, 9)


def test_training_fullfc_alone_drives_loss_down_on_separable_embeddings():
    torch.manual_seed(5)
    num_classes, dim = 6, 8
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim), dim=1)
    labels = torch.arange(num_classes).repeat(10)
    emb = centres[labels] + 0.05 * torch.randn(len(labels), dim)
    head = FullFC(dim, num_classes, margin="arcface", s=16.0, m=0.3)
    # A small lr: W starts tiny (std 0.01), so the first steps act on the direction of W
    # through a gradient of size 1 / |W|.
    opt = torch.optim.SGD(head.parameters(), lr=0.003, momentum=0.9)
    first = head(emb, labels).item()
    for _ in range(200):
        opt.zero_grad()
        loss = head(emb, labels)
        loss.backward()
        opt.step()
    last = head(emb, labels).item()
    assert last < 0.1 * first
    # Every embedding's nearest centre is now its own class.
    assert torch.equal(head.cosine(emb).argmax(1), labels)


# --------------------------------------------------------------------------- inputs refused by name

def _call(head, embeddings, labels):
    """head(embeddings, labels), with AttFC's keys (K per row, float32) when the head needs them."""
    if not head.num_keys:
        return head(embeddings, labels)
    rows = len(embeddings) if hasattr(embeddings, "__len__") else 0
    return head(embeddings, labels, torch.randn(rows, head.num_keys, 8))


HEAD_NAMES = ["fc", "partial_fc", "attfc"]


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_an_empty_batch_is_refused_not_a_nan_loss(name):
    from attfc_lite.checks import ArgumentError

    head = make_head(name, 8, 10)
    with pytest.raises(ArgumentError) as info:
        _call(head, torch.randn(0, 8), torch.zeros(0, dtype=torch.int64))
    assert info.value.name == "embeddings" and "at least one row" in str(info.value)
    loss = _call(head, torch.randn(1, 8), torch.tensor([3]))  # one row is a batch
    assert loss.dim() == 0 and math.isfinite(loss.item())


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_embeddings_of_another_dtype_than_the_head_are_refused(name, dtype):
    from attfc_lite.checks import ArgumentError

    head = make_head(name, 8, 10)  # float32
    emb = torch.randn(3, 8).to(dtype)
    with pytest.raises(ArgumentError) as info:
        _call(head, emb, torch.tensor([0, 1, 2]))
    text = str(info.value)
    assert info.value.name == "embeddings" and text.startswith("embeddings")
    assert "torch.float32" in text and str(dtype) in text
    # the fix the message gives: cast the embeddings to the head's dtype
    assert math.isfinite(_call(head, emb.float(), torch.tensor([0, 1, 2])).item())


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_a_head_built_in_another_dtype_takes_embeddings_of_that_dtype(name, dtype):
    # memory.measure builds heads in the measured dtype and feeds them inputs of it
    from attfc_lite.memory.measure import build_head, step_inputs

    head = build_head(name, 10, 8, dtype)
    emb, labels, keys = step_inputs(head, 4, torch.device("cpu"))
    assert emb.dtype == getattr(torch, dtype)
    loss = head(emb, labels) if keys is None else head(emb, labels, keys)
    assert loss.dtype == emb.dtype and math.isfinite(loss.item())


def test_weights_dtype_is_the_weights_or_the_containers():
    assert FullFC(4, 3).weights_dtype() == torch.float32
    assert FullFC(4, 3).double().weights_dtype() == torch.float64
    assert make_head("attfc", 4, 10).half().weights_dtype() == torch.float16  # no parameters: the container


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("which", ["embeddings", "labels"])
@pytest.mark.parametrize("convert", [lambda t: t.tolist(), lambda t: t.numpy()], ids=["list", "numpy"])
def test_inputs_that_are_not_tensors_are_refused_by_name(name, which, convert):
    from attfc_lite.checks import ArgumentError

    head = make_head(name, 8, 10)
    good = {"embeddings": torch.randn(3, 8), "labels": torch.tensor([0, 1, 2])}
    bad = dict(good, **{which: convert(good[which])})
    with pytest.raises(ArgumentError) as info:
        _call(head, bad["embeddings"], bad["labels"])
    assert info.value.name == which and "must be a torch.Tensor" in str(info.value)
    assert type(bad[which]).__name__ in str(info.value)
    assert math.isfinite(_call(head, good["embeddings"], good["labels"]).item())


def test_attfc_keys_that_are_not_a_tensor_are_refused_by_name():
    from attfc_lite.checks import ArgumentError

    head = make_head("attfc", 8, 10, num_keys=2)
    emb, labels, keys = torch.randn(3, 8), torch.tensor([0, 1, 2]), torch.randn(3, 2, 8)
    with pytest.raises(ArgumentError) as info:
        head(emb, labels, keys.tolist())
    assert info.value.name == "keys" and "must be a torch.Tensor" in str(info.value)
    assert math.isfinite(head(emb, labels, keys).item())
