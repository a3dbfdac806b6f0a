"""The closed-form Gaussian sampler law over a family that contains the truth (I14, I9).

"The ELBO minimizer is the true denoiser (theta = s)": the family {exact denoiser of N(0, theta^2 I)}
contains the truth N(0, s^2 I), and -E_q[ELBO_theta] is, up to a theta-free constant, a weighted
denoising loss that the exact denoiser minimizes at every step, so its minimizer is s whatever T.
As an experiment claim it could not fail (it was one, in the retired ``minimizers`` experiment); as a
test it guards the closed-form expected ELBO (GaussianSamplerLaw.expected_elbo) and
AffineDenoiser.from_gaussian.
"""
from __future__ import annotations

import pytest
import torch
from scipy.optimize import minimize_scalar

from densityformula import schedules
from densityformula.likelihood import gaussian_sampler
from densityformula.neural import AffineDenoiser

F64 = torch.float64
S = 0.5
D = 2


def _neg_expected_elbo(theta: float, sched: schedules.Discrete) -> float:
    model = AffineDenoiser.from_gaussian(torch.zeros(D, dtype=F64), theta**2 * torch.eye(D, dtype=F64), sched)
    law = gaussian_sampler(model, variance="beta", d=D)
    return -float(law.expected_elbo(torch.zeros(D, dtype=F64), S**2 * torch.eye(D, dtype=F64)))


@pytest.mark.parametrize("T", [25, 50])
def test_elbo_minimizer_over_a_family_containing_the_truth_is_the_truth(T: int) -> None:
    sched = schedules.Discrete.ddpm_linear(T)
    res = minimize_scalar(_neg_expected_elbo, bounds=(0.3, 0.8), method="bounded", args=(sched,),
                          options={"xatol": 1e-9})
    assert abs(float(res.x) - S) <= 1e-6


def test_a_wrong_expected_elbo_moves_the_minimizer() -> None:
    """Negative control: the same search on the ELBO of a wrong target (s = 0.55) does not find 0.5."""
    sched = schedules.Discrete.ddpm_linear(25)

    def wrong(theta: float) -> float:
        model = AffineDenoiser.from_gaussian(torch.zeros(D, dtype=F64), theta**2 * torch.eye(D, dtype=F64), sched)
        law = gaussian_sampler(model, variance="beta", d=D)
        return -float(law.expected_elbo(torch.zeros(D, dtype=F64), 0.55**2 * torch.eye(D, dtype=F64)))

    res = minimize_scalar(wrong, bounds=(0.3, 0.8), method="bounded", options={"xatol": 1e-9})
    assert abs(float(res.x) - S) > 1e-2
