"""The exact 1-D density of replacement inpainting's unknown coordinate (docs/math.md I42).

Ground truths: at rho = 0 the coordinates are independent and the replacement chain is the plain
reverse-diffusion chain of the unknown marginal (an exact grid identity); a large Monte-Carlo run of
``sampling.inpaint(method="replacement")`` (KS); the Gauss-Hermite rule's convergence.  Negative
controls: shifted draws fail the same KS test; the correlated case differs from the marginal chain.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from densityformula import models, sampling, schedules, targets
from densityformula.likelihood import chain_density as CD

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments.conditional_generation import MASK, family  # noqa: E402

F64 = torch.float64
GRID = torch.linspace(-6.5, 6.5, 867, dtype=F64)


def test_independent_coordinates_make_replacement_the_plain_marginal_chain() -> None:
    sched = schedules.VPLinear()
    g = family(0.0)  # x_2 ~ N(0, 0.3) independent of x_1
    times = sampling.time_grid(models.AnalyticModel(g, sched), 40)
    rep = CD.replacement_density_1d(models.AnalyticModel(g, sched), times, known=0, value=0.7, grid=GRID)
    marg = models.AnalyticModel(targets.GaussianMixture([1.0], [[0.0]], [0.3]), sched)
    plain = CD.pc_density_1d(marg, times, grid=GRID, corrector_steps=0)
    assert float((rep.density - plain.density).abs().max()) <= 1e-10
    # negative control: with correlated coordinates the replacement chain is a different law
    rep9 = CD.replacement_density_1d(models.AnalyticModel(family(0.9), sched), times, known=0, value=0.7, grid=GRID)
    assert float((rep9.density - plain.density).abs().max()) > 1e-2


def test_replacement_grid_density_is_the_law_of_the_replacement_sampler() -> None:
    sched = schedules.VPLinear()
    g = family(0.9)
    model = models.AnalyticModel(g, sched)
    times = sampling.time_grid(model, 60)
    r = CD.replacement_density_1d(model, times, known=0, value=0.0, grid=GRID)
    with torch.no_grad():
        x = sampling.inpaint(model, MASK, [0.0], sampler="reverse_diffusion", method="replacement", n=40000,
                             times=times, generator=torch.Generator().manual_seed(4))[:, 1].numpy()

    def cdf(u: np.ndarray) -> np.ndarray:
        return r.cdf(torch.as_tensor(u, dtype=F64)).numpy()

    assert kstest(x, cdf).pvalue >= 1e-3
    sd = math.sqrt(float(g.condition(MASK, torch.tensor([0.0], dtype=F64)).covariance()[0, 0]))
    assert kstest(x + 0.05 * sd, cdf).pvalue < 1e-3  # negative control
    assert abs(r.mass - 1) <= 1e-5


def test_gauss_hermite_rule_over_the_known_coordinate_converges() -> None:
    sched = schedules.VPLinear()
    model = models.AnalyticModel(family(0.9), sched)
    times = sampling.time_grid(model, 30)
    d = [CD.replacement_density_1d(model, times, known=0, value=0.0, grid=GRID, nodes=q).density for q in (4, 8, 32)]
    e4, e8 = float((d[0] - d[2]).abs().max()), float((d[1] - d[2]).abs().max())
    assert e8 <= 1e-4 and e8 < e4 / 10


def test_replacement_density_rejects_bad_input() -> None:
    model = models.AnalyticModel(family(0.5), schedules.VPLinear())
    times = sampling.time_grid(model, 10)
    with pytest.raises(ValueError, match="known"):
        CD.replacement_density_1d(model, times, known=2, value=0.0, grid=GRID)
    with pytest.raises(ValueError, match="value"):
        CD.replacement_density_1d(model, times, known=0, value=float("inf"), grid=GRID)
    with pytest.raises(ValueError, match="nodes"):
        CD.replacement_density_1d(model, times, known=0, value=0.0, grid=GRID, nodes=1)
