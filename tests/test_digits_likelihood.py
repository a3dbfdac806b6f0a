"""The computations of experiments/digits_likelihood.py that are not library calls, pinned to closed forms.

* the DDPM grid is uniform in log-SNR on the common interval;
* the training-loss Monte Carlo of the truncated continuous ELBO (I8, I22) equals its closed form for the
  standard normal target, ``log q(x) - (d - |x|^2)(sigmoid(-hi) + sigmoid(lo)) / 2``: for ``q = N(0, I)`` the
  log-SNR integrand of I6 is ``sigmoid(lambda) sigmoid(-lambda) (d - |x|^2)``, whose integral beyond
  ``[lo, hi]`` is that of ``d sigmoid(lambda) / d lambda``;
* bits/dim carry the data-scaling Jacobian ``64 log(2/17)``.
"""
import math

import pytest
import torch

from densityformula import models, schedules, targets
from densityformula.data import digits_log_det_jacobian
from experiments import digits_likelihood as digits

D = digits.D


def _standard_normal() -> targets.GaussianMixture:
    return targets.GaussianMixture([1.0], torch.zeros(1, D, dtype=torch.float64),
                                   torch.eye(D, dtype=torch.float64)[None])


def _truncated_elbo(x: torch.Tensor) -> torch.Tensor:
    """Closed form of the continuous ELBO of the exact N(0, I) model on log-SNR ``LAMBDA`` (module docstring)."""
    lo, hi = digits.LAMBDA
    logq = -0.5 * (D * math.log(2 * math.pi) + (x**2).sum(-1))
    tails = 1 / (1 + math.exp(hi)) + 1 / (1 + math.exp(-lo))  # sigmoid(-hi) + sigmoid(lo)
    return logq - 0.5 * (D - (x**2).sum(-1)) * tails


def test_ddpm_grid_is_uniform_in_log_snr() -> None:
    T = 50
    grid = digits.ddpm_grid(T)
    lo, hi = digits.LAMBDA
    assert grid.T == T
    torch.testing.assert_close(grid.log_snrs[1:], torch.linspace(hi, lo, T, dtype=torch.float64), atol=1e-9, rtol=0)


def test_training_loss_elbo_matches_closed_form_for_standard_normal() -> None:
    gmm = _standard_normal()
    model = models.AnalyticModel(gmm, schedules.VPCosine())
    g = torch.Generator().manual_seed(0)
    # points near and far from the mode (the truncation term, ~1e-4 (d - |x|^2) nats, is below the noise)
    x = torch.cat([0.3 * torch.randn(3, D, generator=g, dtype=torch.float64),
                   2.0 * torch.randn(3, D, generator=g, dtype=torch.float64)])
    est = digits._elbo_loss_mc(model, x, strata=64, reps=8, gen=torch.Generator().manual_seed(1))
    truth = _truncated_elbo(x)
    z = (est.value - truth) / est.stderr
    assert bool((z.abs() < 5).all()), (est.value - truth, est.stderr)
    # the check has power: a shift of 0.05 nats/dim (3.2 nats, the size of the experiment's controls) fails it
    assert float(((est.value - truth - 0.05 * D) / est.stderr).abs().max()) > 5
    assert bool((est.stderr > 0).all())


def test_bits_per_dim_carries_the_jacobian() -> None:
    logp = torch.tensor([-10.0, 0.0, 25.0], dtype=torch.float64)
    expected = -(logp + digits_log_det_jacobian()) / (D * math.log(2))
    torch.testing.assert_close(digits._bpd(logp), expected, atol=1e-12, rtol=0)
    assert digits_log_det_jacobian() == pytest.approx(D * math.log(digits.DATA_SCALE), abs=1e-12)
