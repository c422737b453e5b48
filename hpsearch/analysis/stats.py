"""The statistics of the final evaluation, all from scipy: intervals, paired tests, Holm.

- A model's test error is a binomial proportion over the test examples: its 95% interval is
  Wilson's score interval (`scipy.stats.binomtest(...).proportion_ci(method="wilson")`), which
  stays inside [0, 1] and is sensible at 0 errors, unlike the normal approximation.
- The mean error over seeds varies with the seed (initialisation, data order, dropout): its 95%
  interval is Student's t over the per-seed errors (`scipy.stats.ttest_1samp`).
- Two configs evaluated on the same test examples are compared with McNemar's exact test: only
  the examples on which they disagree carry information, and under "no difference" each such
  example is equally likely to favour either config, so the count is Binomial(b + c, 1/2).
- Several pairwise tests at once are corrected with Holm's step-down method, which controls the
  family-wise error rate without assuming independence between the tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

from hpsearch.errors import HPSearchError

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE


def wilson_interval(
    errors: int, n: int, *, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Interval for an error rate of `errors` out of `n` test examples."""
    if n <= 0 or not 0 <= errors <= n:
        raise HPSearchError(f"a proportion needs 0 <= errors <= n and n > 0, got {errors}/{n}")
    ci = stats.binomtest(errors, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def t_interval(
    values: Sequence[float], *, confidence: float = CONFIDENCE,
    within: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float] | None:
    """Student's t interval for the mean of `values`; None for fewer than two values.

    `within` is the range the quantity can take (an error rate: [0, 1]). The t interval is
    symmetric and can leave it when the spread is large next to the mean (errors of 0.00, 0.00
    and 0.03 over three seeds give about [-0.033, 0.053]); it is cut to that range, which keeps
    its coverage, since the true mean lies inside the range anyway."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    # Identical values (a tiny test set, or a fully deterministic run) have zero spread;
    # scipy would warn about catastrophic cancellation and return a rounding-noise interval.
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    ci = stats.ttest_1samp(data, popmean=0.0).confidence_interval(confidence_level=confidence)
    low, high = within
    return max(float(ci.low), low), min(float(ci.high), high)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the same examples."""

    only_a: int  # examples that A gets right and B gets wrong
    only_b: int  # examples that B gets right and A gets wrong
    p_value: float  # two-sided

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b


def mcnemar_exact(only_a: int, only_b: int) -> McNemar:
    """Two-sided exact McNemar test from the discordant counts.

    With no discordant example at all the two classifiers are indistinguishable: p = 1.
    """
    if only_a < 0 or only_b < 0:
        raise HPSearchError(f"discordant counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_a, n, p=0.5).pvalue)
    return McNemar(only_a=only_a, only_b=only_b, p_value=min(p, 1.0))


def mcnemar_paired(
    correct_a: Sequence[bool], correct_b: Sequence[bool]
) -> McNemar:
    """McNemar's exact test from per-example correctness of two classifiers."""
    if len(correct_a) != len(correct_b):
        raise HPSearchError(
            f"a paired test needs the same test examples, got {len(correct_a)} and "
            f"{len(correct_b)} predictions; compare configs evaluated on the same data set"
        )
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    return mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(~a & b)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by (m - i + 1), running maxima keep the
    adjusted values monotone, and they are capped at 1. A hypothesis is rejected at level alpha
    when its adjusted p-value is below alpha. (scipy's `false_discovery_control` offers only the
    Benjamini-Hochberg/Yekutieli false-discovery-rate methods, hence these few lines.)
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def plurality_vote(predictions: Sequence[Sequence[int]]) -> list[int]:
    """Per example, the class most seeds predicted; a tie goes to the earliest seed's choice."""
    if not predictions:
        raise HPSearchError("a vote needs the predictions of at least one model")
    n = len(predictions[0])
    if any(len(p) != n for p in predictions):
        raise HPSearchError("every model must predict the same test examples")
    votes = []
    for column in zip(*predictions):
        counts = Counter(column)
        top = max(counts.values())
        votes.append(next(c for c in column if counts[c] == top))
    return votes


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    data = np.asarray(values, dtype=float)
    std = float(data.std(ddof=1)) if data.size > 1 else 0.0
    return float(data.mean()), std if math.isfinite(std) else 0.0
