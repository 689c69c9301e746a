"""Partial FC against the full FC, hand-computed SGD steps and a statistical check of its sampling."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attfc_lite.heads import FullFC, make_head
from attfc_lite.heads.partial_fc import PartialFC


def test_sample_rate_one_is_the_full_fc():
    torch.manual_seed(0)
    fc = FullFC(8, 30, s=16.0, m=0.3)
    pfc = PartialFC(8, 30, sample_rate=1.0, s=16.0, m=0.3)
    pfc.weight.data.copy_(fc.weight.data)
    x = torch.randn(10, 8, requires_grad=True)
    y = torch.randint(0, 30, (10,))
    a, b = fc(x, y), pfc(x, y)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    ga, = torch.autograd.grad(a, x)
    gb, = torch.autograd.grad(b, x)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_sample_keeps_every_positive_and_the_right_count():
    head = PartialFC(4, 1000, sample_rate=0.1)
    labels = torch.tensor([5, 999, 5, 0, 421])
    index, target = head.sample(labels)
    assert index.numel() == 100 and torch.equal(index, index.sort().values) and index.unique().numel() == 100
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[target], labels)  # each label's column holds its own centre
    # more positives than the sample size: exactly the positives
    many = torch.arange(0, 1000, 5)  # 200 identities > 100
    index, target = head.sample(many)
    assert torch.equal(index, many) and torch.equal(target, torch.arange(200))


def test_loss_is_the_margin_softmax_over_the_sampled_centres():
    torch.manual_seed(1)
    head = PartialFC(6, 50, sample_rate=0.2, s=10.0, m=0.4)
    x, y = torch.randn(7, 6), torch.randint(0, 50, (7,))
    head.step = 3
    index, target = head.sample(y)
    head.step = 3  # forward samples with the same step, then advances it
    loss = head(x, y)
    assert head.step == 4
    # by hand: cosines to the sampled centres, ArcFace on the target column, cross-entropy
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight[index], dim=1).t()
    logits = 10.0 * cos
    for r, t in enumerate(target.tolist()):
        theta = math.acos(float(cos[r, t].detach()))
        logits[r, t] = 10.0 * math.cos(theta + 0.4)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, target).detach()), rel=1e-5)


def test_non_positives_are_sampled_uniformly():
    head = PartialFC(2, 40, sample_rate=0.25)  # 10 of 40: 1 positive + 9 of the 39 others
    counts = torch.zeros(40)
    trials = 4000
    for step in range(trials):
        head.step = step
        index, _ = head.sample(torch.tensor([7]))
        counts[index] += 1
    assert counts[7] == trials
    others = torch.cat([counts[:7], counts[8:]]) / trials
    # each other centre: probability 9/39; binomial std over 4000 trials ~ 0.0067
    assert float((others - 9 / 39).abs().max()) < 0.03


def test_unsampled_centres_get_zero_gradient_but_sgd_moves_them_by_momentum_and_decay():
    torch.manual_seed(2)
    head = PartialFC(4, 100, sample_rate=0.05)
    lr, mu, wd = 0.1, 0.9, 0.01
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    x, y = torch.randn(3, 4), torch.tensor([1, 2, 3])
    head.step = 0
    index0, _ = head.sample(y)
    head.step = 0
    head(x, y).backward()
    unsampled = [r for r in range(100) if r not in set(index0.tolist())]
    assert float(head.weight.grad[unsampled].abs().max()) == 0.0  # exactly zero gradient
    w0 = head.weight.detach().clone()
    opt.step()
    # step 1 for an unsampled row: buf = 0 + wd * w0; w1 = w0 - lr * buf (weight decay only)
    r = unsampled[0]
    buf1 = wd * w0[r]
    w1 = w0[r] - lr * buf1
    assert torch.allclose(head.weight.detach()[r], w1, atol=1e-7)
    # a second step where row r is again not sampled: buf = mu * buf1 + wd * w1
    opt.zero_grad()
    for step in range(1, 1000):
        head.step = step
        index, _ = head.sample(y)
        if r not in set(index.tolist()):
            break
    head(x, y).backward()
    assert float(head.weight.grad[r].abs().max()) == 0.0
    opt.step()
    buf2 = mu * buf1 + wd * w1
    assert torch.allclose(head.weight.detach()[r], w1 - lr * buf2, atol=1e-7)


def test_sampling_resumes_from_the_state_dict():
    a = PartialFC(4, 200, sample_rate=0.1, seed=3)
    y = torch.tensor([0, 1])
    for _ in range(5):
        a(torch.randn(2, 4), y)
    b = PartialFC(4, 200, sample_rate=0.1, seed=3)
    b.load_state_dict(a.state_dict())
    assert b.step == 5
    assert torch.equal(a.sample(y)[0], b.sample(y)[0])


def test_eval_mode_uses_every_centre_and_bad_rate_is_named():
    head = PartialFC(4, 30, sample_rate=0.1).eval()
    fc = FullFC(4, 30)
    fc.weight.data.copy_(head.weight.data)
    x, y = torch.randn(5, 4), torch.randint(0, 30, (5,))
    assert float(head(x, y).detach()) == pytest.approx(float(fc(x, y).detach()))
    assert head.step == 0
    for bad in (0.0, 1.5, float("nan"), "a tenth"):
        with pytest.raises(ValueError, match="sample_rate"):
            PartialFC(4, 30, sample_rate=bad)
    assert isinstance(make_head("partial_fc", 4, 30, sample_rate=0.5), PartialFC)


def test_plot_sample_has_a_title_axis_labels_and_a_legend_entry_per_colour():
    import matplotlib.pyplot as plt

    from attfc_lite.heads.partial_fc import plot_sample

    head = PartialFC(8, 200, sample_rate=0.1)
    ax = plot_sample(head, torch.tensor([3, 7, 7, 50]))
    assert "3 positives" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 3  # positive, sampled negative, not in this step
    plt.close("all")
