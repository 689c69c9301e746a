"""The exercise checks against hand-computed answers: right, close and wrong must all be reachable."""
from __future__ import annotations

import math

import torch

from attfc_lite import check
from attfc_lite import exercises as ex


def verdict(capsys) -> str:
    out = capsys.readouterr().out
    for word in ("not answered", "right", "close", "wrong"):
        if word in out:
            return word
    raise AssertionError(out)


def test_check_says_right_close_wrong(capsys):
    assert check("x", 1.0, 1.0) == "right"
    assert check("x", 1.0 + 1e-4, 1.0) == "close"
    assert check("x", 2.0, 1.0) == "wrong"
    assert check("x", [1.0, 2.0], [1.0]) == "wrong"  # shape
    assert "max difference" in capsys.readouterr().out


def test_unanswered_exercises_say_so(capsys):
    for fn in (ex.check_quality, ex.check_good_images, ex.check_arcface_logit, ex.check_fc_parameters,
               ex.check_training_state_bytes, ex.check_fit_boundary, ex.check_logits_batch):
        fn(None)
        assert verdict(capsys) == "not answered"


def test_lesson_01_answers_by_hand(capsys):
    ex.check_arcface_logit(64 * math.cos(math.acos(0.8) + 0.5))
    assert verdict(capsys) == "right"
    ex.check_arcface_logit(64 * (0.8 - 0.5))  # CosFace's formula: a wrong idea
    assert verdict(capsys) == "wrong"
    ex.check_fc_parameters(93_431 * 512)
    assert verdict(capsys) == "right"
    ex.check_fc_parameters(93_431 * 512 + 1)
    assert verdict(capsys) == "wrong"
    ex.check_pair_accuracy(4 / 6, [0.9, 0.2, 0.6, 0.4, 0.7, 0.1], [True, False, True, True, False, False], 0.5)
    assert verdict(capsys) == "right"


def test_lesson_00_answers_from_the_world(capsys):
    from attfc_lite.faces import FaceWorld

    q = float(FaceWorld(0).render(torch.tensor([42]), torch.tensor([3])).quality[0])  # rendered, not quality()
    ex.check_quality(q)
    assert verdict(capsys) == "right"
    ex.check_quality(q + 0.1)
    assert verdict(capsys) == "wrong"
    qs = FaceWorld(0).render(torch.full((100,), 7), torch.arange(100)).quality
    ex.check_good_images(int((qs > 0.8).sum()))
    assert verdict(capsys) == "right"


def test_lesson_02_answers_by_hand(capsys):
    n, d, b, e = 2_059_906, 512, 128, 4
    ex.check_training_state_bytes(3 * n * d * e)
    assert verdict(capsys) == "right"
    ex.check_training_state_bytes(2 * n * d * e)
    assert verdict(capsys) == "wrong"
    # peak(N) = 7 N D e + 2 B D e + 8 B for FC with SGD momentum and B < D (lesson 02)
    ex.check_fit_boundary((24 * 2**30 - 2 * b * d * e - 8 * b) // (7 * d * e))
    assert verdict(capsys) == "right"
    ex.check_fit_boundary(24 * 2**30 // (3 * d * e))  # W + grad + momentum only
    assert verdict(capsys) == "wrong"
    ex.check_logits_batch(512)
    assert verdict(capsys) == "right"
    ex.check_logits_batch(128)
    assert verdict(capsys) == "wrong"
