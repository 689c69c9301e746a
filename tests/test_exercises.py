"""The exercise checks and solutions: one tolerance policy, a hint for every listed slip, the
expected value never printed, scalars in any usual form, and a worked solution for every exercise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attfc_lite import check
from attfc_lite import exercises as ex

CHECKED = [k for k, e in ex.EXERCISES.items() if e.check is not None]
OPEN = [k for k, e in ex.EXERCISES.items() if e.check is None]


def said(capsys, check, answer) -> tuple[str, str]:
    """(verdict word, whole printed text) of one check call, which must print and return nothing."""
    assert check(answer) is None  # prints only: a notebook cell shows just the line
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one line
    return out.split(": ", 1)[1].split()[0].strip(".,:"), out


def solution_value(key: str) -> float:
    from attfc_lite.faces import FaceWorld

    namespace = {"math": math, "torch": torch, "FaceWorld": FaceWorld}
    exec(ex.EXERCISES[key].code, namespace)
    return namespace["answer"]


def leak_forms(expected: float) -> list[str]:
    """How the expected value would look if printed: repr, 3 and 4 significant digits, and an
    integer's digits with and without thousands separators."""
    forms = {repr(float(expected)), f"{expected:.3g}", f"{expected:.4g}", f"{expected:.3f}"}
    if float(expected).is_integer():
        forms |= {str(int(expected)), f"{int(expected):,}"}
    return sorted(forms)


def test_every_lesson_has_its_exercises():
    lessons = {k.split(".")[0] for k in ex.EXERCISES}
    assert lessons == {f"{i:02d}" for i in range(11)}
    assert len(CHECKED) == 26 and len(OPEN) == 10  # lesson 02 has no open exercise
    for key in CHECKED:
        e = ex.EXERCISES[key]
        assert e.spec is not None and e.code and "answer =" in e.code
        assert len(e.spec().all_slips()) >= 2, key  # at least two slips with messages
        assert e.check.__name__.startswith("check_")


@pytest.mark.parametrize("key", CHECKED)
def test_solution_value_is_right_and_matches_the_spec(capsys, key):
    e = ex.EXERCISES[key]
    value = solution_value(key)
    assert said(capsys, e.check, value)[0] == "right"
    spec = e.spec()
    if spec.exact:
        assert value == spec.expected and float(spec.expected).is_integer()
    else:
        assert math.isclose(value, spec.expected, rel_tol=1e-9)


@pytest.mark.parametrize("key", CHECKED)
def test_every_slip_gets_its_hint(capsys, key):
    e = ex.EXERCISES[key]
    spec = e.spec()
    for slip in spec.all_slips():
        word, out = said(capsys, e.check, slip.value)
        assert slip.message in out, (key, slip, out)
        close = abs(slip.value - spec.expected) <= ex.CLOSE_RTOL * abs(spec.expected)
        assert word == ("close" if close else "wrong"), (key, out)


@pytest.mark.parametrize("key", CHECKED)
def test_tolerance_policy(capsys, key):
    e = ex.EXERCISES[key]
    spec = e.spec()
    x = float(spec.expected)
    if spec.exact:  # whole numbers: exact only
        assert said(capsys, e.check, int(x))[0] == "right"
        assert said(capsys, e.check, x + 0.5)[0] in ("close", "wrong")
        assert said(capsys, e.check, x + 1)[0] != "right"
        assert x >= 30  # so that x + 0.3 is within 1 %
        word, out = said(capsys, e.check, x + 0.3)  # within 1 %, not whole
        assert word == "close" and "whole" in out, out
    else:  # real numbers: right within 0.1 %, close within 1 %
        assert said(capsys, e.check, float(f"{x:.4g}"))[0] == "right"  # four significant digits always do
        assert said(capsys, e.check, x * 1.0009)[0] == "right"
        assert said(capsys, e.check, x * 0.9991)[0] == "right"
        word, out = said(capsys, e.check, x * 1.005)
        assert word == "close" and "within 1 %" in out, out
        assert said(capsys, e.check, x * 0.995)[0] == "close"
    assert said(capsys, e.check, x * 1.02)[0] == "wrong"
    word, out = said(capsys, e.check, x * 5.3 + 7)  # no slip's value
    assert word == "wrong" and "more than 1 % off" in out and spec.hint in out


@pytest.mark.parametrize("key", CHECKED)
def test_no_printed_text_reveals_the_expected_value(capsys, key):
    e = ex.EXERCISES[key]
    spec = e.spec()
    x = float(spec.expected)
    answers = [0, 1, -1, x * 3 + 7, x * 5.3 + 7, x * 1.02, x * 0.98, x * 1.005, x * 0.995, x + 1, x - 1, x + 0.5, "abc",
               [x, x], float("nan"), None] + [s.value for s in spec.all_slips()]
    for answer in answers:
        word, out = said(capsys, e.check, answer)
        if word == "right":
            continue
        for form in leak_forms(x):
            assert form not in out, (key, answer, form, out)


@pytest.mark.parametrize("key", CHECKED)
def test_scalars_in_every_usual_form(capsys, key):
    e = ex.EXERCISES[key]
    x = solution_value(key)
    for answer in (x, torch.tensor(x), torch.tensor([x]), torch.tensor([[x]], dtype=torch.float64),
                   torch.tensor([x], requires_grad=isinstance(x, float)), np.array(x), np.array([x]), np.float64(x),
                   [x], (x,), [[x]]):
        assert said(capsys, e.check, answer)[0] == "right", (key, answer)
    word, out = said(capsys, e.check, torch.tensor([x, x]))
    assert word == "wrong" and "one number, got 2" in out
    word, out = said(capsys, e.check, "abc")
    assert word == "wrong" and "number" in out
    word, out = said(capsys, e.check, True)
    assert word == "wrong" and "number" in out
    word, out = said(capsys, e.check, float("inf"))
    assert word == "wrong" and "finite" in out
    word, out = said(capsys, e.check, None)
    assert word == "not" and "not answered yet" in out


@pytest.mark.parametrize("key", list(ex.EXERCISES))
def test_solution_prints_and_ends_with_right(capsys, key):
    assert ex.solution(key) is None
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"Exercise {key}: ") and len(lines) >= 4
    if key in OPEN:
        assert lines[-1].startswith("Open exercise: no check")
        assert "xpected outcome" in out or "measures nothing" in out or "stores no result" in out
    else:
        assert lines[-1].split(": ", 1)[1].startswith("right"), lines[-1]
        assert ex.EXERCISES[key].code.splitlines()[-1].strip() in out  # the computation is shown


def test_solution_ids_are_normalised_and_unknown_ones_name_the_valid_ones(capsys):
    ex.solution("5.2")
    assert capsys.readouterr().out.startswith("Exercise 05.2: ")
    ex.solution(" 02.3 ")
    assert capsys.readouterr().out.startswith("Exercise 02.3: ")
    for bad in ("02.4", "10.5", "11.1", "quality", "", 3):
        with pytest.raises(ValueError) as info:
            ex.solution(bad)
        message = str(info.value)
        assert "unknown exercise" in message and all(k in message for k in ex.EXERCISES)


def test_lessons_00_to_02_against_hand_and_library_values(capsys):
    from attfc_lite.faces import FaceWorld
    from attfc_lite.memory import predict_memory

    def grade(check, answer, *args, **kwargs):
        check(answer, *args, **kwargs)
        out = capsys.readouterr().out
        return out.split(": ", 1)[1].split()[0].strip(".,:"), out

    q = float(FaceWorld(0).render(torch.tensor([42]), torch.tensor([3])).quality[0])  # rendered, not quality()
    assert grade(ex.check_quality, q)[0] == "right"
    assert grade(ex.check_quality, q + 0.1)[0] == "wrong"
    qs = FaceWorld(0).render(torch.full((100,), 7), torch.arange(100)).quality
    assert grade(ex.check_good_images, int((qs > 0.8).sum()))[0] == "right"
    assert grade(ex.check_arcface_logit, 64 * math.cos(math.acos(0.8) + 0.5))[0] == "right"
    word, out = grade(ex.check_arcface_logit, 64 * (0.8 - 0.5))  # CosFace's formula
    assert word == "wrong" and "CosFace" in out
    assert "radians" in grade(ex.check_arcface_logit, 64 * math.cos(math.acos(0.8) + math.radians(0.5)))[1]
    assert "scale s" in grade(ex.check_arcface_logit, math.cos(math.acos(0.8) + 0.5))[1]
    assert grade(ex.check_fc_parameters, 93_431 * 512)[0] == "right"
    assert "no bias" in grade(ex.check_fc_parameters, 93_431 * 513)[1]
    scores, same = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1], [True, False, True, True, False, False]
    assert grade(ex.check_pair_accuracy, 4 / 6, scores, same, threshold=0.5)[0] == "right"
    # the lesson's seven pairs are the defaults: accuracy 5/7, TAR 3/4
    assert grade(ex.check_pair_accuracy, 5 / 7)[0] == "right"
    assert grade(ex.check_pair_accuracy, 0.7143)[0] == "right"  # 0.006 % off
    assert grade(ex.check_pair_accuracy, 0.71)[0] == "close"  # 0.6 % off
    assert "percentage" in grade(ex.check_pair_accuracy, 71.43)[1]
    assert "error rate" in grade(ex.check_pair_accuracy, 2 / 7)[1]
    assert "share of the pairs" in grade(ex.check_pair_accuracy, 5)[1]
    assert "genuine pairs accepted" in grade(ex.check_pair_accuracy, 3 / 4)[1]  # the TAR is not the accuracy

    n, d, b, e = 2_059_906, 512, 128, 4
    bd = predict_memory(n, d, b)
    state = bd.terms["class_centres"] + bd.terms["centre_grad"] + bd.terms["optimizer_state"]
    assert state == 3 * n * d * e and grade(ex.check_training_state_bytes, state)[0] == "right"
    assert "missing" in grade(ex.check_training_state_bytes, 2 * n * d * e)[1]  # the gradient forgotten
    assert "4 bytes" in grade(ex.check_training_state_bytes, 3 * n * d)[1]  # bytes per float
    assert "not in GiB" in grade(ex.check_training_state_bytes, 3 * n * d * e / 2 ** 30)[1]
    assert "not in GB" in grade(ex.check_training_state_bytes, 3 * n * d * e / 1e9)[1]
    assert "not in MiB" in grade(ex.check_training_state_bytes, round(3 * n * d * e / 2 ** 20, 1))[1]
    # peak(N) = 7 N D e + 2 B D e + 8 B for FC with SGD momentum and B < D (lesson 02)
    assert grade(ex.check_fit_boundary, (24 * 2**30 - 2 * b * d * e - 8 * b) // (7 * d * e))[0] == "right"
    assert "normalize" in grade(ex.check_fit_boundary, 24 * 2**30 // (3 * d * e))[1]  # W + grad + momentum only
    assert "24 GB" in grade(ex.check_fit_boundary, (24 * 10**9 - 2 * b * d * e - 8 * b) // (7 * d * e))[1]
    word, out = grade(ex.check_fit_boundary, (24 * 2**30 - 2 * b * d * e - 8 * b) / (7 * d * e) + 0.3)
    assert word == "close" and "whole" in out
    assert grade(ex.check_logits_batch, 512)[0] == "right"
    assert grade(ex.check_logits_batch, 128)[0] == "wrong"
    word, out = grade(ex.check_logits_batch, 511)
    assert word == "close" and "Near the boundary" in out


def test_lessons_03_to_09_slips_the_course_cares_about(capsys):
    def out(check, answer):
        check(answer)
        return capsys.readouterr().out

    assert "full FC" in out(ex.check_partial_fc_columns, 1_000_000)
    assert "momentum buffer still moves" in out(ex.check_unsampled_drift, 0)
    assert "one step" in out(ex.check_ema_value, 1.2)
    assert "check it there" in out(ex.check_ema_half_life, 68)
    assert "not the half-life" in out(ex.check_ema_half_life, 100)
    assert "exponentiate" in out(ex.check_attention_weight, 0.8 / 1.2)
    assert "T was left out" in out(ex.check_weight_ratio, math.exp(2))
    assert "at most 1" in out(ex.check_mean_cosine, 1.2)
    assert "uniform" in out(ex.check_max_weight, 1 / 8)
    assert "int64" in out(ex.check_container_bytes, 205_990 * 2048)
    assert "not in MiB" in out(ex.check_container_bytes, 205_990 * 2056 / 2 ** 20)
    assert "percentage" in out(ex.check_identities_present, 100 * (1 - 0.999 ** 600))
    assert "right" in out(ex.check_identities_present, 1 - math.exp(-0.6))  # the approximation is accepted
    z0 = 32 * math.cos(math.acos(0.8) + 0.5)
    assert "masked" in out(ex.check_attfc_loss, math.log(math.exp(z0) + math.exp(9.6) + math.exp(28.8)) - z0)
    c0 = 0.8 * math.cos(0.5) - 0.6 * math.sin(0.5)  # cos(arccos 0.8 + 0.5), without the scale
    assert "scale s" in out(ex.check_attfc_loss, math.log(math.exp(c0) + math.exp(0.3)) - c0)
    assert "container" in out(ex.check_logit_bytes, 128 * 2_059_906 * 4)
    assert "no optimizer" in out(ex.check_encoder_k_bytes, 8 * 43_600_000)
    assert "no gradient" in out(ex.check_encoder_k_bytes, 12 * 43_600_000)
    assert "queries go through encoder_q" in out(ex.check_images_per_step, 512)
    text = out(ex.check_images_per_step, 600)
    assert "wrong" in text and "640" not in text
    # 09.3, by hand: 3 images, K = 2; the right share is 1 - (2/3)^2 = 5/9
    assert "right" in out(ex.check_self_key_share, 5 / 9)
    assert "one key's chance" in out(ex.check_self_key_share, 1 / 3)
    assert "counts twice" in out(ex.check_self_key_share, 2 / 3)
    assert "NO key" in out(ex.check_self_key_share, 4 / 9)
    assert "EVERY key" in out(ex.check_self_key_share, 1 / 9)
    assert "one image fewer" in out(ex.check_self_key_share, 0.75)  # n = 2: 1 - (1/2)^2
    assert "K = 2" in out(ex.check_images_per_step, 384)  # this lesson's K instead of the exercise's
    assert "right" in out(lambda a: ex.check_self_key_share(a, 2, 2), 0.75)  # the stored run: n = 2, K = 2


def test_lesson_10_against_the_library_and_its_slips(capsys):
    """Lesson 10's expected values are the library's (the memory model per rank, the traffic World
    counts), and each slip a student made working through it gets its hint."""
    from attfc_lite.distributed import shard_range
    from attfc_lite.distributed.per_rank import traffic_per_step
    from attfc_lite.heads.attfc import container_capacity
    from attfc_lite.memory import predict_memory

    def out(check, answer):
        check(answer)
        return capsys.readouterr().out

    n, d, b = 2_059_906, 512, 128
    # 10.1: the largest shard (shard_range) and its momentum, as predict_memory holds them per rank
    fc8 = predict_memory(n, d, b, head="fc", world_size=8)
    held = fc8.terms["class_centres"] + fc8.terms["optimizer_state"]
    start, stop = shard_range(n, 0, 8)
    assert held == 2 * (stop - start) * d * 4
    assert "right" in out(ex.check_shard_bytes, held)
    assert "whole W" in out(ex.check_shard_bytes, 2 * n * d * 4)
    assert "momentum buffer" in out(ex.check_shard_bytes, (stop - start) * d * 4)
    assert "gradient" in out(ex.check_shard_bytes, 3 * (stop - start) * d * 4)
    text = out(ex.check_shard_bytes, 2 * shard_range(n, 7, 8)[1] * d * 4 - 2 * shard_range(n, 7, 8)[0] * d * 4)
    assert "close" in text and "smallest shard" in text  # the last rank's shard: one row fewer
    assert "rounded up" in out(ex.check_shard_bytes, 2 * n / 8 * d * 4)
    assert "not in GiB" in out(ex.check_shard_bytes, held / 2 ** 30)
    assert "right" in out(lambda a: ex.check_shard_bytes(a, 11, 8, 2), 2 * 6 * 8 * 4)  # tests' 6 + 5 rows
    # 10.2 (P = 16, B = 64, D = 512: no traffic the lesson prints): the bytes World counts
    p2, b2 = 16, 64
    sent = traffic_per_step("fc", n, d, b2, p2)["embedding_grad"]
    assert sent == 2 * 15 * b2 * d * 4
    assert "right" in out(ex.check_embedding_grad_bytes, sent)
    assert "size of the tensor reduced" in out(ex.check_embedding_grad_bytes, p2 * b2 * d * 4)
    assert "reduce-scatter" in out(ex.check_embedding_grad_bytes, 15 * b2 * d * 4)
    assert "own chunk" in out(ex.check_embedding_grad_bytes, 2 * p2 * b2 * d * 4)
    text = out(ex.check_embedding_grad_bytes, 15 * p2 * b2 * d * 4)  # at P = 16 also 8 x the answer
    assert "every other rank" in text and "bits" in text
    assert "own B rows" in out(ex.check_embedding_grad_bytes, 2 * 15 / p2 * b2 * d * 4)
    assert "4 bytes" in out(ex.check_embedding_grad_bytes, 2 * 15 * b2 * d)
    assert "not in MiB" in out(ex.check_embedding_grad_bytes, sent / 2 ** 20)
    # forgot to divide by P: 2 (P - 1) times the whole tensor (P x the answer)
    text = out(ex.check_embedding_grad_bytes, 2 * 15 * (p2 * b2 * d * 4))
    assert "Divide by P" in text and "bits" not in text
    # at P = 8 that slip is 8 x the answer: it is named first, with bits as the other cause
    text = out(lambda a: ex.check_embedding_grad_bytes(a, 128, 512, 8), 2 * 7 * (8 * 128 * d * 4))
    assert text.index("Divide by P") < text.index("bits")
    assert "not 8" in out(ex.check_shard_bytes, 2 * (stop - start) * d * 8)
    # the measured two-process step of tests/test_distributed.py (B = 4, D = 8) sent 2 B D 4 bytes
    assert "right" in out(lambda a: ex.check_embedding_grad_bytes(a, 4, 8, 2), 2 * 4 * 8 * 4)
    # 10.3 (Glint360K over 32 ranks: no container the lesson prints): every rank holds the whole container
    n3, p3 = 360_232, 32
    q = container_capacity(n3, 0.3)
    assert q == 108_069
    whole = predict_memory(n3, d, b, head="attfc", world_size=p3).terms["container"]
    assert whole == predict_memory(n3, d, b, head="attfc").terms["container"] == q * (4 * d + 8)
    assert "right" in out(ex.check_rank_container_bytes, whole)
    assert "does not shrink" in out(ex.check_rank_container_bytes, whole / p3)
    assert "grow with P" in out(ex.check_rank_container_bytes, p3 * whole)
    assert "label" in out(ex.check_rank_container_bytes, q * 4 * d)
    assert "not 4" in out(ex.check_rank_container_bytes, q * (4 * d + 4))
    assert "not 8" in out(ex.check_rank_container_bytes, q * (8 * d + 8))
    assert "not N" in out(ex.check_rank_container_bytes, n3 * (4 * d + 8))
    text = out(ex.check_rank_container_bytes, 0.3 * n3 * (4 * d + 8))
    assert "close" in text and "floor(0.3 N)" in text
    # the container the lesson prints (WebFace42M) is not this exercise's answer
    webface = predict_memory(n, d, b, head="attfc").terms["container"]
    assert "right" not in out(ex.check_rank_container_bytes, webface)
    assert "right" in out(lambda a: ex.check_rank_container_bytes(a, n, d, 16), webface)


def test_the_grader_can_fail():
    """The checks above would notice a grader that leaks or accepts anything."""
    spec = ex.Spec("x", 0.5987, slips=(ex.Slip(0.6667, "exponentiate"),))
    import contextlib
    import io

    def run(answer):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            verdict = ex._grade(answer, spec)
        return verdict, buf.getvalue()

    assert run(0.5987) == ("right", "x: right (within 0.1 %)\n")
    assert run(0.6667)[0] == "wrong" and "exponentiate" in run(0.6667)[1]
    assert run(0.62)[0] == "wrong" and "0.599" not in run(0.62)[1]
    assert run(None) == (None, "x: not answered yet (replace None with your answer)\n")


def test_utils_check_still_says_right_close_wrong(capsys):
    """utils.check, which the exercises no longer use, keeps its behaviour."""
    assert check("x", 1.0, 1.0) == "right"
    assert check("x", 1.0 + 1e-4, 1.0) == "close"
    assert check("x", 2.0, 1.0) == "wrong"
    assert check("x", [1.0, 2.0], [1.0]) == "wrong"  # shape


def test_an_answer_rounded_too_early_is_told_so_without_the_value(capsys):
    import attfc_lite.exercises as ex

    for check, answer in ((ex.check_quality, 0.18), (ex.check_arcface_logit, 27),
                          (ex.check_training_state_bytes, 1.3e10)):
        check(answer)
        out = capsys.readouterr().out
        assert "rounded too early" in out, out
    ex.check_good_images(30)  # a small count one off is not a rounding
    assert "rounded too early" not in capsys.readouterr().out
