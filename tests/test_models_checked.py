"""The model-call boundary (densityformula.models.checked): every output checked, nothing else changed."""
from __future__ import annotations

import pytest
import torch

import densityformula as df
from densityformula.models import CheckedModel, ModelOutputError, checked

X = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class _Fake(df.models.DiffusionModel):
    def __init__(self, out):
        self.schedule = df.schedules.LiYan()
        self.out = out

    def denoise(self, x_t, t):
        return self.out(x_t)


BAD = {
    "broadcastable shape": lambda x: x[:, :1] * 0.0,
    "NaN": lambda x: x * float("nan"),
    "inf": lambda x: x / 0.0,
    "dtype": lambda x: x.float(),
    "not a tensor": lambda x: x.tolist(),
}


@pytest.mark.parametrize("method", ["denoise", "eps", "score", "v"])
@pytest.mark.parametrize("kind", list(BAD))
def test_every_bad_output_is_a_model_output_error_naming_the_method_and_time(kind, method):
    with pytest.raises(ModelOutputError, match=r"_Fake\.denoise\(x_t, t = 0\.5\)"):
        getattr(checked(_Fake(BAD[kind])), method)(X, 0.5)
    # negative control: the unchecked model lets every one of these through without an error (a
    # finite or NaN tensor), except in derived methods a non-tensor and a wrong shape, which the
    # conversion (parameterization.convert) refuses since it no longer broadcasts one (issue 9)
    if method != "denoise" and kind in ("not a tensor", "broadcastable shape"):
        with pytest.raises((TypeError, ValueError)):
            getattr(_Fake(BAD[kind]), method)(X, 0.5)
    elif kind != "not a tensor":
        getattr(_Fake(BAD[kind]), method)(X, 0.5)


def test_outputs_are_bitwise_the_models_and_attributes_are_forwarded():
    gmm = df.targets.random_gmm(2, 3, seed=0)
    m = df.models.AnalyticModel(gmm, df.schedules.VPLinear())
    c = checked(m)
    assert isinstance(c, CheckedModel) and checked(c) is c and c.inner is m
    assert c.target is gmm and c.schedule is m.schedule and c.valid_log_snr == m.valid_log_snr
    assert c.has_exact_divergence and isinstance(c, df.models.ExactDivergence)
    t = torch.full((6,), 0.3, dtype=torch.float64)
    for method in ("denoise", "eps", "score", "v", "score_divergence"):
        assert torch.equal(getattr(c, method)(X, t), getattr(m, method)(X, t)), method
    D, div = c.denoise_and_score_divergence(X, t)
    assert torch.equal(D, m.denoise(X, t)) and torch.equal(div, m.score_divergence(X, t))
    net = df.neural.MLPDenoiser(2, df.schedules.VPLinear(), zero_init_output=False, seed=1)
    assert not checked(net).has_exact_divergence and not isinstance(checked(net), df.models.ExactDivergence)
    assert torch.equal(checked(net).eps(X.float(), 0.3), net.eps(X.float(), 0.3))


def test_per_point_times_are_described_by_their_range():
    t = torch.linspace(0.2, 0.4, 6, dtype=torch.float64)
    with pytest.raises(ModelOutputError, match=r"t in \[0\.2, 0\.4\]"):
        checked(_Fake(BAD["NaN"])).denoise(X, t)
