"""bits_per_dim: explicit data scaling and dequantization."""
import math

import pytest
import torch

import densityformula as df
from densityformula.bits import bits_per_dim


def test_uniform_model_on_8bit_data_is_8_bits():
    """A uniform density on [-1, 1]^d (model units) is 8 bits/dim for 8-bit data scaled by 2/256."""
    d = 5
    logp = torch.full((3,), -d * math.log(2.0), dtype=torch.float64)  # log(1/2^d)
    bpd = bits_per_dim(logp, d, data_scale=2.0 / 256)
    assert torch.allclose(bpd, torch.full((3,), 8.0, dtype=torch.float64), atol=1e-12)


def test_matches_change_of_variables_by_simulation():
    """bpd in model units + data_scale equals -log2 density of the data-unit variable (closed form)."""
    d, s = 3, 0.25
    G = df.targets.Gaussian(torch.zeros(d), torch.ones(d))  # model law of y = s u
    u = torch.randn(4, d, dtype=torch.float64) * 4
    y = s * u
    log_pu = G.log_prob(y) + d * math.log(s)  # density of u = y / s
    assert torch.allclose(bits_per_dim(G.log_prob(y), d, data_scale=s), -log_pu / (d * math.log(2)))
    per_dim = torch.full((d,), s, dtype=torch.float64)
    assert torch.allclose(bits_per_dim(G.log_prob(y), d, data_scale=per_dim), -log_pu / (d * math.log(2)))


def test_estimate_in_estimate_out():
    e = df.Estimate(torch.tensor([-1.0, -2.0]), torch.tensor([0.1, 0.2]), 7, 0.5)
    b = bits_per_dim(e, 2, dequantization="none")
    assert isinstance(b, df.Estimate) and b.nfe == 7
    assert torch.allclose(b.stderr, e.stderr / (2 * math.log(2)))


def test_bad_input():
    with pytest.raises(ValueError, match="d"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="dequantization"):
        bits_per_dim(torch.zeros(2), 2, dequantization="variational")
    with pytest.raises(ValueError, match="data_scale"):
        bits_per_dim(torch.zeros(2), 2, data_scale=0.0)
    with pytest.raises(ValueError, match="logp"):
        bits_per_dim(torch.tensor([float("nan")]), 2)
