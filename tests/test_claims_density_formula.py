"""What the density_formula experiment no longer claims separately (issue 10): schedules of the same log-SNR range.

The log-SNR form of the formula (docs/math.md I6) is schedule-free: on the same noise, schedules
that reach the same log-SNR range give the same estimate.  The experiment therefore makes one
claim per range (LiYan with VPCosine, VPLinear with SubVP); this test guards what the dropped
duplicates used to: the schedules' alpha, sigma and t(lambda) as the estimator uses them.
(The eps, denoiser and score forms, the same algebra on the same noise, are compared in
tests/test_density_formula.py::test_forms_agree.)
"""
import pytest
import torch

from densityformula import models, schedules, targets
from densityformula.formula import density_formula

CHEAP = dict(n_nodes=16, n_noise=4, n_replicates=4)


@pytest.mark.parametrize(
    "a, b, atol",
    [(schedules.LiYan, schedules.VPCosine, 1e-12), (schedules.VPLinear, schedules.SubVP, 1e-4)],
    ids=["LiYan=VPCosine", "VPLinear=SubVP"],
)
def test_schedules_of_the_same_log_snr_range_give_the_same_estimate(a, b, atol):
    g = targets.random_gmm(2, 3, seed=4)
    x = g.sample(6, generator=torch.Generator().manual_seed(1))
    ea = density_formula(models.AnalyticModel(g, a()), x, seed=3, **CHEAP)
    eb = density_formula(models.AnalyticModel(g, b()), x, seed=3, **CHEAP)
    ra, rb = ea.extras["lambda_range"], eb.extras["lambda_range"]
    assert abs(ra[0] - rb[0]) < 1e-3 and abs(ra[1] - rb[1]) < 1e-3
    assert torch.allclose(ea.value, eb.value, rtol=0, atol=atol), float((ea.value - eb.value).abs().max())
    assert torch.allclose(ea.stderr, eb.stderr, rtol=0, atol=atol)
    # VPLinear's and SubVP's lower ends differ by 4e-5 in log-SNR, which moves the nodes (~1e-6 nats);
    # a schedule of another range does not give the same number (the comparison can fail)
    ec = density_formula(models.AnalyticModel(g, schedules.VE()), x, seed=3, **CHEAP)
    assert float((ec.value - ea.value).abs().max()) > 10 * atol
