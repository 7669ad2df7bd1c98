"""The monitor's statistics, pure functions over numbers: PSI, the chi-square tests (goodness of fit, and
homogeneity of two samples), the Wilson interval of a proportion. No database, no server: the unit tests
drive them with known values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from control.monitor.contract import finite_edges

# Empty bins get this share before the logarithm (PSI is infinite otherwise). 1e-4 is the usual choice:
# a bin empty on one side then adds at most about share * 9.2 to the PSI.
PSI_FLOOR = 1e-4


def bin_shares(values: Sequence[float] | np.ndarray, edges: Sequence[float | None]) -> np.ndarray:
    """Share of `values` in each bin of the reference's edges (open ends; len(edges) - 1 bins)."""
    cuts = np.asarray(finite_edges(edges), dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(len(cuts) - 1)
    # Bin i holds cuts[i] <= x < cuts[i+1]; the inner cuts decide, the open ends catch the rest.
    idx = np.searchsorted(cuts[1:-1], x, side="right")
    return np.bincount(idx, minlength=len(cuts) - 1).astype(np.float64) / x.size


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index between two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above)."""
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for a chi-square variable with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _gamma_q(dof / 2.0, statistic / 2.0)


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float


def chi_square(counts: Sequence[int] | np.ndarray, expected_shares: Sequence[float] | np.ndarray) -> ChiSquare:
    """Goodness of fit of observed class counts to the reference's class shares.

    Classes the reference never predicted (share 0) are pooled with the smallest class, so a share of 0
    cannot divide by zero; degrees of freedom = classes kept - 1.
    """
    obs = np.asarray(counts, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    if obs.shape != shares.shape:
        raise ValueError(f"counts ({obs.shape}) and shares ({shares.shape}) differ in length")
    n = obs.sum()
    if n <= 0:
        raise ValueError("chi-square over an empty window")
    keep = shares > 0
    if not keep.all():
        smallest = int(np.argmin(np.where(keep, shares, np.inf)))
        obs[smallest] += obs[~keep].sum()
        obs, shares = obs[keep], shares[keep]
    expected = shares / shares.sum() * n
    stat = float(np.sum((obs - expected) ** 2 / expected))
    dof = max(int(obs.size) - 1, 1)
    return ChiSquare(stat, dof, chi2_sf(stat, dof))


def chi_square_homogeneity(counts: Sequence[int] | np.ndarray, reference_counts: Sequence[float] | np.ndarray
                           ) -> ChiSquare:
    """Chi-square test that two samples of class counts come from one distribution (a 2 x k table).

    Used when the reference is itself a sample (reference.json's class shares come from a few hundred
    held-out images): the goodness-of-fit test would treat its shares as exact and raise false alarms on
    the reference's own sampling noise. Classes empty in both samples are dropped.
    """
    a = np.asarray(counts, dtype=np.float64)
    b = np.asarray(reference_counts, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"counts ({a.shape}) and reference counts ({b.shape}) differ in length")
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    na, nb = a.sum(), b.sum()
    if na <= 0 or nb <= 0:
        raise ValueError("chi-square over an empty sample")
    col = a + b
    ea, eb = col * na / (na + nb), col * nb / (na + nb)
    stat = float(np.sum((a - ea) ** 2 / ea) + np.sum((b - eb) ** 2 / eb))
    dof = max(int(a.size) - 1, 1)
    return ChiSquare(stat, dof, chi2_sf(stat, dof))


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the normal approximation)."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must be within 0..{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))
