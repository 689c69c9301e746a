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


def test_lessons_06_to_08_grade_hand_answers_and_name_each_slip(capsys):
    def grade(check, answer):
        assert check(answer) is None  # prints only: a notebook cell shows just the line
        out = capsys.readouterr().out
        return out.split(": ", 1)[1].split()[0].strip(".,:"), out

    e2 = math.exp(2)
    x = 1 / 0.36 - 1
    cases = [  # (check, right answer by hand, a common slip, a word its hint must contain)
        (ex.check_mean_cosine, 1 / math.sqrt(1 + x / 4), 0.6 * 2, "at most 1"),
        (ex.check_max_weight, e2 / (e2 + 7), 1 / 8, "uniform"),
        (ex.check_container_bytes, 205_990 * 2056, 205_990 * 2048, "int64"),
        (ex.check_identities_present, 1 - 0.999 ** 600, 0.6, "count each identity once"),
        (ex.check_logit_bytes, 128 * 617_971 * 4, 128 * 2_059_906 * 4, "container"),
    ]
    z0 = 32 * math.cos(math.acos(0.8) + 0.5)
    cases.append((ex.check_attfc_loss, math.log(math.exp(z0) + math.exp(9.6)) - z0,
                  math.log(math.exp(z0) + math.exp(9.6) + math.exp(28.8)) - z0, "masked"))
    for check, right, slip, word in cases:
        assert grade(check, right)[0] == "right"
        if check is ex.check_identities_present:
            assert grade(check, 1 - math.exp(-0.6))[0] == "right"  # the exponential approximation is accepted
            assert "percentage" in grade(check, 100 * (1 - 0.999 ** 600))[1]
        got, message = grade(check, slip)
        assert got == "wrong" and word in message, (check.__name__, message)
        assert f"{right:.3g}" not in message and f"{right:.4g}" not in message  # never the expected value
        assert grade(check, right * 1.004)[0] == "close"
        assert grade(check, right * 3)[0] == "wrong"
        assert grade(check, None)[0] == "not"  # "not answered yet"
        got, message = grade(check, "abc")
        assert got == "wrong" and "number" in message
        if check in (ex.check_container_bytes, ex.check_logit_bytes):
            got, message = grade(check, right / 2 ** 20)
            assert got == "wrong" and "in bytes, not in MiB" in message


def test_lesson_09_checks_by_hand(capsys):
    def said(check, answer):
        check(answer)
        return capsys.readouterr().out

    assert "right" in said(ex.check_encoder_k_bytes, 4 * 43_600_000)
    assert "no optimizer" in said(ex.check_encoder_k_bytes, 8 * 43_600_000)
    assert "in bytes, not in MiB" in said(ex.check_encoder_k_bytes, 4 * 43_600_000 / 2 ** 20)
    assert "right" in said(ex.check_images_per_step, 640)
    assert "queries go through encoder_q" in said(ex.check_images_per_step, 512)
    out = said(ex.check_images_per_step, 600)
    assert "wrong" in out and "640" not in out
