"""The one conversion between x0 / eps / score / v (docs/math.md section 2, I1).

Reference: build ``x_t = alpha x_0 + sigma eps`` from known ``x_0`` and ``eps``; every conversion
must then return the known quantity (``score`` is that of the Gaussian kernel, ``-eps/sigma``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densityformula import parameterization as P

F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)


def scale(value: np.ndarray, kind: str, n: int):
    if kind == "float":
        return float(value[0])
    if kind == "0d":
        return torch.tensor(float(value[0]), dtype=F64)
    return torch.tensor(value, dtype=F64)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(5, 1), (5, 3), (4, 2, 3, 3)]),
    kind=st.sampled_from(["float", "0d", "per_point"]),
    vp=st.booleans(),
)
def test_conversions_recover_known_truth(seed, shape, kind, vp):
    rng = np.random.default_rng(seed)
    n = shape[0]
    a = rng.uniform(0.05, 1.0, size=n)
    s = np.sqrt(1 - a**2) if vp else rng.uniform(0.05, 3.0, size=n)
    if kind != "per_point":
        a, s = np.full(n, a[0]), np.full(n, s[0])
    x0 = torch.tensor(rng.normal(size=shape), dtype=F64)
    eps = torch.tensor(rng.normal(size=shape), dtype=F64)
    bshape = (n,) + (1,) * (len(shape) - 1)
    at, st_ = torch.tensor(a, dtype=F64).reshape(bshape), torch.tensor(s, dtype=F64).reshape(bshape)
    xt = at * x0 + st_ * eps
    A, Sg = scale(a, kind, n), scale(s, kind, n)
    # error budget: O(eps) relative on each term, divided by the smaller scale
    tol = 64 * EPS * (1 + float(xt.abs().max())) / min(a.min(), s.min())

    def close(u, v):
        assert float((u - v).abs().max()) <= tol * (1 + float(v.abs().max()))

    close(P.x0_to_eps(xt, x0, A, Sg), eps)
    close(P.eps_to_x0(xt, eps, A, Sg), x0)
    score = -eps / st_
    close(P.eps_to_score(eps, Sg), score)
    close(P.score_to_eps(score, Sg), eps)
    v = at * eps - st_ * x0
    close(P.x0_to_v(xt, x0, A, Sg), v)
    close(P.eps_x0_to_v(eps, x0, A, Sg), v)
    close(P.v_to_x0(xt, v, A, Sg), x0)
    truth = {"x0": x0, "eps": eps, "score": score, "v": v}
    for k in P.KINDS:
        out = P.from_x0(k, x0, xt, A, Sg)
        close(out, truth[k])
        close(P.to_x0(k, out, xt, A, Sg), x0)
        for k2 in P.KINDS:  # the one entry point, any kind to any kind
            close(P.convert(k, k2, truth[k], xt, A, Sg), truth[k2])
    assert P.x0_to_eps(xt, x0, A, Sg).shape == shape


def test_float32_stays_float32():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0.5, 0.6, 0.7, 0.8], dtype=F64)
    s = torch.sqrt(1 - a**2)
    for k in P.KINDS:
        assert P.from_x0(k, x, x, a, s).dtype == torch.float32


def test_bad_kind_named():
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="kind"):
        P.to_x0("epsilon", x, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="kind"):
        P.from_x0("noise", x, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="source"):
        P.convert("noise", "x0", x, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="target"):
        P.convert("x0", "noise", x, x, 1.0, 1.0)


def test_convert_routes_eps_and_score_directly():
    """``eps <-> score`` never pass through ``x0`` (I1): exact where ``alpha = 0``; identity is ``out`` itself."""
    g = torch.Generator().manual_seed(1)
    xt, eps = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, 2, generator=g, dtype=F64)
    a, s = torch.tensor([0.0, 0.0, 0.5], dtype=F64), torch.tensor([1.0, 2.0, 0.8], dtype=F64)
    score = P.convert("eps", "score", eps, xt, a, s)
    assert torch.equal(score, -eps / s[:, None])
    assert torch.equal(P.convert("score", "eps", score, xt, a, s), P.score_to_eps(score, s))
    for k in P.KINDS:
        assert P.convert(k, k, eps, xt, a, s) is eps
    # v from an eps prediction uses that eps: alpha eps - sigma x0 (x0 derived once)
    v = P.convert("eps", "v", eps, xt, 0.6, 0.8)
    torch.testing.assert_close(v, 0.6 * eps - 0.8 * P.eps_to_x0(xt, eps, 0.6, 0.8), rtol=0, atol=0)
