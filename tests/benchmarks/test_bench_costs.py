"""The cost-curve benchmark's arithmetic: log-log fits with residuals and the 20% ratio check."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_costs  # noqa: E402


def test_fit_recovers_power_law_and_residuals():
    exact = bench_costs.fit([1e5, 1e6, 1e7], [2e-3 * (p / 1e5) ** 1.5 for p in (1e5, 1e6, 1e7)])
    assert exact["exponent"] == pytest.approx(1.5, abs=1e-12)
    assert exact["rms_log10"] == pytest.approx(0.0, abs=1e-12)
    # log10 y = 0, 1.1, 2 at log10 x = 0, 1, 2: slope 1, intercept 1/30, residuals -1/30, +2/30, -1/30.
    noisy = bench_costs.fit([1.0, 10.0, 100.0], [1.0, 10 ** 1.1, 100.0])
    assert noisy["exponent"] == pytest.approx(1.0, abs=1e-12)
    assert noisy["intercept"] == pytest.approx(1 / 30, abs=1e-12)
    assert noisy["residuals_log10"] == pytest.approx([-1 / 30, 2 / 30, -1 / 30], abs=1e-12)
    assert noisy["rms_log10"] == pytest.approx(math.sqrt(6) / 30 / math.sqrt(3), abs=1e-12)
    assert bench_costs.fit([1.0], [1.0]) is None


def _rows(hvp: float, ggn: float) -> list[dict]:
    base = {"library": "wdecomp", "size": "1e6", "seqs": 8}
    return [base | {"stage": "gradient", "seconds": 0.1}, base | {"stage": "hvp", "seconds": hvp},
            base | {"stage": "ggn", "seconds": ggn}]


def test_ratio_growth_over_20_percent_is_flagged():
    previous = {"rows": _rows(hvp=0.2, ggn=0.2)}
    lines = bench_costs.regressions(_rows(hvp=0.3, ggn=0.22), 8, previous, None)
    hvp = next(line for line in lines if "hvp/gradient" in line)
    ggn = next(line for line in lines if "ggn/gradient" in line)
    assert "+50%" in hvp and "REGRESSION" in hvp
    assert "+10%" in ggn and "REGRESSION" not in ggn
