"""Property tests (hypothesis): the container, K-view sampling, the heads and the memory model,
each checked against a naive reference written here (Python lists and loops), never against
the library's own output.

Derandomized (the same examples on every run and in CI) and sized to run in well under a
minute on one core.
"""
from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attfc_lite.heads.attfc import AttFC, attfc_loss
from attfc_lite.container import EMPTY, DynamicClassContainer
from attfc_lite.heads import FullFC
from attfc_lite.margins import make_margin
from attfc_lite.memory.model import predict_memory
from attfc_lite.heads.partial_fc import PartialFC
from attfc_lite.sampling import identity_index, sample_keys


def props(examples: int):
    """Reproducible settings: derandomized, no example database, no per-example deadline."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the container

# One step of a run: ("enqueue", batch size: up to 20, past the capacity too) or ("reset", 0).
STEPS = st.lists(st.one_of(st.tuples(st.just("enqueue"), st.integers(0, 20)),
                           st.tuples(st.just("reset"), st.just(0))), max_size=12)


@props(300)
@given(capacity=st.integers(1, 9), dim=st.integers(1, 3), steps=STEPS, big_labels=st.booleans())
def test_container_is_a_fifo_of_the_last_capacity_entries(capacity, dim, steps, big_labels):
    container = DynamicClassContainer(capacity, dim)
    fifo: deque = deque(maxlen=capacity)  # the reference: (label, embedding) of the newest entries
    ring = [None] * capacity  # the reference ring: entries pushed one at a time into slot `pointer`
    pointer, count = 0, 0
    for kind, n in steps:
        if kind == "reset":
            container.reset()
            fifo.clear()
            ring, pointer = [None] * capacity, 0
            continue
        # Entry number t has embedding (t, t + 0.5, ...) and label t (+ 2**40: beyond float's 2**24).
        labels = [count + i + (2**40 if big_labels else 0) for i in range(n)]
        embeddings = [[float(count + i) + 0.5 * j for j in range(dim)] for i in range(n)]
        container.enqueue(torch.tensor(embeddings, dtype=torch.float32).reshape(n, dim),
                          torch.tensor(labels, dtype=torch.int64))
        for entry in zip(labels, embeddings):
            fifo.append(entry)
            ring[pointer] = entry
            pointer = (pointer + 1) % capacity
        count += n

        assert int(container.pointer) == pointer
        assert int(container.filled()) == len(fifo)
        assert container.is_full() == (len(fifo) == capacity)
        got_labels, got_centres = container.labels.tolist(), container.centres.tolist()
        for slot in range(capacity):  # slot by slot, empty slots included
            if ring[slot] is None:
                assert got_labels[slot] == EMPTY and got_centres[slot] == [0.0] * dim
            else:
                assert (got_labels[slot], got_centres[slot]) == ring[slot]
        # Read oldest to newest from the write pointer: the FIFO, in order.
        oldest_first = [(got_labels[s], got_centres[s]) for s in ((pointer + i) % capacity for i in range(capacity))
                        if got_labels[s] != EMPTY]
        assert oldest_first == list(fifo)


def test_container_refuses_negative_labels():
    container = DynamicClassContainer(3, 2)
    with pytest.raises(ValueError, match="labels"):
        container.enqueue(torch.ones(2, 2), torch.tensor([-1, 4]))


# --------------------------------------------------------------------------- K-view sampling

LABELS = st.lists(st.integers(0, 7), min_size=1, max_size=40)


@props(200)
@given(labels=LABELS, data=st.data(), k=st.integers(1, 5), seed=st.integers(0, 2**31),
       dtype=st.sampled_from([torch.int64, torch.int32]))
def test_sampled_keys_belong_to_the_query_identity(labels, data, k, seed, dtype):
    n = len(labels)
    queries = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=12), label="queries")
    t = torch.tensor(labels, dtype=dtype)

    order, starts, counts = identity_index(t)
    # Reference index: the images of each identity 0..max, ascending.
    members = {c: [i for i in range(n) if labels[i] == c] for c in range(max(labels) + 1)}
    assert counts.tolist() == [len(members[c]) for c in range(max(labels) + 1)]
    for c, images in members.items():
        assert order[int(starts[c]):int(starts[c]) + int(counts[c])].tolist() == images
    assert sorted(order.tolist()) == list(range(n))

    keys = sample_keys(t, queries, k, generator=torch.Generator().manual_seed(seed))
    assert keys.shape == (len(queries), k) and keys.dtype == torch.int64
    for q, row in zip(queries, keys.tolist()):
        assert all(key in members[labels[q]] for key in row), (q, row)
    again = sample_keys(t, torch.tensor(queries), k, generator=torch.Generator().manual_seed(seed),
                        index=(order, starts, counts))
    assert torch.equal(again, keys)  # a reused index and a tensor of queries draw the same keys


def test_sample_keys_with_no_queries_gives_an_empty_batch():
    assert sample_keys(torch.tensor([0, 1, 1]), [], 2).shape == (0, 2)


# --------------------------------------------------------------------------- heads: naive references

_EPS = 1e-7  # the margins clamp the cosine to [-1 + eps, 1 - eps] where sqrt / acos need it


def margin_strategy():
    return st.one_of(
        st.builds(lambda s, m: ("arcface", dict(s=s, m=m)), st.floats(1, 64), st.floats(0, 1.5)),
        st.builds(lambda s, m: ("cosface", dict(s=s, m=m)), st.floats(1, 64), st.floats(0, 0.95)),
        st.builds(lambda s, m1, m2, m3: ("combined", dict(s=s, m1=m1, m2=m2, m3=m3)),
                  st.floats(1, 64), st.floats(1, 3), st.floats(0, 1.0), st.floats(0, 0.5)),
    )


def naive_positive(name: str, p: dict, c: float) -> float:
    """The positive logit (before the scale s) at cosine c, from each margin's formula:
    CosFace cos - m; ArcFace / combined cos(m1 theta + m2) - m3, and past theta_max = (pi - m2) / m1
    the line cos - (pi - theta_max) sin(theta_max) - m3."""
    if name == "cosface":
        return c - p["m"]
    m1, m2, m3 = (1.0, p["m"], 0.0) if name == "arcface" else (p["m1"], p["m2"], p["m3"])
    theta_max = (math.pi - m2) / m1
    if c > math.cos(theta_max):
        return math.cos(m1 * math.acos(min(max(c, -1 + _EPS), 1 - _EPS)) + m2) - m3
    return c - (math.pi - theta_max) * math.sin(theta_max) - m3


def naive_unit(v: list[float]) -> list[float]:
    """v / max(|v|, 1e-12), as F.normalize."""
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, 1e-12) for x in v]


def naive_cross_entropy(logits: list[float], target: int) -> float:
    top = max(logits)
    return top + math.log(sum(math.exp(z - top) for z in logits)) - logits[target]


def naive_margin_loss(embeddings, weights, labels, name, p, columns=None) -> float:
    """Mean over rows of the cross-entropy of s * [cos to each centre in `columns`, the label's
    with the margin], the label's column as the target."""
    columns = list(range(len(weights))) if columns is None else columns
    centres = [naive_unit(weights[c]) for c in columns]
    total = 0.0
    for e, y in zip(embeddings, labels):
        u = naive_unit(e)
        cos = [min(max(sum(a * b for a, b in zip(u, w)), -1.0), 1.0) for w in centres]
        target = columns.index(y)
        logits = [p["s"] * (naive_positive(name, p, c) if j == target else c) for j, c in enumerate(cos)]
        total += naive_cross_entropy(logits, target)
    return total / len(labels)


VALUES = st.floats(-2, 2, allow_nan=False, allow_subnormal=False)


@st.composite
def head_case(draw):
    b, d, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    embeddings = draw(st.lists(st.lists(VALUES, min_size=d, max_size=d), min_size=b, max_size=b))
    weights = draw(st.lists(st.lists(VALUES, min_size=d, max_size=d), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b))
    return b, d, n, embeddings, weights, labels, draw(margin_strategy())


def _loaded(head, weights):
    head = head.double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weights, dtype=torch.float64))
    return head


@props(200)
@given(case=head_case())
def test_full_fc_loss_is_the_margin_softmax_cross_entropy(case):
    b, d, n, embeddings, weights, labels, (name, p) = case
    head = _loaded(FullFC(d, n, margin=make_margin(name, **p)), weights)
    got = head(torch.tensor(embeddings, dtype=torch.float64), torch.tensor(labels)).item()
    want = naive_margin_loss(embeddings, weights, labels, name, p)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * p["s"])


@props(150)
@given(case=head_case(), sample_rate=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_partial_fc_loss_is_the_cross_entropy_over_its_sample(case, sample_rate, seed):
    b, d, n, embeddings, weights, labels, (name, p) = case
    head = _loaded(PartialFC(d, n, sample_rate=sample_rate, margin=make_margin(name, **p), seed=seed), weights)
    index, _ = head.sample(torch.tensor(labels))  # the step's sample, drawn again by forward
    index = index.tolist()
    positives = sorted(set(labels))
    size = min(n, max(1, math.ceil(sample_rate * n)))
    assert index == sorted(set(index)) and set(positives) <= set(index)
    assert len(index) == max(size, len(positives))

    x = torch.tensor(embeddings, dtype=torch.float64)
    loss = head(x, torch.tensor(labels))
    want = naive_margin_loss(embeddings, weights, labels, name, p, columns=index)
    assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-9 * p["s"])
    loss.backward()
    unsampled = [r for r in range(n) if r not in index]
    assert bool((head.weight.grad[unsampled] == 0).all())  # only the sampled rows get a gradient

    head.eval()  # evaluation: the loss over every centre, as FullFC
    assert head(x, torch.tensor(labels)).item() == pytest.approx(
        naive_margin_loss(embeddings, weights, labels, name, p), rel=1e-9, abs=1e-9 * p["s"])


def naive_attfc_loss(q, gcc, centres, centre_labels, labels, name, p, mask_own=True):
    """Mean over queries of the cross-entropy of [s * margin(q . gcc) | s * q . centre for every
    container entry that is filled (and, with mask_own, of another identity)], target 0, as a
    differentiable function of q [B, D] (torch scalars, one loop per query and entry)."""
    losses = []
    for i in range(q.shape[0]):
        c0 = torch.clamp(sum(q[i, j] * gcc[i][j] for j in range(len(gcc[i]))), -1.0, 1.0)
        logits = [p["s"] * naive_positive_torch(name, p, c0)]
        for centre, label in zip(centres, centre_labels):
            if label == EMPTY or (mask_own and label == labels[i]):
                continue
            logits.append(p["s"] * sum(q[i, j] * centre[j] for j in range(len(centre))))
        z = torch.stack(logits)
        losses.append(torch.logsumexp(z, 0) - z[0])
    return torch.stack(losses).mean()


def naive_positive_torch(name, p, c):
    """`naive_positive` on a torch scalar (for autograd)."""
    if name == "cosface":
        return c - p["m"]
    m1, m2, m3 = (1.0, p["m"], 0.0) if name == "arcface" else (p["m1"], p["m2"], p["m3"])
    theta_max = (math.pi - m2) / m1
    if float(c.detach()) > math.cos(theta_max):  # the branch is picked on the value
        return torch.cos(m1 * torch.acos(torch.clamp(c, -1 + _EPS, 1 - _EPS)) + m2) - m3
    return c - (math.pi - theta_max) * math.sin(theta_max) - m3


def _units(rows: list[list[float]]) -> list[list[float]]:
    # Unit vectors from free draws; an all-zero draw becomes the first axis.
    return [naive_unit(r) if any(r) else [1.0] + [0.0] * (len(r) - 1) for r in rows]


@st.composite
def attfc_case(draw):
    b, d, q_slots = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    vectors = st.lists(VALUES, min_size=d, max_size=d)
    q = _units(draw(st.lists(vectors, min_size=b, max_size=b)))
    gcc = _units(draw(st.lists(vectors, min_size=b, max_size=b)))
    centres = _units(draw(st.lists(vectors, min_size=q_slots, max_size=q_slots)))
    centre_labels = draw(st.lists(st.sampled_from([EMPTY, 0, 1, 2, 3]), min_size=q_slots, max_size=q_slots))
    labels = draw(st.lists(st.integers(0, 3), min_size=b, max_size=b))
    return q, gcc, centres, centre_labels, labels, draw(margin_strategy()), draw(st.booleans())


@props(200)
@given(case=attfc_case())
def test_attfc_loss_and_gradient_match_the_naive_loss(case):
    q, gcc, centres, centre_labels, labels, (name, p), mask_own = case
    margin = make_margin(name, **p)
    fused_q = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    loss = attfc_loss(fused_q, torch.tensor(gcc, dtype=torch.float64), torch.tensor(centres, dtype=torch.float64),
                      torch.tensor(centre_labels), torch.tensor(labels), margin, mask_own=mask_own)
    loss.backward()
    naive_q = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    want = naive_attfc_loss(naive_q, gcc, centres, centre_labels, labels, name, p, mask_own)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9 * p["s"])
    torch.testing.assert_close(fused_q.grad, naive_q.grad, rtol=1e-7, atol=1e-9 * p["s"])
    if all(label != EMPTY for label in centre_labels):  # a full container may skip the empty-slot pass
        full = attfc_loss(fused_q.detach(), torch.tensor(gcc, dtype=torch.float64),
                          torch.tensor(centres, dtype=torch.float64), torch.tensor(centre_labels),
                          torch.tensor(labels), margin, container_full=True, mask_own=mask_own)
        assert full.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-9 * p["s"])


@props(100)
@given(b=st.integers(1, 4), d=st.integers(1, 4), k=st.integers(1, 3), capacity=st.integers(1, 6),
       data=st.data(), temperature=st.floats(0.25, 4.0))
def test_attfc_head_step_against_the_naive_attention_loss_and_fifo(b, d, k, capacity, data, temperature):
    vectors = st.lists(VALUES.filter(lambda v: abs(v) > 0.01), min_size=d, max_size=d)
    embeddings = data.draw(st.lists(vectors, min_size=b, max_size=b), label="embeddings")
    keys = data.draw(st.lists(st.lists(vectors, min_size=k, max_size=k), min_size=b, max_size=b), label="keys")
    labels = data.draw(st.lists(st.integers(0, 4), min_size=b, max_size=b), label="labels")
    before = data.draw(st.lists(st.integers(0, 4), max_size=capacity), label="earlier labels")
    head = AttFC(d, 5, container_size=capacity, num_keys=k, temperature=temperature, margin="arcface", s=8.0, m=0.3)
    head.double()
    # Earlier steps' GCCs (unit vectors) in the container: its negatives for this step.
    earlier = _units([[float(i + 1)] + [0.5 * (j + 1) for j in range(d - 1)] for i in range(len(before))])
    if before:
        head.container.enqueue(torch.tensor(earlier, dtype=torch.float64), torch.tensor(before))

    loss = head(torch.tensor(embeddings, dtype=torch.float64), torch.tensor(labels),
                torch.tensor(keys, dtype=torch.float64))
    # Reference GCC: softmax over the keys of cos(q, key) / temperature, the weighted raw keys, normalised.
    gcc = []
    for e, ks in zip(embeddings, keys):
        u = naive_unit(e)
        cos = [sum(a * c for a, c in zip(u, naive_unit(key))) / temperature for key in ks]
        top = max(cos)
        w = [math.exp(c - top) for c in cos]
        w = [x / sum(w) for x in w]
        gcc.append(naive_unit([sum(w[j] * ks[j][t] for j in range(k)) for t in range(d)]))
    q = torch.tensor([naive_unit(e) for e in embeddings], dtype=torch.float64)
    want = naive_attfc_loss(q, gcc, earlier, before, labels, "arcface", dict(s=8.0, m=0.3))
    assert loss.item() == pytest.approx(want.item(), rel=1e-7, abs=1e-7)
    # Training mode: the batch's GCCs are enqueued after the loss, the newest `capacity` kept.
    fifo = deque(zip(before, earlier), maxlen=capacity)
    fifo.extend(zip(labels, gcc))
    pointer = int(head.container.pointer)
    got = [(int(head.container.labels[s]), head.container.centres[s].tolist())
           for s in ((pointer + i) % capacity for i in range(capacity)) if int(head.container.labels[s]) != EMPTY]
    assert [label for label, _ in got] == [label for label, _ in fifo]
    for (_, row), (_, ref) in zip(got, fifo):
        assert row == pytest.approx(ref, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- the memory model


@st.composite
def memory_config(draw):
    head = draw(st.sampled_from(["fc", "partial_fc", "attfc"]))
    config = dict(head=head, optimizer=draw(st.sampled_from(["sgd", "adam", "adamw"])),
                  momentum=draw(st.sampled_from([0.0, 0.9])), weight_decay=draw(st.sampled_from([0.0, 5e-4])))
    mixed = head != "attfc" and draw(st.booleans())
    config["dtype"] = "float32" if mixed else draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"]))
    if mixed:
        config["amp_dtype"] = draw(st.sampled_from(["float16", "bfloat16"]))
    if head == "partial_fc":
        config["sample_rate"] = draw(st.floats(0.001, 1.0))
    if head == "attfc":
        if draw(st.booleans()):
            config["container_size"] = draw(st.integers(1, 10**6))
        else:
            config["container_ratio"] = draw(st.floats(0.001, 1.0))
        config["num_keys"] = draw(st.integers(1, 8))
    return config


@props(500)
@given(config=memory_config(), n=st.integers(2, 10**8), b=st.integers(1, 8192), d=st.integers(1, 4096),
       axis=st.sampled_from(["num_classes", "batch_size", "embedding_dim"]), step=st.integers(1, 10**6))
def test_predicted_peak_never_falls_as_n_b_or_d_grow(config, n, b, d, axis, step):
    sizes = dict(num_classes=n, batch_size=b, embedding_dim=d)
    larger = dict(sizes, **{axis: sizes[axis] + (step if axis == "num_classes" else 1 + step % 512)})
    small, big = predict_memory(**sizes, **config), predict_memory(**larger, **config)
    assert big.peak >= small.peak, (axis, sizes, larger, small.peak_phase, big.peak_phase)
    assert big.held >= small.held
