"""``Estimate``: fields, repr, confidence intervals, pandas frame."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy import stats

from densityformula import Estimate

F64 = torch.float64


def make(n: int = 5) -> Estimate:
    v = torch.linspace(-3.0, 1.0, n, dtype=F64)
    se = torch.linspace(0.1, 0.5, n, dtype=F64)
    return Estimate(value=v, stderr=se, nfe=64, seconds=0.25, extras={"truncation_bound": 1e-6})


def test_fields_and_len():
    e = make()
    assert len(e) == 5 and e.nfe == 64 and e.seconds == 0.25
    assert e.extras["truncation_bound"] == 1e-6
    a = Estimate(torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), 1, 0.0)
    b = Estimate(torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64), 1, 0.0)
    a.extras["x"] = 1
    assert "x" not in b.extras  # no shared mutable default


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_ci_uses_normal_quantile(level):
    e = make()
    lo, hi = e.ci(level)
    z = stats.norm.ppf(0.5 + level / 2)
    torch.testing.assert_close(lo, e.value - z * e.stderr, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(hi, e.value + z * e.stderr, rtol=1e-14, atol=1e-14)
    assert bool((lo <= e.value).all() and (e.value <= hi).all())


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_ci_bad_level(level):
    with pytest.raises(ValueError, match="level"):
        make().ci(level)


def test_mean_combines_stderr():
    e = make()
    m, se = e.mean()
    assert m == pytest.approx(float(e.value.mean()), rel=1e-15)
    assert se == pytest.approx(math.sqrt(float((e.stderr**2).sum())) / 5, rel=1e-14)


def test_to_frame():
    e = make()
    f = e.to_frame()
    assert isinstance(f, pd.DataFrame)
    assert list(f.columns) == ["value", "stderr"] and len(f) == 5
    assert f["value"].tolist() == e.value.tolist() and f["stderr"].tolist() == e.stderr.tolist()
    assert f.attrs["nfe"] == 64 and f.attrs["seconds"] == 0.25
    f32 = Estimate(torch.ones(2), torch.zeros(2), 1, 0.0).to_frame()
    assert str(f32["value"].dtype) == "float64"
    g = Estimate(torch.ones(2, dtype=F64, requires_grad=True) * 2, torch.zeros(2, dtype=F64), 1, 0.0).to_frame()
    assert g["value"].tolist() == [2.0, 2.0]


def test_repr_is_readable():
    r = repr(make())
    assert r.startswith("Estimate(n=5")
    assert "nfe=64/point" in r and "seconds=0.25" in r
    assert "truncation_bound" in r or "extras" in r  # extras are announced (by name or by count)
    assert "-3" in r and "..." in r  # the first values, then an ellipsis
    assert "mean=" in r and "±" in r
    assert repr(Estimate(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64), 0, 0.0)).startswith("Estimate(n=0")
    short = repr(Estimate(torch.tensor([1.5], dtype=F64), torch.tensor([0.1], dtype=F64), 3, 1.0))
    assert "1.5" in short and "..." not in short


def test_bad_construction():
    with pytest.raises(ValueError, match="value"):
        Estimate(torch.zeros(2, 2), torch.zeros(2, 2), 1, 0.0)
    with pytest.raises(ValueError, match="value"):
        Estimate([1.0, 2.0], torch.zeros(2), 1, 0.0)
    with pytest.raises(ValueError, match="stderr"):
        Estimate(torch.zeros(3), torch.zeros(2), 1, 0.0)
    with pytest.raises(ValueError, match="stderr"):
        Estimate(torch.zeros(3), None, 1, 0.0)
