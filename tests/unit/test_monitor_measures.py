"""The monitor's statistics against textbook values (chi-square tables, Wilson's published intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from control.monitor.measures import (
    PSI_FLOOR,
    bin_shares,
    chi2_sf,
    chi_square,
    chi_square_homogeneity,
    psi,
    wilson,
)


@pytest.mark.parametrize(
    ("statistic", "dof", "p"),
    [(3.841, 1, 0.05), (16.919, 9, 0.05), (21.666, 9, 0.01), (27.877, 9, 0.001), (2.0, 2, math.exp(-1.0)),
     (0.0, 9, 1.0)],
)
def test_chi2_sf_matches_the_table_when_given_critical_values(statistic: float, dof: int, p: float) -> None:
    assert chi2_sf(statistic, dof) == pytest.approx(p, rel=1e-3, abs=1e-9)


def test_chi_square_is_quiet_when_counts_follow_the_shares_and_loud_when_one_class_dominates() -> None:
    shares = np.full(10, 0.1)
    assert chi_square(np.full(10, 50), shares).p_value == pytest.approx(1.0)
    skewed = np.full(10, 30)
    skewed[3] = 230
    result = chi_square(skewed, shares)
    assert result.dof == 9 and result.p_value < 1e-20


def test_chi_square_pools_classes_the_reference_never_predicted_when_their_share_is_zero() -> None:
    result = chi_square([10, 10, 5], [0.5, 0.5, 0.0])
    assert result.dof == 1 and math.isfinite(result.statistic)


def test_wilson_interval_matches_published_values_when_90_of_100() -> None:
    w = wilson(90, 100, 0.95)
    assert (w.estimate, round(w.low, 4), round(w.high, 4)) == (0.9, 0.8256, 0.9448)


def test_wilson_interval_stays_inside_0_1_when_all_or_none_succeed() -> None:
    assert wilson(0, 10).low == pytest.approx(0.0, abs=1e-12) and wilson(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10).high == 1.0 and wilson(10, 10).low == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        wilson(0, 0)


def test_psi_is_zero_when_identical_and_follows_the_formula_when_shifted() -> None:
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)


def test_psi_stays_finite_when_a_bin_is_empty() -> None:
    value = psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    assert math.isfinite(value) and value > 0.25
    assert PSI_FLOOR > 0


def test_bin_shares_uses_open_ends_and_left_closed_bins_when_values_hit_edges() -> None:
    shares = bin_shares([-5.0, 0.15, 0.2, 0.3, 9.0, float("nan")], [None, 0.15, 0.3, None])
    assert shares.tolist() == pytest.approx([0.2, 0.4, 0.4])


def test_chi_square_homogeneity_matches_the_textbook_table_when_two_samples_are_compared() -> None:
    # 2 x 3 table [[10, 20, 30], [20, 20, 20]]: expected 15, 20, 25 in each row, statistic 16/3, dof 2.
    result = chi_square_homogeneity([10, 20, 30], [20, 20, 20])
    assert result.dof == 2 and result.statistic == pytest.approx(16 / 3)
    assert result.p_value == pytest.approx(math.exp(-8 / 3))


def test_chi_square_homogeneity_is_less_alarmed_than_goodness_of_fit_when_the_reference_is_small() -> None:
    counts = np.array([60, 40, 50, 50, 50, 50, 50, 50, 50, 50])
    shares = np.full(10, 0.1)
    assert chi_square_homogeneity(counts, shares * 500).p_value > chi_square(counts, shares).p_value
    assert chi_square_homogeneity([5, 0, 5], [5, 0, 5]).dof == 1  # a class empty in both is dropped
