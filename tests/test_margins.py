"""Margins against hand-computed values and finite differences."""
from __future__ import annotations

import math

import pytest
import torch

from attfc_lite.margins import ArcFace, CombinedMargin, CosFace, make_margin

# Rows of hand-picked cosines; the last row puts its target at a cosine near -1, where
# theta + m > pi for m = 0.5 (theta = acos(-0.95) ~ 2.82 > pi - 0.5 ~ 2.64).
COS = torch.tensor(
    [
        [0.8, -0.1, 0.3],
        [0.2, 0.6, -0.4],
        [-0.3, 0.0, 0.1],
        [0.5, 0.45, -0.95],
    ],
    dtype=torch.float64,
)
TARGET = torch.tensor([0, 1, 2, 2])


def _expected_arcface(c: float, s: float, m: float) -> float:
    theta = math.acos(c)
    return s * (math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m))


def test_arcface_positive_logit_is_s_cos_theta_plus_m():
    s, m = 30.0, 0.5
    got = ArcFace(s=s, m=m)(COS, TARGET)
    for r in range(COS.shape[0]):
        for j in range(COS.shape[1]):
            c = float(COS[r, j])
            want = _expected_arcface(c, s, m) if j == int(TARGET[r]) else s * c
            assert got[r, j].item() == pytest.approx(want, abs=1e-5), (r, j)


def test_arcface_hand_computed_value():
    # cos(acos(0.8) + 0.5) = 0.8 cos 0.5 - 0.6 sin 0.5, written out.
    want = 64.0 * (0.8 * 0.8775825618903728 - 0.6 * 0.479425538604203)
    got = ArcFace(s=64.0, m=0.5)(torch.tensor([[0.8, 0.0]]), torch.tensor([0]))
    assert got[0, 0].item() == pytest.approx(want, rel=1e-5)
    assert got[0, 1].item() == 0.0


def test_arcface_fallback_when_theta_plus_m_exceeds_pi():
    s, m = 10.0, 0.5
    c = torch.tensor([[-0.95, 0.2], [-0.99, 0.2]], dtype=torch.float64)
    assert math.acos(-0.95) + m > math.pi  # the case under test
    got = ArcFace(s=s, m=m)(c, torch.tensor([0, 0]))
    for r, cr in enumerate((-0.95, -0.99)):
        assert got[r, 0].item() == pytest.approx(s * (cr - m * math.sin(m)), abs=1e-6)
        # cos(theta + m) would have been larger (rising again past pi): the fallback is not it.
        assert got[r, 0].item() < s * math.cos(math.acos(cr) + m) - 1e-3


def test_rows_with_target_minus_one_are_only_scaled():
    s = 8.0
    target = torch.tensor([0, -1, 2, -1])
    for margin in (ArcFace(s=s, m=0.5), CosFace(s=s, m=0.35), CombinedMargin(s=s, m1=1.0, m2=0.3, m3=0.2)):
        got = margin(COS, target)
        assert torch.allclose(got[1], s * COS[1]) and torch.allclose(got[3], s * COS[3])
        assert not torch.allclose(got[0, 0], s * COS[0, 0])


def test_all_rows_minus_one_leaves_cosines_scaled():
    got = ArcFace(s=2.0)(COS, torch.full((4,), -1))
    assert torch.allclose(got, 2.0 * COS)


def test_margin_does_not_modify_its_input():
    c = COS.clone()
    ArcFace()(c, TARGET)
    CosFace()(c, TARGET)
    assert torch.equal(c, COS)


def test_cosface_is_s_times_cos_minus_m_on_target():
    s, m = 16.0, 0.35
    got = CosFace(s=s, m=m)(COS, TARGET)
    want = s * COS.clone()
    for r, t in enumerate(TARGET.tolist()):
        want[r, t] = s * (float(COS[r, t]) - m)
    assert torch.allclose(got, want, atol=1e-9)


def test_combined_with_m2_only_equals_arcface_where_defined():
    s, m = 20.0, 0.4
    # Cosines away from the fallback region: theta + m <= pi everywhere.
    c = torch.tensor([[0.9, 0.1], [0.0, -0.5], [-0.8, 0.3], [0.3, 0.3]], dtype=torch.float64)
    t = torch.tensor([0, 1, 0, 1])
    assert all(math.acos(float(c[r, t[r]])) + m <= math.pi for r in range(4))
    assert torch.allclose(CombinedMargin(s=s, m1=1.0, m2=m, m3=0.0)(c, t), ArcFace(s=s, m=m)(c, t), atol=1e-6)


def test_combined_with_m3_only_equals_cosface():
    s, m = 20.0, 0.3
    got = CombinedMargin(s=s, m1=1.0, m2=0.0, m3=m)(COS, TARGET)
    want = s * COS.clone()
    for r, t in enumerate(TARGET.tolist()):
        want[r, t] = s * (float(COS[r, t]) - m)
    assert torch.allclose(got, want, atol=1e-5)


def test_combined_general_value_and_monotone_fallback():
    s, m1, m2, m3 = 1.0, 2.0, 0.2, 0.1
    c = torch.tensor([[0.7, 0.0]], dtype=torch.float64)
    want = math.cos(m1 * math.acos(0.7) + m2) - m3
    assert CombinedMargin(s, m1, m2, m3)(c, torch.tensor([0]))[0, 0].item() == pytest.approx(want, abs=1e-6)
    # Beyond theta_max the logit must keep decreasing as theta grows (cosine falls).
    cs = torch.linspace(0.99, -0.99, 199, dtype=torch.float64).view(-1, 1)
    logits = CombinedMargin(s, m1, m2, m3)(cs, torch.zeros(199, dtype=torch.long))[:, 0]
    assert bool((logits[1:] <= logits[:-1] + 1e-9).all())


def test_arcface_gradient_matches_finite_differences():
    torch.manual_seed(0)
    # Both branches: ordinary cosines and ones past pi - m (fallback); none at the switch point.
    cos = torch.tensor([[0.7, -0.2, 0.1], [0.1, -0.3, 0.5], [-0.2, 0.4, -0.97]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    margin = ArcFace(s=3.0, m=0.5)
    assert torch.autograd.gradcheck(lambda c: margin(c, target), (cos,), eps=1e-6, atol=1e-6)


def test_arcface_positive_gradient_is_autograd_native_not_straight_through():
    # d/dc s*cos(acos(c) + m) = s * (cos m + c sin m / sqrt(1 - c^2)), not s.
    s, m, c0 = 2.0, 0.5, 0.6
    cos = torch.tensor([[c0, 0.0]], dtype=torch.float64, requires_grad=True)
    ArcFace(s=s, m=m)(cos, torch.tensor([0]))[0, 0].backward()
    want = s * (math.cos(m) + c0 * math.sin(m) / math.sqrt(1 - c0 * c0))
    assert cos.grad[0, 0].item() == pytest.approx(want, rel=1e-6)
    assert cos.grad[0, 1].item() == 0.0


def test_cosface_and_combined_gradcheck():
    cos = torch.tensor([[0.7, -0.2], [0.1, -0.3]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1])
    for margin in (CosFace(s=3.0, m=0.35), CombinedMargin(s=3.0, m1=1.5, m2=0.2, m3=0.1)):
        assert torch.autograd.gradcheck(lambda c: margin(c, target), (cos,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "target",
    [
        torch.tensor([0, 1, 3, 0]),  # 3 >= num columns
        torch.tensor([0, 1, -2, 0]),  # below -1
        torch.tensor([0, 1, 2]),  # too short
        torch.tensor([[0], [1], [2], [0]]),  # 2-D
        torch.tensor([0.0, 1.0, 2.0, 0.0]),  # float
    ],
)
def test_bad_target_raises_value_error_naming_target(target):
    for margin in (ArcFace(), CosFace(), CombinedMargin()):
        with pytest.raises(ValueError, match="target"):
            margin(COS, target)


def test_bad_cosine_shape_raises():
    with pytest.raises(ValueError, match="cosine"):
        ArcFace()(torch.zeros(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "build",
    [lambda: ArcFace(s=0), lambda: ArcFace(m=-0.1), lambda: ArcFace(m=2.0), lambda: CosFace(m=1.0),
     lambda: CombinedMargin(m1=0.5)],
)
def test_bad_hyperparameters_raise(build):
    with pytest.raises(ValueError):
        build()


def test_make_margin_by_name_and_unknown_name():
    arc = make_margin("ArcFace", s=5.0, m=0.2)
    assert isinstance(arc, ArcFace) and arc.s == 5.0 and arc.m == 0.2
    assert isinstance(make_margin("cosface"), CosFace)
    assert isinstance(make_margin("combined"), CombinedMargin)
    with pytest.raises(ValueError, match="margin") as info:
        make_margin("sphereface")
    assert "arcface" in str(info.value)  # says what is allowed


def test_combined_m1_1_m3_0_equals_arcface_everywhere_values_and_gradients():
    # Both sides of theta = pi - m, the switch itself, and cos = -1 and 1. Reference values
    # by hand at 155 degrees (past pi - 0.5 rad = 151.4 degrees): cos(155 deg) - 0.5 sin 0.5.
    m = 0.5
    c155 = math.cos(math.radians(155))
    grid = torch.cat([torch.linspace(-1, 1, 4001, dtype=torch.float64),
                      torch.tensor([c155, math.cos(math.pi - m), -1.0, 1.0], dtype=torch.float64)])
    cos = grid.view(-1, 1).clone().requires_grad_(True)
    target = torch.zeros(grid.numel(), dtype=torch.long)
    arc = ArcFace(s=1.0, m=m)(cos, target)
    (g_arc,) = torch.autograd.grad(arc.sum(), cos)
    comb = CombinedMargin(s=1.0, m1=1.0, m2=m, m3=0.0)(cos, target)
    (g_comb,) = torch.autograd.grad(comb.sum(), cos)
    assert torch.equal(arc, comb)
    assert torch.equal(g_arc, g_comb)
    at155 = float(comb.detach()[grid.numel() - 4, 0])
    assert at155 == pytest.approx(c155 - m * math.sin(m), abs=1e-9)  # -1.146, not -1.029
    # The fallback line has slope 1 in cos, at cos = -1 too (no clamp there).
    assert float(g_comb[grid.numel() - 2, 0]) == pytest.approx(1.0)


def test_make_margin_combined_takes_m_as_a_triple():
    built = make_margin("combined", s=10.0, m=(1.0, 0.3, 0.2))
    assert (built.m1, built.m2, built.m3) == (1.0, 0.3, 0.2)
    with pytest.raises(ValueError, match=r"m=\(m1, m2, m3\)"):
        make_margin("combined", m=0.5)


def test_plot_margin_curves_has_a_title_and_labels_the_pi_minus_m_line():
    import matplotlib.pyplot as plt

    from attfc_lite.margins import plot_margin_curves

    ax = plot_margin_curves(s=16.0)
    assert ax.get_title() and "degrees" in ax.get_xlabel() and "s = 16" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == len(ax.get_lines()) == 4  # three curves and the theta = pi - m line
    assert any("π − m" in t and "151.4°" in t for t in texts) and texts[0] == "softmax: 16·cos θ"
    plt.close("all")


def test_plot_margin_2d_has_a_title_axis_labels_and_legend_entries():
    import matplotlib.pyplot as plt

    from attfc_lite.margins import plot_margin_2d

    ax = plot_margin_2d(m=0.5)
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.axison
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["unit circle", "class 1 centre", "class 2 centre", "softmax boundary", "ArcFace boundaries",
                     "margin m = 0.5 rad"]
    plt.close("all")
