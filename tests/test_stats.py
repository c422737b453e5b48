"""The final evaluation's statistics against values worked out by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from hpsearch.analysis.stats import (
    holm,
    mcnemar_exact,
    mcnemar_paired,
    plurality_vote,
    t_interval,
    wilson_interval,
)
from hpsearch.errors import HPSearchError

Z = 1.959963984540054  # the 97.5% normal quantile


def wilson_by_formula(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (50, 1000), (10, 10)])
def test_wilson_matches_the_textbook_formula(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    expected = wilson_by_formula(k, n)
    assert low == pytest.approx(expected[0], abs=1e-12)
    assert high == pytest.approx(expected[1], abs=1e-12)


def test_wilson_contains_the_estimate_and_shrinks_as_the_test_set_grows() -> None:
    widths = []
    for n in (20, 200, 2000, 20000):
        errors = n // 20  # 5% error at every size
        low, high = wilson_interval(errors, n)
        assert low <= errors / n <= high
        widths.append(high - low)
    assert all(a > b for a, b in itertools.pairwise(widths))
    # Width falls like 1/sqrt(n): 100x the examples, about a tenth of the width.
    assert widths[0] / widths[2] == pytest.approx(10, rel=0.25)


def test_wilson_at_zero_errors_is_not_degenerate() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(Z**2 / (10 + Z**2))  # about 0.278, not 0 as the Wald interval says


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(HPSearchError, match="11/10"):
        wilson_interval(11, 10)


def test_t_interval_matches_the_t_quantile() -> None:
    values = [0.10, 0.12, 0.11]
    low, high = t_interval(values)  # type: ignore[misc]
    sem = 0.01 / math.sqrt(3)  # sample std of these values is exactly 0.01
    half = 4.302652729749464 * sem  # t(0.975, df=2)
    assert low == pytest.approx(0.11 - half)
    assert high == pytest.approx(0.11 + half)


def test_t_interval_edge_cases() -> None:
    assert t_interval([0.2]) is None
    assert t_interval([0.05, 0.05, 0.05]) == (0.05, 0.05)


def test_t_interval_is_cut_to_the_range_the_quantity_can_take() -> None:
    # Two seeds at 0 errors and one at 3%: the symmetric interval reaches below 0.
    raw = t_interval([0.0, 0.0, 0.03])
    assert raw is not None and raw[0] == pytest.approx(-0.0330265, abs=1e-6)
    assert t_interval([0.0, 0.0, 0.03], within=(0.0, 1.0)) == (0.0, raw[1])
    assert t_interval([0.97, 1.0, 1.0], within=(0.0, 1.0))[1] == 1.0  # type: ignore[index]


def test_t_interval_shrinks_with_more_seeds() -> None:
    pattern = [0.10, 0.12, 0.11, 0.09, 0.13]
    narrow = t_interval(pattern * 4)
    wide = t_interval(pattern)
    assert narrow is not None and wide is not None
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_mcnemar_on_known_discordant_counts() -> None:
    # 1 vs 9 discordant examples: p = 2 * P(X <= 1), X ~ Binomial(10, 1/2) = 2 * 11 / 1024.
    assert mcnemar_exact(1, 9).p_value == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1).p_value == pytest.approx(22 / 1024)
    # 0 vs 6: 2 / 64.
    assert mcnemar_exact(0, 6).p_value == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5).p_value == 1.0
    assert mcnemar_exact(0, 0).p_value == 1.0


def test_mcnemar_counts_only_disagreements() -> None:
    # 100 examples: both right on 80, both wrong on 10, only A right on 9, only B right on 1.
    a = [True] * 80 + [False] * 10 + [True] * 9 + [False] * 1
    b = [True] * 80 + [False] * 10 + [False] * 9 + [True] * 1
    test = mcnemar_paired(a, b)
    assert (test.only_a, test.only_b, test.discordant) == (9, 1, 10)
    assert test.p_value == pytest.approx(22 / 1024)
    with pytest.raises(HPSearchError, match="same test examples"):
        mcnemar_paired(a, b[:-1])


def test_holm_step_down() -> None:
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_plurality_vote_breaks_ties_by_the_earliest_seed() -> None:
    votes = plurality_vote([[0, 1, 2, 3], [0, 2, 2, 4], [1, 2, 1, 5]])
    assert votes == [0, 2, 2, 3]
