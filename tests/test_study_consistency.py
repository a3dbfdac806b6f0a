"""The time-consistency defect (densityformula.study.consistency_defect; docs/math.md I29): zero for a
model whose denoisers are those of one law, clearly positive for a per-step model perturbed at one step."""
from __future__ import annotations

import pytest
import torch

from densityformula import schedules, targets
from densityformula.models import AffineDenoiser
from densityformula.study import MixtureDenoiser, consistency_defect, per_step_family

F64 = torch.float64
Q = targets.GaussianMixture([0.3, 0.7], [[-1.0], [1.0]], [0.2, 0.3])
R = targets.GaussianMixture([0.5, 0.5], [[-0.8], [1.2]], [0.3, 0.2])


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("T", [6, 20])
def test_exact_gaussian_denoisers_have_zero_chain_defect(variance: str, T: int) -> None:
    """The tower property makes the chain's E[x_0 | x_k] equal an affine consistent D_k at every T."""
    sched = schedules.Discrete.ddpm_cosine(T)
    model = AffineDenoiser.from_gaussian([0.3], [[0.6]], sched)
    r = consistency_defect(model, Q, variance=variance)
    assert r.variant == "chain" and r.measure == "target"
    assert r.value < 1e-14 and r.error < 1e-14


def test_mixture_family_defect_is_small_and_falls_with_T() -> None:
    """A mixture model's own exact denoisers: the defect (Gaussian-kernel error of the chain only)
    falls with T and is far below that of a per-step model perturbed at one step."""
    values = []
    for T in (8, 16, 32):
        sched = schedules.Discrete.ddpm_cosine(T)
        r = consistency_defect(MixtureDenoiser.from_mixture(R, sched), Q)
        assert r.error < 1e-2 * r.value
        values.append(r.value)
    assert values[0] > values[1] > values[2] and values[0] < 1e-4, values
    sched = schedules.Discrete.ddpm_cosine(32)
    fam = per_step_family(sched, data_var=float(Q.covariance()[0, 0]))
    with torch.no_grad():
        fam.model.theta[16, 3] = 0.1  # type: ignore[index]
    assert consistency_defect(fam, Q).value > 20 * values[2]


def test_per_step_defect_starts_at_the_perturbed_step() -> None:
    """Unperturbed, the per-step family is the exact Gaussian denoiser (defect ~0: the negative
    control); perturbed at step k0 the defect is zero below k0 and positive from k0 on."""
    sched = schedules.Discrete.ddpm_cosine(20)
    fam = per_step_family(sched, data_var=0.8)
    base = consistency_defect(fam, Q)
    assert base.value < 1e-14
    k0 = 9
    with torch.no_grad():
        fam.model.theta[k0, 2] = 0.2  # type: ignore[index]
    r = consistency_defect(fam, Q)
    assert float(r.per_step[: k0 - 1].abs().max()) < 1e-14
    assert float(r.per_step[k0 - 1]) > 1e-5 and r.value > 1e-5
    assert r.value > 1e8 * base.value + 1e-6


def test_other_variants_vanish_as_T_grows_for_a_consistent_model() -> None:
    """``output`` and ``tweedie`` compare with the sampler's laws, which match the model's own law
    only as T grows: their defect for an exact Gaussian denoiser falls roughly like 1/T^2."""
    for variant in ("output", "tweedie"):
        vals = [consistency_defect(AffineDenoiser.from_gaussian([0.3], [[0.6]], schedules.Discrete.ddpm_cosine(T)),
                                   Q, variant=variant, grid_error=False).value for T in (10, 40)]
        assert vals[1] < vals[0] / 8, (variant, vals)
    with pytest.raises(ValueError, match="variant"):
        consistency_defect(AffineDenoiser(1, schedules.Discrete.ddpm_cosine(5)), Q, variant="exact")
