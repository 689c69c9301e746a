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

from attfc_lite.checks import ArgumentError  # noqa: E402
from attfc_lite.verification import (  # noqa: E402
    embed,
    evaluate_verification,
    kfold_accuracy,
    FAR_CONVENTION,
    all_pairs_verification,
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


def naive_folds(same, folds=10):
    """Stratified folds as documented: genuine pairs dealt round the folds in their order, then the
    impostors, continuing from the fold after the last genuine one."""
    y = [bool(v) for v in same]
    n_gen = sum(y)
    fold, genuine_seen, impostor_seen = [], 0, 0
    for is_genuine in y:
        if is_genuine:
            fold.append(genuine_seen % folds)
            genuine_seen += 1
        else:
            fold.append((n_gen + impostor_seen) % folds)
            impostor_seen += 1
    return fold


def naive_kfold(scores, same, folds=10, fold=None):
    """The documented protocol written as plain loops: stratified folds (or `fold`, one per pair),
    midpoints, lowest best."""
    s = [float(v) for v in scores]
    y = [bool(v) for v in same]
    fold = naive_folds(y, folds) if fold is None else fold
    accs, thrs = [], []
    for k in range(folds):
        train = [i for i in range(len(s)) if fold[i] != k]
        test = [i for i in range(len(s)) if fold[i] == k]
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
    fold = np.array(naive_folds(same.tolist(), 5))
    for k, t in enumerate(got["thresholds"]):
        train = fold != k
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


def test_kfold_folds_hold_both_kinds_whatever_the_order():
    # Genuine and impostor pairs alternate: with folds assigned as pair i -> fold i % 2, fold 0
    # held only genuine pairs and fold 1 only impostors, and each threshold was fitted on one
    # kind alone (accuracy 0 on both folds). Stratified, the genuine pairs (positions 0, 2, 4, 6)
    # go to folds 0, 1, 0, 1 and the impostors (positions 1, 3, 5, 7) continue from fold
    # 4 % 2 = 0: fold 0 = positions {0, 1, 4, 5}, fold 1 = positions {2, 3, 6, 7}.
    scores = torch.tensor([0.875, 0.125, 0.75, 0.375, 0.4375, 0.625, 0.8125, 0.25], dtype=torch.float64)
    same = torch.tensor([True, False] * 4)
    res = kfold_accuracy(scores, same, folds=2)
    # Fold 0 trains on fold 1 (0.25 F, 0.375 F, 0.75 T, 0.8125 T): separable, midpoint 0.5625.
    # Held out: 0.875 T right, 0.125 F right, 0.4375 T wrong, 0.625 F wrong -> 0.5.
    # Fold 1 trains on fold 0 (0.125 F, 0.4375 T, 0.625 F, 0.875 T): 0.28125 and 0.75 both reach
    # 3/4, the lower is kept. Held out: 0.75 T, 0.8125 T, 0.25 F right, 0.375 F wrong -> 0.75.
    assert res["thresholds"] == [0.5625, 0.28125]
    assert res["fold_accuracies"] == [0.5, 0.75]
    assert res["accuracy_mean"] == 0.625 and res["accuracy_std"] == 0.125


def test_kfold_separable_scores_score_one_in_any_order():
    # Genuine pairs exactly every 10th: the interleaved folds put them all in fold 0 (0.9 overall
    # on perfectly separable scores); stratified, every fold has 2 genuine and 18 impostor pairs.
    same = torch.arange(200) % 10 == 0
    scores = torch.where(same, 1.0, 0.0) + torch.rand(200, generator=torch.Generator().manual_seed(1)) * 0.5
    for order in (torch.arange(200), torch.argsort(same.int(), stable=True), torch.argsort(scores)):
        res = kfold_accuracy(scores[order], same[order])
        assert res["fold_accuracies"] == [1.0] * 10, order[:5]


def test_kfold_genuine_first_keeps_the_interleaved_folds():
    # make_pairs gives genuine pairs first: there the stratified folds are pair i -> fold i % 10,
    # so the course's stored accuracies are unchanged (see also test_kfold_accuracy_is_unchanged).
    gen = torch.Generator().manual_seed(9)
    same = torch.arange(263) < 131
    scores = torch.round((torch.randn(263, generator=gen) + same.float()) * 4) / 4
    assert naive_folds(same.tolist()) == [i % 10 for i in range(263)]
    got = kfold_accuracy(scores, same)
    accs, thrs = naive_kfold(scores.double().tolist(), same.tolist(), fold=[i % 10 for i in range(263)])
    assert got["fold_accuracies"] == accs and got["thresholds"] == thrs


@pytest.mark.parametrize("n_gen, n_imp, folds", [(9, 100, 10), (100, 9, 10), (10, 2, 3), (0, 40, 2)])
def test_kfold_refuses_fewer_pairs_of_a_kind_than_folds(n_gen, n_imp, folds):
    same = torch.cat([torch.ones(n_gen, dtype=torch.bool), torch.zeros(n_imp, dtype=torch.bool)])
    with pytest.raises(ArgumentError, match=rf"^is_same holds {n_gen} genuine \(True\) and {n_imp} impostor "
                                            rf"\(False\) pairs, but each of the folds={folds} folds needs"):
        kfold_accuracy(torch.rand(n_gen + n_imp), same, folds=folds)
    if min(n_gen, n_imp) >= 2:  # enough of each for fewer folds
        assert len(kfold_accuracy(torch.rand(n_gen + n_imp), same, folds=min(n_gen, n_imp))["thresholds"]) \
            == min(n_gen, n_imp)


def test_kfold_rejects_bad_input():
    with pytest.raises(ValueError, match="folds"):
        kfold_accuracy(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ArgumentError, match="^folds must be"):
        kfold_accuracy(torch.rand(50), torch.arange(50) % 2 == 0, folds=2.5)
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
    # TAR@FAR now reads all 96 * 95 / 2 pairs: 8 * C(12, 2) = 528 genuine, 4032 impostor
    assert (clean["num_genuine_all"], clean["num_impostor_all"]) == (528, 4032)
    assert clean["tar_at_far"]["1e-2"] == 1.0 and clean["tar_at_far"]["1e-3"] == 1.0
    assert clean["tar_at_far"]["1e-4"] is None  # 4032 < 10000 impostor pairs
    assert clean["tar_at_far_notes"]["1e-4"] == "too few impostor pairs: 4032 < 10000 needed for FAR 1e-4"

    res = evaluate_verification(OneHotPlusNoise(8, 6.0), images, labels, qualities=quality, num_pairs=1000, batch_size=17)
    json.dumps(res, allow_nan=False)
    assert set(res) >= {"num_pairs", "num_genuine", "num_impostor", "accuracy_mean", "accuracy_std", "tar_at_far",
                        "far_achieved", "impostors_accepted", "genuine_accepted", "far_thresholds",
                        "tar_at_far_notes", "num_genuine_all", "num_impostor_all", "far_convention", "auc", "roc",
                        "by_quality"}
    assert res["far_convention"] == FAR_CONVENTION
    assert 0.6 < res["accuracy_mean"] < 1.0
    fpr, tpr = res["roc"]["fpr"], res["roc"]["tpr"]
    assert len(fpr) == len(tpr) <= 350 and fpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
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
        # the FAR axis starts below every operating point, by at most about a decade and a half
        xs = [x for line in ax.get_lines() if line.get_marker() not in ("None", "") for x in line.get_xdata()]
        lowest = min(xs + [1e-3])
        left, right = ax.get_xlim()
        assert right == 1.0 and lowest / 15 < left <= lowest / 1.5 and math.log10(left) == round(math.log10(left))
        assert ax.get_ylim() == pytest.approx((0.0, 1.01))
        assert ax.get_title() and "FAR" in ax.get_xlabel() and "TAR" in ax.get_ylabel()
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




# --------------------------------------------------------------------------- all pairs


def naive_all_pairs(emb, labels):
    """(genuine, impostor) cosine scores of every unordered pair of different images, by a double loop."""
    rows = [[float(v) for v in row] for row in emb]
    ids = [int(v) for v in labels]
    genuine, impostor = [], []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            dot = sum(a * b for a, b in zip(rows[i], rows[j]))
            cos = dot / (math.sqrt(sum(a * a for a in rows[i])) * math.sqrt(sum(b * b for b in rows[j])))
            (genuine if ids[i] == ids[j] else impostor).append(cos)
    return genuine, impostor


def naive_operating_point(genuine, impostor, far):
    """Brute force over every threshold t in {+inf} and all scores, accepting score >= t: among the
    thresholds that accept at most far * n_impostor impostor pairs, the one accepting the most
    genuine pairs. Returns (genuine accepted, impostor accepted)."""
    best = (0, 0)
    for t in set(genuine) | set(impostor):
        fp = sum(1 for s in impostor if s >= t)
        if fp <= far * len(impostor) + 1e-9:
            tp = sum(1 for s in genuine if s >= t)
            best = max(best, (tp, fp))
    return best


def naive_auc(genuine, impostor):
    wins = sum(1.0 if g > i else 0.5 if g == i else 0.0 for g in genuine for i in impostor)
    return wins / (len(genuine) * len(impostor))


def _uneven_labels(sizes, seed):
    labels = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(sizes)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def _check_against_naive(res, genuine, impostor, fars, tol=0.0):
    """`tol`: how far the naive loop's float scores may sit from the library's (0: exact arithmetic)."""
    assert (res["num_genuine"], res["num_impostor"]) == (len(genuine), len(impostor))
    for far in fars:
        key = next(k for k in res["tar_at_far"] if float(k) == far)
        tp, fp = naive_operating_point(genuine, impostor, far)
        assert (res["genuine_accepted"][key], res["impostors_accepted"][key]) == (tp, fp), key
        assert res["tar_at_far"][key] == tp / len(genuine), key
        assert res["far_achieved"][key] == fp / len(impostor) and res["far_achieved"][key] <= far, key
        # the threshold is an impostor score and accepts exactly these pairs under "score > threshold"
        t = res["thresholds"][key]
        if t is not None:
            assert sum(s > t + tol for s in genuine) == tp and sum(s > t + tol for s in impostor) == fp, key
            assert any(abs(s - t) <= tol for s in impostor), key


@pytest.mark.parametrize("chunk_elements, tile", [(None, None), (50, 4)])
def test_all_pairs_matches_a_naive_double_loop(chunk_elements, tile, monkeypatch):
    # 9 identities of uneven sizes (one singleton), shuffled: 46 images, float64 embeddings.
    # With tiny chunks and tiles, the identities of 8 and 10 images take the path for an
    # identity too big for one block, and the impostor rows come 4 at a time.
    import attfc_lite.verification.all_pairs as ver  # the module whose globals all_pairs_verification reads

    if chunk_elements is not None:
        monkeypatch.setattr(ver, "_CHUNK_ELEMENTS", chunk_elements)
        monkeypatch.setattr(ver, "_TILE", tile)
    labels = _uneven_labels([2, 3, 4, 5, 6, 7, 8, 10, 1], seed=0)
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    emb = centres[labels] + 0.9 * torch.randn(46, 5, generator=gen, dtype=torch.float64)
    emb = emb * torch.rand(46, 1, generator=gen, dtype=torch.float64) * 3  # not unit length: cosine normalises
    genuine, impostor = naive_all_pairs(emb, labels)
    assert len(genuine) == 1 + 3 + 6 + 10 + 15 + 21 + 28 + 45 and len(genuine) + len(impostor) == 46 * 45 // 2
    fars = (0.005, 0.01, 0.05, 0.2, 0.5)
    res = all_pairs_verification(emb, labels, fars=fars)
    _check_against_naive(res, genuine, impostor, fars, tol=1e-12)
    assert res["auc"] == pytest.approx(naive_auc(genuine, impostor), abs=1e-12)
    json.dumps(res, allow_nan=False)


def test_all_pairs_exact_with_many_ties():
    # Entries +-1/4 in 16 dims: unit rows, every cosine a multiple of 1/8 computed exactly, so many
    # genuine and impostor scores tie, across and within the two kinds.
    labels = _uneven_labels([3, 4, 5, 6, 7, 9], seed=2)
    gen = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(6, 16, generator=gen) < 0.5, -1.0, 1.0)[labels]
    flip = torch.rand(34, 16, generator=gen) < 0.3
    emb = torch.where(flip, -signs, signs) / 4.0
    genuine, impostor = naive_all_pairs(emb, labels)
    assert len(set(genuine) & set(impostor)) >= 3
    fars = (0.01, 0.03, 0.1, 0.3, 1.0)
    res = all_pairs_verification(emb, labels, fars=fars)
    _check_against_naive(res, genuine, impostor, fars)
    assert res["auc"] == naive_auc(genuine, impostor)  # exact counts, one rounding at the end
    assert res["thresholds"]["1e0"] is None and res["tar_at_far"]["1e0"] == 1.0
    assert res["notes"] == {"1e0": "FAR 1 accepts every pair"}


def test_all_pairs_thinned_roc_holds_only_exact_points():
    labels = _uneven_labels([4, 5, 6, 7, 8, 9, 2], seed=4)
    emb = torch.randn(41, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + labels[:, None] * 0.1
    genuine, impostor = naive_all_pairs(emb, labels)
    res = all_pairs_verification(emb, labels, fars=(0.01, 0.1))
    n_gen, n_imp = len(genuine), len(impostor)
    exact = {(0, 0)} | {
        (sum(s >= t for s in impostor), sum(s >= t for s in genuine)) for t in set(genuine) | set(impostor)
    }
    fpr, tpr = res["roc"]["fpr"], res["roc"]["tpr"]
    points = [(round(f * n_imp), round(t * n_gen)) for f, t in zip(fpr, tpr)]
    assert all(p in exact for p in points)
    assert points[0] == (0, 0) and points[-1] == (n_imp, n_gen) and points == sorted(points)
    for key in res["tar_at_far"]:  # each operating point is on the stored curve
        assert (res["impostors_accepted"][key], res["genuine_accepted"][key]) in points


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_pairs_chunking_gives_identical_results(dtype):
    # Identical down to the last bit of every threshold and the AUC (float64 matrix products
    # round differently for different row counts: the fixed tile grid is what keeps them equal).
    labels = _uneven_labels([1, 2, 3] + [8] * 30 + [40], seed=6)
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(labels.max() + 1, 32, generator=gen)[labels] + 1.5 * torch.randn(labels.numel(), 32, generator=gen)
    emb = emb.to(dtype)
    fars = (1e-4, 1e-3, 1e-2, 0.1)
    whole = all_pairs_verification(emb, labels, fars=fars, chunk_rows=10_000)
    assert whole["num_impostor"] > 10_000 and whole["tar_at_far"]["1e-4"] is not None
    for rows in (1, 64, 100, 128, None):
        assert all_pairs_verification(emb, labels, fars=fars, chunk_rows=rows) == whole, rows
    # the scores themselves, bit for bit, whatever the chunk
    import attfc_lite.verification as ver

    unit, id_end, _, _ = ver._sorted_embeddings(emb, labels)
    n = labels.numel()
    one = ver._impostor_scores(unit, id_end, 0, n)
    for rows in (64, 128, 192):
        assert torch.equal(torch.cat([ver._impostor_scores(unit, id_end, c, min(c + rows, n)) for c in range(0, n, rows)]), one)
    # in another order of the images, the same pairs give the same figures
    perm = torch.randperm(labels.numel(), generator=gen)
    again = all_pairs_verification(emb[perm], labels[perm], fars=fars, chunk_rows=64)
    assert again["tar_at_far"] == whole["tar_at_far"] and again["impostors_accepted"] == whole["impostors_accepted"]


def test_all_pairs_holds_one_chunk_of_rows_at_a_time(monkeypatch):
    import attfc_lite.verification.all_pairs as ver  # the module whose globals all_pairs_verification reads

    seen = []
    original = ver._impostor_scores

    def spy(emb, id_end, c0, c1):
        out = original(emb, id_end, c0, c1)
        seen.append((c1 - c0, out.numel(), emb.shape[0]))
        return out

    monkeypatch.setattr(ver, "_impostor_scores", spy)
    labels = torch.arange(100).repeat_interleave(5)
    emb = torch.randn(500, 8, generator=torch.Generator().manual_seed(8))
    res = ver.all_pairs_verification(emb, labels, chunk_rows=128)
    assert len(seen) == 4 and all(rows <= 128 and numel <= rows * n for rows, numel, n in seen)
    assert sum(numel for _, numel, _ in seen) == res["num_impostor"] == (500 * 500 - 100 * 25) // 2


def test_all_pairs_agrees_with_the_score_list_functions():
    # The same figures from the list of every pair's score, through roc_curve and tar_at_far_report.
    labels = torch.arange(60).repeat_interleave(6)
    gen = torch.Generator().manual_seed(9)
    emb = torch.randn(60, 16, generator=gen, dtype=torch.float64)[labels] + torch.randn(360, 16, generator=gen, dtype=torch.float64)
    unit = emb / emb.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(360, 360, offset=1)
    scores = (unit[i] * unit[j]).sum(dim=1)
    same = labels[i] == labels[j]
    fars = (1e-4, 1e-3, 1e-2)
    res = all_pairs_verification(emb, labels, fars=fars)
    rep = tar_at_far_report(scores, same, fars=fars)
    for key, r in rep.items():
        assert res["tar_at_far"][key] == pytest.approx(r["tar"]) and res["far_achieved"][key] == pytest.approx(r["far_achieved"])
        assert res["impostors_accepted"][key] == r["impostors_accepted"]
    assert res["auc"] == pytest.approx(roc_curve(scores, same)["auc"], abs=1e-12)


def test_all_pairs_roc_is_small_and_covers_low_fars():
    labels = torch.arange(150).repeat_interleave(10)
    gen = torch.Generator().manual_seed(10)
    emb = torch.randn(150, 32, generator=gen)[labels] + 0.8 * torch.randn(1500, 32, generator=gen)
    res = all_pairs_verification(emb, labels)
    fpr = np.asarray(res["roc"]["fpr"])
    assert len(fpr) <= 350
    n_imp = res["num_impostor"]  # 1,113,750: the smallest FAR is 9e-7
    assert fpr[fpr > 0].min() == pytest.approx(1 / n_imp)
    assert np.sum(fpr < 1e-5) >= 10  # FAR 1 / n_imp to 1e-5 holds only 11 possible values
    for decade in range(-5, 0):  # at least 20 points in each further decade of FAR
        assert np.sum((fpr >= 10.0**decade) & (fpr < 10.0 ** (decade + 1))) >= 20, decade
    assert res["impostors_accepted"]["1e-4"] == 111 and res["far_achieved"]["1e-4"] <= 1e-4


def test_all_pairs_too_few_impostors_and_bad_far():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # 3 genuine, 12 impostor pairs
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(11))
    res = all_pairs_verification(emb, labels, fars=(0.01, 0.1))
    assert res["tar_at_far"] == {"1e-2": None, "1e-1": res["tar_at_far"]["1e-1"]}
    assert res["notes"]["1e-2"] == "too few impostor pairs: 12 < 100 needed for FAR 1e-2"
    assert res["impostors_accepted"]["1e-1"] == 1 and res["impostors_accepted"]["1e-2"] is None
    with pytest.raises(ValueError, match="fars"):
        all_pairs_verification(emb, labels, fars=(0.0,))


@pytest.mark.parametrize(
    "embeddings, labels, kwargs, error, message",
    [
        (torch.randn(6), torch.tensor([0, 0, 1, 1, 2, 2]), {}, ValueError, r"embeddings must be 2-D \[N, D\].*reshape"),
        (torch.randn(6, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2]), {}, ValueError, r"embeddings must be 2-D.*reshape"),
        (torch.ones(6, 4, dtype=torch.long), torch.tensor([0, 0, 1, 1, 2, 2]), {}, TypeError, r"embeddings.*\.float\(\)"),
        ([[1.0, 0.0]] * 4, torch.tensor([0, 0, 1, 1]), {}, TypeError, r"embeddings must be a torch.Tensor.*as_tensor"),
        (torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2]), {}, ValueError, r"labels must be 1-D with one identity id per row of embeddings \(6\).*same order"),
        (torch.randn(6, 4), torch.tensor([[0, 0, 1], [1, 2, 2]]), {}, ValueError, r"labels must be 1-D.*got shape \(2, 3\)"),
        (torch.randn(6, 4), torch.tensor([0.0, 0, 1, 1, 2, 2]), {}, TypeError, r"labels must be an integer tensor.*labels.long\(\)"),
        (torch.randn(6, 4), [0, 0, 1, 1, 2, 2], {}, TypeError, r"labels must be a torch.Tensor.*as_tensor"),
        (torch.randn(6, 4), torch.tensor([-1, -1, 1, 1, 2, 2]), {}, ValueError, r"labels must be identity ids >= 0.*torch.unique"),
        (torch.randn(4, 4), torch.tensor([3, 3, 3, 3]), {}, ValueError, r"labels hold 1 identity.*more identities"),
        (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), {}, ValueError, r"no identity in labels has 2 or more images.*at least 2 images"),
        (torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]), {}, ValueError, r"embeddings contain NaN"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]), {}, ValueError, r"embeddings row 1 is all zeros.*drop that image"),
        (torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), {"chunk_rows": 0}, ValueError, r"chunk_rows must be a positive int.*None"),
        (torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), {"chunk_rows": 2.5}, ValueError, r"chunk_rows must be a positive int"),
        (torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), {"fars": (1e-2, 0.01)}, ValueError, r"fars holds the same FAR twice"),
    ],
)
def test_all_pairs_rejects_bad_input_by_name(embeddings, labels, kwargs, error, message):
    with pytest.raises(error, match=message):
        all_pairs_verification(embeddings, labels, **kwargs)


# --------------------------------------------------------------------------- the 10-fold accuracy is unchanged

# evaluate_verification's 10-fold figures before TAR@FAR moved to all pairs, computed with
# attfc_lite/verification.py at commit 79afd3ad475098e433af7feacf25027906b0bb52 on
# _toy_world(k, per_id) and OneHotPlusNoise(k, noise), qualities given:
# (k, per_id, noise, num_pairs, seed) -> accuracy_mean, accuracy_std, num_pairs used, and
# by_quality high / low accuracy_mean and accuracy_std.
FROZEN_ACCURACY = [
    ((8, 12, 6.0, 1000, 0), (0.6839999999999999, 0.046086874487211646, 1000,
                             0.722, 0.618, 0.052497618993626746, 0.04770744176750624)),
    ((20, 12, 6.0, 6000, 3), (0.6359848484848485, 0.028419190124094964, 2640,
                              0.703030303030303, 0.553030303030303, 0.041742355496836095, 0.02854764194154058)),
    ((20, 12, 4.0, 2000, 1), (0.698, 0.028913664589601894, 2000,
                              0.794, 0.589, 0.04608687448721165, 0.026627053911388688)),
]


@pytest.mark.parametrize("setting, frozen", FROZEN_ACCURACY)
def test_kfold_accuracy_is_unchanged(setting, frozen):
    k, per_id, noise, num_pairs, seed = setting
    images, labels, quality = _toy_world(k=k, per_id=per_id)
    res = evaluate_verification(OneHotPlusNoise(k, noise), images, labels, quality, num_pairs=num_pairs, seed=seed)
    high, low = res["by_quality"]["high"], res["by_quality"]["low"]
    got = (res["accuracy_mean"], res["accuracy_std"], res["num_pairs"],
           high["accuracy_mean"], low["accuracy_mean"], high["accuracy_std"], low["accuracy_std"])
    assert got == frozen  # exactly: same pairs, same scores, same folds


def test_kfold_accuracy_follows_the_lfw_protocol_on_the_sampled_pairs():
    # The same figure from the sampled pair list by the naive protocol loop, independent of the frozen numbers.
    images, labels, _ = _toy_world(k=12, per_id=10, seed=4)
    model = OneHotPlusNoise(12, 5.0)
    res = evaluate_verification(model, images, labels, num_pairs=800, seed=5)
    a, b, same = make_pairs(labels, 800, seed=5)
    emb = embed(model, images)
    scores = (emb[a] * emb[b]).sum(dim=1)
    accs, _ = naive_kfold(scores.double().tolist(), same.tolist())
    assert res["accuracy_mean"] == pytest.approx(sum(accs) / len(accs), abs=1e-15)
    assert (res["num_pairs"], res["num_genuine"], res["num_impostor"]) == (800, 400, 400)
    assert 0.5 < res["accuracy_mean"] < 1.0


def test_quality_half_with_too_few_of_a_kind_has_no_accuracy():
    # 20 identities of 3 images of quality 1, and 200 one-image identities of quality 0: nearly
    # every impostor pair has quality 0, every genuine pair quality 1. The low half then holds
    # almost no genuine pair and the high half almost no impostor: no 10 folds with both kinds.
    k = 220
    labels = torch.cat([torch.arange(20).repeat_interleave(3), 20 + torch.arange(200)])
    n = labels.numel()
    images = torch.zeros(n, 3, 2, 2 * k)
    images[torch.arange(n), 0, 0, labels] = 1.0
    images[torch.arange(n), 0, 0, 2 * k - 1 - labels] = 1.0
    images[:, 1, 0, :] = torch.rand(n, 2 * k, generator=torch.Generator().manual_seed(0))
    quality = torch.cat([torch.ones(60), torch.zeros(200)])
    res = evaluate_verification(OneHotPlusNoise(k, 3.0), images, labels, quality, num_pairs=120)
    a, b, same = make_pairs(labels, 120, seed=0)
    pair_q = torch.minimum(quality[a], quality[b])
    low = torch.zeros(120, dtype=torch.bool)
    low[torch.argsort(pair_q, stable=True)[:60]] = True
    assert int(same[low].sum()) < 10 and int((~same[~low]).sum()) < 10  # the case under test
    for half in ("low", "high"):
        assert res["by_quality"][half]["num_pairs"] == 60 and res["by_quality"][half]["accuracy_mean"] is None
    assert "low-quality pairs (60): too few genuine or impostor pairs for 10 folds" in verification_summary(res)


def test_evaluate_refuses_too_few_pairs_for_ten_folds_before_embedding():
    images, labels, _ = _toy_world(k=8, per_id=12)
    with pytest.raises(ArgumentError, match=r"^num_pairs must be at least 20 \(10 genuine and 10 impostor pairs "
                                            r"for the 10-fold accuracy\), got 19"):
        evaluate_verification(OneHotPlusNoise(8, 2.0), images, labels, num_pairs=19)
    assert evaluate_verification(OneHotPlusNoise(8, 2.0), images, labels, num_pairs=20)["num_genuine"] == 10
    # 4 identities of 2 images: 4 genuine pairs exist, so no number of pairs asked for is enough.
    images, labels, _ = _toy_world(k=4, per_id=2)
    with pytest.raises(ArgumentError, match=r"^num_pairs is capped at 8 by these labels \(4 genuine and 24 impostor"):
        evaluate_verification(OneHotPlusNoise(4, 2.0), images, labels, num_pairs=100)


# --------------------------------------------------------------------------- summary and plot


def test_summary_prints_the_pairs_behind_each_figure():
    images, labels, _ = _toy_world(k=20, per_id=12)
    res = evaluate_verification(OneHotPlusNoise(20, 6.0), images, labels, num_pairs=6000)
    n_gen, n_imp = 20 * 66, (240 * 240 - 20 * 144) // 2
    assert (res["num_genuine_all"], res["num_impostor_all"]) == (n_gen, n_imp)
    text = verification_summary(res)
    lines = text.splitlines()
    assert lines[0] == "pairs: 2,640 sampled for the 10-fold accuracy (1,320 genuine, 1,320 impostor)"
    assert f"pairs: all {n_gen + n_imp:,} for AUC and TAR@FAR ({n_gen:,} genuine, {n_imp:,} impostor)" in lines
    for key in ("1e-2", "1e-3", "1e-4"):  # 1e-4 of 27,360 impostor pairs: 2 accepted
        accepted, far = res["impostors_accepted"][key], res["far_achieved"][key]
        assert far <= float(key) and accepted == round(far * n_imp)
        want = (f"TAR@FAR={key}: {res['tar_at_far'][key]:.3f} ({res['genuine_accepted'][key]:,} of {n_gen:,} genuine "
                f"pairs accepted; at FAR {far:.2g}: {accepted:,} of {n_imp:,} impostor pairs accepted)")
        assert want in lines, want
    assert res["impostors_accepted"]["1e-4"] == 2
    assert any(line.startswith("TAR@FAR rule: accept score > the (k+1)-th highest impostor score") for line in lines)


def test_summary_of_a_result_stored_before_all_pairs():
    old = {"num_pairs": 6000, "num_genuine": 3000, "num_impostor": 3000, "accuracy_mean": 0.9, "accuracy_std": 0.01,
           "auc": 0.95, "tar_at_far": {"1e-2": 0.5}, "far_achieved": {"1e-2": 0.01}, "impostors_accepted": {"1e-2": 30}}
    text = verification_summary(old)
    assert "pairs: 6,000 (3,000 genuine, 3,000 impostor)" in text
    assert "TAR@FAR=1e-2: 0.500 (at FAR 0.01: 30 of 3,000 impostor pairs accepted)" in text
    assert "all" not in text and "rule" not in text


def test_plot_roc_marks_every_operating_point_with_a_legend_entry():
    images, labels, _ = _toy_world(k=20, per_id=12)
    results = [evaluate_verification(OneHotPlusNoise(20, s), images, labels, num_pairs=2000) for s in (4.0, 6.0)]
    ax = plot_roc(results, labels=["less noise", "more noise"])
    try:
        assert ax.get_title() == "ROC, all pairs of the evaluation set"
        assert ax.get_xlabel() == "FAR: fraction of impostor pairs accepted (log scale)"
        assert ax.get_ylabel() == "TAR: fraction of genuine pairs accepted"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for name, res in zip(("less noise", "more noise"), results):
            assert f"{name} (AUC {res['auc']:.4f})" in legend
        assert "chance (TAR = FAR)" in legend
        points = [line for line in ax.get_lines() if line.get_marker() not in ("None", "") and len(line.get_xdata())]
        proxies = {line.get_marker(): line.get_label() for line in ax.get_lines()
                   if line.get_marker() not in ("None", "") and not len(line.get_xdata())}
        want = sorted((res["far_achieved"][k], res["tar_at_far"][k]) for res in results for k in res["tar_at_far"]
                      if res["tar_at_far"][k] is not None and res["far_achieved"][k] > 0)
        got = sorted((float(p.get_xdata()[0]), float(p.get_ydata()[0])) for p in points)
        assert np.allclose(got, want, rtol=1e-12, atol=0)
        assert len(want) == 6  # three targets on each curve
        for p in points:  # every marker shape has its legend entry, named after its target FAR
            assert p.get_marker() in proxies and proxies[p.get_marker()] in legend
            assert ax.get_xlim()[0] < p.get_xdata()[0] < 1.0
        assert sorted(proxies.values()) == [f"TAR at FAR \u2264 {k}" for k in ("1e-2", "1e-3", "1e-4")]
        assert len(set(proxies)) == 3  # one marker shape per target
    finally:
        plt.close("all")


def test_all_pairs_far_times_count_rounding_below_an_integer():
    # 2 identities x 10 images: 100 impostor pairs. 0.29 * 100 = 28.999999999999996 in floats,
    # yet 29 / 100 == 0.29: a threshold accepting 29 impostor pairs meets FAR 0.29.
    labels = torch.arange(2).repeat_interleave(10)
    emb = torch.randn(20, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    genuine, impostor = naive_all_pairs(emb, labels)
    fars = (0.29, 0.57, 0.58)
    res = all_pairs_verification(emb, labels, fars=fars)
    assert res["impostors_accepted"] == {"2.9e-1": 29, "5.7e-1": 57, "5.8e-1": 58}
    _check_against_naive(res, genuine, impostor, fars, tol=1e-12)


def test_quality_split_plot_shows_the_fold_spread_as_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    from attfc_lite.verification import plot_quality_split

    r = {"accuracy_mean": 0.89, "accuracy_std": 0.01,
         "by_quality": {"high": {"accuracy_mean": 0.92, "accuracy_std": 0.02},
                        "low": {"accuracy_mean": 0.87, "accuracy_std": 0.03}}}
    ax = plot_quality_split(r)
    assert ax.get_title() and ax.get_ylabel() == "10-fold verification accuracy"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.89, 0.92, 0.87])
    caps = [line for line in ax.lines if len(line.get_ydata()) == 3]  # the error bars' cap markers
    tops = sorted(y for line in caps for y in line.get_ydata() if y > 0.895)
    assert pytest.approx(0.94) in tops and pytest.approx(0.90) in tops  # mean + std for high and low
    with pytest.raises(ValueError, match="no 'by_quality'"):
        plot_quality_split({"accuracy_mean": 0.9, "accuracy_std": 0.0})
