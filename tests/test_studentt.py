"""The finalists' Student-t quantile (tuner/search/studentt.py) against the published table."""

from __future__ import annotations

from statistics import NormalDist

import pytest

from tuner.search.studentt import t_quantile, two_sided_probability

# Two-sided quantiles as printed in the usual t tables (4 decimals): level -> {df: t}.
TABLE = {
    0.90: {1: 6.3138, 2: 2.9200, 3: 2.3534, 4: 2.1318, 5: 2.0150, 10: 1.8125, 20: 1.7247,
           30: 1.6973, 120: 1.6577},
    0.95: {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646,
           8: 2.3060, 9: 2.2622, 10: 2.2281, 20: 2.0860, 30: 2.0423, 120: 1.9799},
    0.99: {1: 63.6567, 2: 9.9248, 3: 5.8409, 4: 4.6041, 5: 4.0321, 10: 3.1693, 20: 2.8453,
           30: 2.7500, 120: 2.6174},
}


@pytest.mark.parametrize("level", sorted(TABLE))
def test_quantiles_match_the_table(level: float) -> None:
    for df, printed in TABLE[level].items():
        assert t_quantile(level, df) == pytest.approx(printed, abs=6e-5), (level, df)


def test_the_quantile_is_where_the_probability_reaches_the_level() -> None:
    for df in range(1, 40):
        for level in (0.5, 0.95, 0.999):
            t = t_quantile(level, df)
            assert two_sided_probability(t, df) == pytest.approx(level, abs=1e-12)
            assert two_sided_probability(t * 0.999, df) < level < two_sided_probability(t * 1.001, df)


def test_many_degrees_of_freedom_approach_the_normal() -> None:
    normal = NormalDist().inv_cdf(0.975)  # 1.95996...
    assert t_quantile(0.95, 5000) == pytest.approx(normal, rel=3e-4)
    assert t_quantile(0.95, 5000) > normal  # t's tails are heavier at any finite df


@pytest.mark.parametrize("level, df", [(0.0, 3), (1.0, 3), (1.5, 3), (0.95, 0), (0.95, -2)])
def test_bad_arguments_are_refused(level: float, df: int) -> None:
    with pytest.raises(ValueError):
        t_quantile(level, df)
