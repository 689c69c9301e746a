"""Tests of attfc_lite.verification against hand-computed cases and naive reference loops."""
from __future__ import annotations

import itertools
import json
import math
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from attfc_lite.verification import (  # noqa: E402
    embed,
    evaluate_verification,
    kfold_accuracy,
    make_pairs,
    plot_roc,
    roc_curve,
    tar_at_far,
    tar_at_far_report,
    verification_summary,
)

# Six pairs, worked by hand. Sorted by score: 0.9 G, 0.8 G, 0.8 I, 0.6 G, 0.4 I, 0.3 I.
HAND_SCORES = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.4, 0.3])
HAND_SAME = torch.tensor([True, True, False, True, False, False])


# --------------------------------------------------------------------------- references


def naive_roc_points(scores, same):
    """(fpr, tpr, threshold) of "same when score >= t" for t = +inf and every distinct score."""
    s = [float(v) for v in scores]
    y = [bool(v) for v in same]
    n_pos, n_neg = sum(y), len(y) - sum(y)
    points = [(0.0, 0.0, math.inf)]
    for t in sorted(set(s), reverse=True):
        tp = sum(1 for si, yi in zip(s, y) if yi and si >= t)
        fp = sum(1 for si, yi in zip(s, y) if not yi and si >= t)
        points.append((fp / n_neg, tp / n_pos, t))
    return points


def naive_tar(scores, same, far):
    """Nearest-FPR rule by brute force: nearest FPR, then lower FPR, then higher TPR."""
    points = naive_roc_points(scores, same)
    best = None
    for fpr, tpr, t in points:
        key = (round(abs(fpr - far), 9), fpr, -tpr)
        if best is None or key < best[0]:
            best = (key, tpr, fpr, t)
    return best[1], best[2], best[3]


def naive_kfold(scores, same, folds=10):
    """The documented protocol written as plain loops: interleaved folds, midpoints, lowest best."""
    s = [float(v) for v in scores]
    y = [bool(v) for v in same]
    accs, thrs = [], []
    for k in range(folds):
        train = [i for i in range(len(s)) if i % folds != k]
        test = [i for i in range(len(s)) if i % folds == k]
        u = sorted(set(s[i] for i in train))
        cands = [u[0] - 1.0] + [u[j] + (u[j + 1] - u[j]) / 2.0 for j in range(len(u) - 1)] + [u[-1] + 1.0]
        best_t, best_acc = None, -1.0
        for t in cands:
            acc = sum((s[i] > t) == y[i] for i in train) / len(train)
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(sum((s[i] > best_t) == y[i] for i in test) / len(test))
        thrs.append(best_t)
    return accs, thrs


# --------------------------------------------------------------------------- ROC


def test_roc_curve_hand_case():
    roc = roc_curve(HAND_SCORES, HAND_SAME)
    third = 1.0 / 3.0
    np.testing.assert_allclose(roc["fpr"], [0, 0, third, third, 2 * third, 1])
    np.testing.assert_allclose(roc["tpr"], [0, third, 2 * third, 1, 1, 1])
    assert roc["thresholds"][0] == math.inf
    np.testing.assert_allclose(roc["thresholds"][1:], [0.9, 0.8, 0.6, 0.4, 0.3], rtol=1e-6)
    # Mann-Whitney by hand: 0.9 beats 3, 0.8 ties one and beats 2, 0.6 beats 2 -> 7.5 / 9
    assert roc["auc"] == pytest.approx(7.5 / 9)


def test_roc_curve_ties_and_auc_match_naive():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 12, (150,), generator=gen).float() / 10  # many ties
    same = torch.rand(150, generator=gen) < 0.4
    roc = roc_curve(scores, same)
    ref = naive_roc_points(scores, same)
    assert len(roc["fpr"]) == len(ref) == len(set(scores.tolist())) + 1
    np.testing.assert_allclose(roc["fpr"], [p[0] for p in ref])
    np.testing.assert_allclose(roc["tpr"], [p[1] for p in ref])
    assert np.all(np.diff(roc["thresholds"]) < 0)
    pos = scores[same].tolist()
    neg = scores[~same].tolist()
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert roc["auc"] == pytest.approx(wins / (len(pos) * len(neg)))


def test_roc_curve_needs_both_kinds():
    with pytest.raises(ValueError, match="is_same"):
        roc_curve(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_same"):
        roc_curve(torch.rand(5), torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------- TAR @ FAR


def test_tar_at_far_hand_case():
    # 4 genuine, 5 impostor. ROC points (fpr, tpr, t): (0,0,inf) (0,.25,.9) (.2,.25,.8) (.2,.5,.7)
    # (.4,.5,.6) (.4,.75,.5) (.6,.75,.4) (.8,.75,.3) (.8,1,.2) (1,1,.1)
    scores = torch.tensor([0.9, 0.7, 0.5, 0.2, 0.8, 0.6, 0.4, 0.3, 0.1])
    same = torch.tensor([True] * 4 + [False] * 5)
    rep = tar_at_far_report(scores, same, fars=(0.2, 0.3, 0.5, 0.7, 0.85, 0.1), rule="nearest")
    assert rep["2e-1"]["tar"] == pytest.approx(0.5)  # FPR 0.2 exactly: the higher of its two TPRs
    assert rep["2e-1"]["threshold"] == pytest.approx(0.7)
    assert rep["3e-1"]["tar"] == pytest.approx(0.5)  # 0.2 and 0.4 equally near: lower FPR wins
    assert rep["3e-1"]["far_achieved"] == pytest.approx(0.2)
    assert rep["5e-1"]["tar"] == pytest.approx(0.75)  # 0.4 vs 0.6: lower wins
    assert rep["5e-1"]["threshold"] == pytest.approx(0.5)
    assert rep["7e-1"]["tar"] == pytest.approx(0.75)
    assert rep["7e-1"]["threshold"] == pytest.approx(0.4)
    assert rep["8.5e-1"]["tar"] == pytest.approx(1.0)  # 0.85 is nearest to 0.8
    assert rep["1e-1"]["tar"] is None  # needs 10 impostor pairs, has 5
    assert rep["1e-1"]["note"] == "too few impostor pairs: 5 < 10 needed for FAR 1e-1"
    assert rep["2e-1"]["note"] is None
    assert tar_at_far(scores, same, fars=(0.2, 0.1), rule="nearest") == {"2e-1": pytest.approx(0.5), "1e-1": None}
    # The nearest point for 0.7 is at FPR 0.8: above the target, and said so.
    assert rep["7e-1"]["far_achieved"] == pytest.approx(0.6)
    assert rep["8.5e-1"]["far_achieved"] == pytest.approx(0.8) and not rep["8.5e-1"]["above_target"]
    above = tar_at_far_report(scores, same, fars=(0.35,), rule="nearest")["3.5e-1"]
    assert above["far_achieved"] == pytest.approx(0.4) and above["above_target"] and "above the target" in above["note"]


def naive_tar_at_most(scores, same, far):
    """The conservative rule by brute force: the highest TPR among points with FPR <= far."""
    best = None
    for fpr, tpr, t in naive_roc_points(scores, same):
        if fpr <= far + 1e-12 and (best is None or tpr > best[0]):
            best = (tpr, fpr, t)
    return best


def test_tar_at_far_at_most_never_reads_above_the_target():
    # Same hand case: the points within FPR 0.3 are (0, .25) and (.2, .5): TAR 0.5 at FPR 0.2;
    # within 0.7: (.6, .75); within 0.85: (.8, 1).
    scores = torch.tensor([0.9, 0.7, 0.5, 0.2, 0.8, 0.6, 0.4, 0.3, 0.1])
    same = torch.tensor([True] * 4 + [False] * 5)
    rep = tar_at_far_report(scores, same, fars=(0.3, 0.7, 0.85, 0.35))
    assert (rep["3e-1"]["tar"], rep["3e-1"]["far_achieved"], rep["3e-1"]["impostors_accepted"]) == (0.5, 0.2, 1)
    assert rep["7e-1"]["tar"] == pytest.approx(0.75) and rep["7e-1"]["far_achieved"] == pytest.approx(0.6)
    assert rep["8.5e-1"]["tar"] == pytest.approx(1.0)
    assert rep["3.5e-1"]["tar"] == pytest.approx(0.5)  # the nearest rule would read 0.75 at FPR 0.4
    assert not any(r["above_target"] for r in rep.values())


def test_tar_at_far_at_most_when_the_nearest_point_is_just_above():
    # 2000 impostors; target FAR 1.4e-3 (2.8 impostors). Two impostors (FPR 1e-3) let 10 % of
    # the genuine pairs in; the 3rd impostor sits above the other 90 %, so the nearest ROC point
    # (FPR 1.5e-3, 3 impostors) accepts every genuine pair, above the target.
    genuine = torch.cat([torch.full((10,), 0.95), torch.full((90,), 0.80)])
    impostors = torch.cat([torch.tensor([0.99, 0.97, 0.90]), torch.linspace(-0.5, 0.5, 1997)])
    scores = torch.cat([genuine, impostors])
    same = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(2000, dtype=torch.bool)])
    conservative = tar_at_far_report(scores, same, fars=(1.4e-3,))["1.4e-3"]
    assert conservative["tar"] == pytest.approx(0.1) and conservative["far_achieved"] == pytest.approx(1e-3)
    nearest = tar_at_far_report(scores, same, fars=(1.4e-3,), rule="nearest")["1.4e-3"]
    assert nearest["tar"] == pytest.approx(1.0) and nearest["far_achieved"] == pytest.approx(1.5e-3)
    assert nearest["above_target"]


def test_tar_at_far_at_most_matches_naive_reference_with_ties():
    gen = torch.Generator().manual_seed(5)
    same = torch.rand(500, generator=gen) < 0.4
    scores = torch.round((torch.randn(500, generator=gen) + 1.5 * same.float()) * 8) / 8
    fars = (0.01, 0.03, 0.1, 0.25, 0.5)
    rep = tar_at_far_report(scores, same, fars=fars)
    for far in fars:
        tar, fpr, t = naive_tar_at_most(scores, same, far)
        key = next(k for k in rep if float(k) == far)
        assert (rep[key]["tar"], rep[key]["far_achieved"]) == (pytest.approx(tar), pytest.approx(fpr)), key
        assert rep[key]["threshold"] == pytest.approx(t), key


def test_tar_at_far_keys_are_unique_and_exact():
    rep = tar_at_far_report(HAND_SCORES, HAND_SAME, fars=(1e-3, 1.4e-3, 1.5e-3, 0.25, 1.0))
    assert list(rep) == ["1e-3", "1.4e-3", "1.5e-3", "2.5e-1", "1e0"]
    with pytest.raises(ValueError, match="fars"):
        tar_at_far(HAND_SCORES, HAND_SAME, fars=(1e-3, 0.001))


def test_tar_at_far_matches_naive_reference_with_ties():
    gen = torch.Generator().manual_seed(2)
    same = torch.rand(400, generator=gen) < 0.5
    scores = torch.round((torch.randn(400, generator=gen) + 1.5 * same.float()) * 8) / 8
    fars = (0.01, 0.05, 0.1, 0.25, 0.5)
    rep = tar_at_far_report(scores, same, fars=fars, rule="nearest")
    for far in fars:
        key = next(k for k in rep if float(k) == far)
        tar, fpr, t = naive_tar(scores, same, far)
        assert rep[key]["tar"] == pytest.approx(tar), key
        assert rep[key]["far_achieved"] == pytest.approx(fpr), key
        assert rep[key]["threshold"] == pytest.approx(t), key


def test_tar_at_far_default_keys_and_too_few_impostors():
    gen = torch.Generator().manual_seed(3)
    same = torch.cat([torch.ones(1000, dtype=torch.bool), torch.zeros(5000, dtype=torch.bool)])
    scores = torch.randn(6000, generator=gen) + 2.0 * same.float()
    res = tar_at_far(scores, same)
    assert list(res) == ["1e-2", "1e-3", "1e-4"]
    assert res["1e-4"] is None
    # 5000 impostors: FPR 1e-2 and 1e-3 are exact (50 and 5 impostors accepted); the highest TPR
    # there accepts every genuine score above the 51st (6th) highest impostor score
    neg = torch.sort(scores[~same], descending=True).values
    pos = scores[same]
    assert res["1e-2"] == pytest.approx(float((pos > neg[50]).double().mean()))
    assert res["1e-3"] == pytest.approx(float((pos > neg[5]).double().mean()))
    rep = tar_at_far_report(scores, same)
    assert rep["1e-4"]["note"] == "too few impostor pairs: 5000 < 10000 needed for FAR 1e-4"
    assert rep["1e-3"]["note"] is None


def test_tar_at_far_rejects_bad_far():
    with pytest.raises(ValueError, match="fars"):
        tar_at_far(HAND_SCORES, HAND_SAME, fars=(0.0,))
    with pytest.raises(ValueError, match="fars"):
        tar_at_far(HAND_SCORES, HAND_SAME, fars=(1.5,))


# --------------------------------------------------------------------------- k-fold accuracy


def test_kfold_matches_naive_reference():
    gen = torch.Generator().manual_seed(4)
    same = torch.rand(230, generator=gen) < 0.5
    scores = torch.round((torch.randn(230, generator=gen) + same.float()) * 5) / 5  # ties
    got = kfold_accuracy(scores, same)
    accs, thrs = naive_kfold(scores.double().tolist(), same.tolist())
    np.testing.assert_allclose(got["fold_accuracies"], accs)
    np.testing.assert_allclose(got["thresholds"], thrs)
    assert got["accuracy_mean"] == pytest.approx(sum(accs) / len(accs))
    mean = sum(accs) / len(accs)
    assert got["accuracy_std"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)))


def test_kfold_hand_case_strict_threshold_and_lowest_tie():
    # Two interleaved folds. Fold 0 = even positions, fold 1 = odd positions.
    scores = torch.tensor([0.25, 0.125, 0.5, 0.625, 0.75, 0.375, 1.0, 0.875], dtype=torch.float64)
    same = torch.tensor([False, False, True, True, False, False, True, True])
    res = kfold_accuracy(scores, same, folds=2)
    # Fold 0 trains on the odd positions (0.125 F, 0.375 F, 0.625 T, 0.875 T): separable at 0.5.
    # Held out: 0.25 F right, 0.5 T wrong (0.5 is not > 0.5), 0.75 F wrong, 1.0 T right -> 0.5.
    # Fold 1 trains on the even positions (0.25 F, 0.5 T, 0.75 F, 1.0 T): 0.375 and 0.875 both
    # reach 3/4; the lower, 0.375, is kept. Held out: all four right (0.375 F is not > 0.375) -> 1.0.
    assert res["thresholds"] == [0.5, 0.375]
    assert res["fold_accuracies"] == [0.5, 1.0]
    assert res["accuracy_mean"] == 0.75 and res["accuracy_std"] == 0.25


def test_kfold_threshold_is_best_on_training_folds():
    gen = torch.Generator().manual_seed(5)
    same = torch.rand(300, generator=gen) < 0.5
    scores = torch.randn(300, generator=gen) + 1.2 * same.float()
    got = kfold_accuracy(scores, same, folds=5)
    s, y = scores.double().numpy(), same.numpy()
    grid = np.linspace(-5, 6, 4001)
    for k, t in enumerate(got["thresholds"]):
        train = np.arange(300) % 5 != k
        acc_t = np.mean((s[train] > t) == y[train])
        best_grid = max(np.mean((s[train] > g) == y[train]) for g in grid)
        assert acc_t >= best_grid - 1e-12


def test_kfold_separable_and_random():
    same = torch.tensor([True, False] * 100)
    scores = torch.where(same, 0.5 + torch.rand(200) * 0.4, -0.5 + torch.rand(200) * 0.4)
    res = kfold_accuracy(scores, same)
    assert res["accuracy_mean"] == 1.0 and res["accuracy_std"] == 0.0
    assert len(res["fold_accuracies"]) == 10 and len(res["thresholds"]) == 10
    assert all(-0.1 <= t <= 0.5 for t in res["thresholds"])

    gen = torch.Generator().manual_seed(6)
    same = torch.arange(3000) < 1500
    scores = torch.rand(3000, generator=gen)
    assert abs(kfold_accuracy(scores, same)["accuracy_mean"] - 0.5) < 0.04


def test_kfold_rejects_bad_input():
    with pytest.raises(ValueError, match="folds"):
        kfold_accuracy(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="folds"):
        kfold_accuracy(torch.rand(50), torch.ones(50, dtype=torch.bool), folds=1)
    with pytest.raises(TypeError, match="is_same"):
        kfold_accuracy(torch.rand(50), torch.rand(50))


# --------------------------------------------------------------------------- pairs


def _check_pair_properties(labels, a, b, same, num_pairs):
    assert a.dtype == torch.int64 and b.dtype == torch.int64 and same.dtype == torch.bool
    assert len(a) == len(b) == len(same) == num_pairs
    assert int(same.sum()) == num_pairs // 2
    assert bool((labels[a][same] == labels[b][same]).all())
    assert bool((labels[a][~same] != labels[b][~same]).all())
    assert bool((a != b).all())


def test_make_pairs_properties_and_uniqueness():
    # 100 identities of 10 images: both pools are large, the sampling path that rejects
    labels = torch.arange(100).repeat_interleave(10)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    a, b, same = make_pairs(labels, 401, seed=3)
    _check_pair_properties(labels, a, b, same, 401)
    keys = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    assert len(keys) == 401


def test_make_pairs_deterministic_and_seeded():
    labels = torch.arange(30).repeat_interleave(4)
    first = make_pairs(labels, 200, seed=7)
    again = make_pairs(labels, 200, seed=7)
    other = make_pairs(labels, 200, seed=8)
    for x, y in zip(first, again):
        assert torch.equal(x, y)
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


def test_make_pairs_small_pools_use_every_pair():
    # identity sizes 5, 7, 3 (+ one singleton): every genuine pair, found by brute force
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 3 + [3])[torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    expected = {
        (i, j) for i, j in itertools.combinations(range(16), 2) if labels[i] == labels[j]
    }
    assert len(expected) == 10 + 21 + 3
    a, b, same = make_pairs(labels, 2 * len(expected), seed=0)
    _check_pair_properties(labels, a, b, same, 2 * len(expected))
    got = {(x, y) for x, y in zip(a[same].tolist(), b[same].tolist())}
    assert got == expected

    # one big identity and one other image: 40 impostor pairs exist, 20 are asked for
    labels = torch.tensor([0] * 40 + [1])
    a, b, same = make_pairs(labels, 40, seed=0)
    _check_pair_properties(labels, a, b, same, 40)
    imp = {(x, y) for x, y in zip(a[~same].tolist(), b[~same].tolist())}
    assert len(imp) == 20


def test_make_pairs_more_than_exist_repeats_after_using_all():
    labels = torch.tensor([0, 0, 1, 1])  # 2 genuine pairs, 4 impostor pairs exist
    with pytest.warns(UserWarning, match="repeat"):
        a, b, same = make_pairs(labels, 20, seed=0)
    _check_pair_properties(labels, a, b, same, 20)
    assert {(x, y) for x, y in zip(a[same].tolist(), b[same].tolist())} == {(0, 1), (2, 3)}
    assert {(x, y) for x, y in zip(a[~same].tolist(), b[~same].tolist())} == {(0, 2), (0, 3), (1, 2), (1, 3)}


def test_make_pairs_errors():
    with pytest.raises(ValueError, match="2 or more images"):
        make_pairs(torch.arange(10), 10)
    with pytest.raises(ValueError, match="2 identities"):
        make_pairs(torch.zeros(10, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="num_pairs"):
        make_pairs(torch.tensor([0, 0, 1, 1]), 1)
    with pytest.raises(ValueError, match="labels"):
        make_pairs(torch.zeros(2, 3, dtype=torch.long), 10)
    with pytest.raises(TypeError, match="labels"):
        make_pairs(torch.tensor([0.0, 0.0, 1.0]), 10)


# --------------------------------------------------------------------------- embed


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 4 * 5, 6))


def test_embed_flip_sum_normalise_matches_manual():
    model = _tiny_model()
    model.train()
    model[1].eval()  # a submodule set to eval on purpose must stay so
    images = torch.rand(7, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    lin = model[2]

    def raw(x):
        return x.reshape(len(x), -1) @ lin.weight.detach().T + lin.bias.detach()

    mirrored = images[:, :, :, [4, 3, 2, 1, 0]]
    summed = raw(images) + raw(mirrored)
    expected = summed / summed.pow(2).sum(1, keepdim=True).sqrt()
    got = embed(model, images, batch_size=3)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and not got.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert model.training and model[0].training and not model[1].training and model[2].training

    plain = raw(images)
    torch.testing.assert_close(
        embed(model, images, flip=False), plain / plain.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6
    )


def test_embed_rejects_bad_images():
    model = _tiny_model()
    with pytest.raises(ValueError, match="images"):
        embed(model, torch.rand(3, 4, 5))
    with pytest.raises(TypeError, match="images"):
        embed(model, torch.zeros(2, 3, 4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        embed(model, torch.rand(2, 3, 4, 5), batch_size=0)


# --------------------------------------------------------------------------- end to end


class OneHotPlusNoise(nn.Module):
    """Reads the label one-hot and a noise vector that the toy images carry in row 0."""

    def __init__(self, k: int, noise_scale: float) -> None:
        super().__init__()
        self.k, self.noise_scale = k, noise_scale

    def forward(self, x):
        return x[:, 0, 0, : self.k] + self.noise_scale * (x[:, 1, 0, : self.k] - 0.5)


def _toy_world(k=8, per_id=12, seed=0):
    """Images whose row 0 holds the label one-hot mirrored (so a flip keeps it) and noise scaled by 1 - quality."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(per_id)
    n = labels.numel()
    quality = torch.rand(n, generator=gen)
    images = torch.zeros(n, 3, 2, 2 * k)
    images[torch.arange(n), 0, 0, labels] = 1.0
    images[torch.arange(n), 0, 0, 2 * k - 1 - labels] = 1.0
    noise = torch.rand(n, 2 * k, generator=gen) - 0.5
    images[:, 1, 0, :] = 0.5 + noise * (1.0 - quality)[:, None]
    return images, labels, quality


def test_evaluate_verification_end_to_end():
    images, labels, quality = _toy_world()
    clean = evaluate_verification(OneHotPlusNoise(8, 0.0), images, labels, num_pairs=1000)
    assert clean["accuracy_mean"] == 1.0 and clean["auc"] == pytest.approx(1.0)
    assert clean["num_pairs"] == 1000
    assert clean["tar_at_far"]["1e-2"] == pytest.approx(1.0)
    assert clean["tar_at_far"]["1e-3"] is None and clean["tar_at_far"]["1e-4"] is None  # 500 impostors

    res = evaluate_verification(OneHotPlusNoise(8, 6.0), images, labels, qualities=quality, num_pairs=1000, batch_size=17)
    json.dumps(res, allow_nan=False)
    assert set(res) >= {"num_pairs", "accuracy_mean", "accuracy_std", "tar_at_far", "auc", "roc", "by_quality"}
    assert 0.6 < res["accuracy_mean"] < 1.0
    fpr, tpr = res["roc"]["fpr"], res["roc"]["tpr"]
    assert len(fpr) == len(tpr) <= 510 and fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert all(isinstance(v, float) for v in fpr)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    high, low = res["by_quality"]["high"], res["by_quality"]["low"]
    assert high["num_pairs"] + low["num_pairs"] == 1000 and abs(high["num_pairs"] - low["num_pairs"]) <= 1
    assert high["mean_quality"] > low["mean_quality"]
    assert high["accuracy_mean"] > low["accuracy_mean"]  # less noise, better verification

    text = verification_summary(res)
    assert f"{res['accuracy_mean']:.3f}" in text and "1e-4" in text and "n/a" in text


def test_evaluate_verification_rejects_mismatched_inputs():
    images, labels, quality = _toy_world()
    with pytest.raises(ValueError, match="labels"):
        evaluate_verification(OneHotPlusNoise(8, 0.0), images, labels[:-1])
    with pytest.raises(ValueError, match="qualities"):
        evaluate_verification(OneHotPlusNoise(8, 0.0), images, labels, qualities=quality[:-1])


def test_verification_summary_rounds():
    res = {
        "num_pairs": 6000,
        "accuracy_mean": 0.987654,
        "accuracy_std": 0.0123456,
        "auc": 0.99,
        "tar_at_far": {"1e-2": 0.91234, "1e-4": None},
        "tar_at_far_notes": {"1e-4": "too few impostor pairs: 3000 < 10000 needed for FAR 1e-4"},
    }
    text = verification_summary(res)
    assert "0.988 ± 0.012" in text
    assert "TAR@FAR=1e-2: 0.912" in text
    assert "3000 < 10000" in text
    assert "0.98765" not in text


def test_plot_roc_returns_axes():
    images, labels, _ = _toy_world()
    results = [
        evaluate_verification(OneHotPlusNoise(8, s), images, labels, num_pairs=400) for s in (2.0, 6.0)
    ]
    ax = plot_roc(results, labels=["clean", "noisy"])
    try:
        assert isinstance(ax, matplotlib.axes.Axes)
        assert ax.get_xscale() == "log"
        assert ax.get_xlim() == pytest.approx((1e-4, 1.0))
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("clean") for t in legend) and any(t.startswith("noisy") for t in legend)
        ax2 = plot_roc(results[0])
        assert isinstance(ax2, matplotlib.axes.Axes)
        with pytest.raises(ValueError, match="labels"):
            plot_roc(results, labels=["only one"])
    finally:
        plt.close("all")


def test_evaluate_caps_pairs_at_what_the_images_hold():
    # 4 identities x 3 images: 4 * C(3, 2) = 12 distinct genuine pairs, so at most 24 pairs.
    labels = torch.arange(4).repeat_interleave(3)
    images = torch.rand(12, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "some pairs repeat" warning
        res = evaluate_verification(model, images, labels, num_pairs=1000)
    assert res["num_genuine"] == 12 and res["num_pairs"] == 24


def test_evaluate_caps_pairs_by_the_impostor_pool_too():
    # One identity with 40 images and two with 2: 780 + 2 genuine pairs but only
    # (44^2 - 40^2 - 2^2 - 2^2) / 2 = 164 impostor pairs, so at most 2 * 164 pairs.
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.tensor([1, 1, 2, 2])])
    images = torch.rand(44, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "some pairs repeat" warning
        res = evaluate_verification(model, images, labels, num_pairs=5000)
    assert res["num_impostor"] == 164 and res["num_pairs"] == 328


def test_evaluate_rejects_negative_labels_by_name():
    images = torch.rand(6, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8))
    with pytest.raises(ValueError, match="labels must be identity ids >= 0"):
        evaluate_verification(model, images, torch.tensor([-1, -1, 0, 0, 1, 1]), num_pairs=10)


def test_threshold_separates_adjacent_floats():
    # Two distinct scores one float apart: their midpoint rounds onto one of them. The rule
    # "same when score > t" must still separate them, so accuracy 1.0 is reachable.
    lo = np.float64(0.3)
    hi = np.nextafter(lo, np.inf)
    assert lo + (hi - lo) / 2.0 in (lo, hi)  # the case under test
    scores = torch.tensor([lo, hi] * 10, dtype=torch.float64)
    same = torch.tensor([False, True] * 10)
    res = kfold_accuracy(scores, same)
    assert res["accuracy_mean"] == 1.0
    assert all(lo <= t < hi for t in res["thresholds"])
    # the same at float32 precision, the scores' usual dtype
    lo32 = np.float32(0.7)
    hi32 = np.nextafter(lo32, np.float32(1))
    res32 = kfold_accuracy(torch.tensor([lo32, hi32] * 10), same)
    assert res32["accuracy_mean"] == 1.0


def test_summary_and_roc_markers_use_the_achieved_far():
    images, labels, _ = _toy_world(k=20, per_id=12)
    res = evaluate_verification(OneHotPlusNoise(20, 6.0), images, labels, num_pairs=6000)
    assert set(res["far_achieved"]) == set(res["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    key = "1e-2"
    assert res["far_achieved"][key] <= 1e-2
    assert res["impostors_accepted"][key] == round(res["far_achieved"][key] * res["num_impostor"])
    assert f"at FAR {res['far_achieved'][key]:.2g}" in verification_summary(res)
    ax = plot_roc(res)
    try:
        markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
        xs = sorted(markers[0].get_xdata())
        want = sorted(v for k, v in res["far_achieved"].items() if v and res["tar_at_far"][k] is not None)
        assert xs == pytest.approx(want)
    finally:
        plt.close("all")
