"""The samplers' shared interface: t_max/t_min and their aliases, defaults from the model's valid
log-SNR range (I24), prebuilt grids (times=), injectable noise, return_info, sampler properties."""
import contextlib
import math
import warnings

import pytest
import torch

from densityformula import sampling as S
from densityformula.models import AnalyticModel, log_snr_interval
from densityformula.schedules import VE, Discrete, LiYan, VPCosine, VPLinear
from densityformula.targets import Gaussian, GaussianMixture

F64 = torch.float64
STEP_SAMPLERS = ["ddpm", "ddim", "euler_maruyama", "reverse_diffusion", "predictor_corrector"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gmm():
    return GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [[[0.5, 0.1], [0.1, 0.3]], [[0.3, 0.0], [0.0, 0.4]]])


class Ranged(AnalyticModel):
    """An analytic model that claims to be valid on a log-SNR range only (like a trained network)."""

    def __init__(self, target, schedule, valid):
        super().__init__(target, schedule)
        self._valid = valid

    @property
    def valid_log_snr(self):
        return self._valid


def _lam(sch, t):
    return float(sch.log_snr(torch.tensor(t, dtype=F64)))


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_default_times_of_analytic_models_are_the_schedules_ends():
    for sch, t_max in [
        (VPLinear(), 1.0),
        (VE(), 1.0),
        (Discrete.ddpm_linear(100), 100.0),
        (LiYan(), S.default_t_start(LiYan())),  # log-SNR -10: the SDE's coefficients are infinite at t = 1
        (VPCosine(), S.default_t_start(VPCosine())),
    ]:
        model = AnalyticModel(_gmm(), sch)
        assert S.default_times(model) == (t_max, sch.t_min)
        assert torch.equal(S.time_grid(model, 10), S.time_grid(sch, 10, t_max=t_max))


@pytest.mark.parametrize("name", STEP_SAMPLERS + ["probability_flow"])
def test_defaults_follow_the_models_valid_range_and_are_reported(name):
    sch = VPLinear()
    model = Ranged(_gmm(), sch, (-6.0, 7.0))
    assert log_snr_interval(model) == (-6.0, 7.0)
    fn = S.SAMPLERS[name]
    kw = {} if name == "probability_flow" else {"steps": 12}
    with _no_warnings():
        x, info = fn(model, n=50, generator=_gen(0), return_info=True, **kw)
    assert x.shape == (50, 2) and isinstance(info, S.SamplerInfo)
    assert info.log_snr_interval == pytest.approx((-6.0, 7.0), abs=1e-9)
    assert info["t_max"] == info.t_max == float(sch.t_from_log_snr(torch.tensor(-6.0, dtype=F64)))
    assert info.t_min == float(sch.t_from_log_snr(torch.tensor(7.0, dtype=F64)))
    assert info.times[0] == info.t_max and info.times[-1] == info.t_min
    if name == "probability_flow":
        assert info.steps is None and info.nfe > 10
    else:
        assert info.steps == 12 and info.nfe == (24 if name == "predictor_corrector" else 12)
    assert set(vars(info)) == {"t_max", "t_min", "log_snr_interval", "nfe", "steps", "times"}


def test_explicit_times_outside_the_valid_range_warn():
    sch = VPLinear()
    model = Ranged(_gmm(), sch, (-6.0, 7.0))
    t_in = float(sch.t_from_log_snr(torch.tensor(-5.0, dtype=F64)))
    with _no_warnings():
        S.ddpm(model, n=4, steps=5, t_max=t_in, generator=_gen(0))
    with pytest.warns(RuntimeWarning, match="valid range"):
        S.ddpm(model, n=4, steps=5, t_max=1.0, generator=_gen(0))
    with pytest.warns(RuntimeWarning, match="t_min"):
        S.euler_maruyama(model, n=4, steps=5, t_end=0.0, generator=_gen(0))
    with pytest.warns(RuntimeWarning, match="times"):
        S.ddim(model, n=4, times=S.time_grid(sch, 5), generator=_gen(0))
    # an analytic model is valid everywhere: never a warning
    with _no_warnings():
        S.ddpm(AnalyticModel(_gmm(), sch), n=4, steps=5, t_max=1.0, t_min=0.0, generator=_gen(0))


@pytest.mark.parametrize("name", STEP_SAMPLERS + ["probability_flow"])
def test_t_start_and_t_end_are_aliases(name):
    model = AnalyticModel(_gmm(), VPLinear())
    fn = S.SAMPLERS[name]
    kw = {"steps": 8}
    xT = torch.randn(10, 2, generator=_gen(0), dtype=F64)
    a = fn(model, xT, t_max=0.9, t_min=0.05, generator=_gen(1), **kw)
    b = fn(model, xT, t_start=0.9, t_end=0.05, generator=_gen(1), **kw)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="t_start"):
        fn(model, xT, t_max=0.9, t_start=0.9, **kw)
    with pytest.raises(ValueError, match="t_end"):
        fn(model, xT, t_min=0.1, t_end=0.1, **kw)


@pytest.mark.parametrize("sched", ["liyan", "ddpm", "vplinear"])
@pytest.mark.parametrize("name", STEP_SAMPLERS)
def test_times_is_the_grid_the_sampler_would_build(name, sched):
    sch = {"liyan": LiYan, "ddpm": lambda: Discrete.ddpm_linear(60), "vplinear": VPLinear}[sched]()
    model = AnalyticModel(_gmm(), sch)
    fn = S.SAMPLERS[name]
    xT = S.prior_sample(model, 20, t=S.default_times(model)[0], generator=_gen(0))
    a = fn(model, xT, steps=15, generator=_gen(1))
    b = fn(model, xT, times=S.time_grid(model, 15), generator=_gen(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="steps"):
        fn(model, xT, times=S.time_grid(model, 15), steps=15)
    with pytest.raises(ValueError, match="t_max"):
        fn(model, xT, times=S.time_grid(model, 15), t_max=0.5)


def test_probability_flow_on_a_prebuilt_log_snr_grid():
    # finite ends (VE): the grid of steps=16 uniform in log-SNR
    model = AnalyticModel(_gmm(), VE())
    xT = 50 * torch.randn(12, 2, generator=_gen(0), dtype=F64)
    a = S.probability_flow(model, xT, steps=16)
    b, info = S.probability_flow(model, xT, times=S.time_grid(model, 16, spacing="log_snr"), return_info=True)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert info.steps == 16
    # infinite ends (LiYan from t = 1 to 0): bridged by one DDIM step each, as with steps=
    ly = LiYan()
    model = AnalyticModel(_gmm(), ly)
    xT = torch.randn(12, 2, generator=_gen(1), dtype=F64)
    grid = S.time_grid(ly, 12, spacing="log_snr", lam_min=-15.0, lam_max=15.0)
    a = S.probability_flow(model, xT, steps=10, t_max=1.0)
    b = S.probability_flow(model, xT, times=grid)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="fixed-grid"):
        S.probability_flow(model, xT, times=grid, method="dopri5")


def test_noise_sampler_is_checked():
    model = AnalyticModel(_gmm(), VPLinear())
    with pytest.raises(ValueError, match="noise_sampler"):
        S.ddpm(model, n=3, steps=4, noise_sampler=lambda x, i: torch.zeros(1))
    with pytest.raises(TypeError, match="noise_sampler"):
        S.ddpm(model, n=3, steps=4, noise_sampler=3)
    # zero noise: DDIM with eta = 1 and noise off equals its deterministic mean path
    xT = torch.randn(5, 2, generator=_gen(0), dtype=F64)
    out = S.ddim(model, xT, steps=6, eta=1.0, noise_sampler=lambda x, i: torch.zeros_like(x))
    assert bool(torch.isfinite(out).all())


def test_time_grid_accepts_a_model_and_the_new_names():
    sch = VPLinear()
    model = Ranged(_gmm(), sch, (-6.0, 7.0))
    g = S.time_grid(model, 10, spacing="log_snr")
    torch.testing.assert_close(sch.log_snr(g), torch.linspace(-6.0, 7.0, 11, dtype=F64), rtol=0, atol=1e-9)
    assert torch.equal(S.time_grid(sch, 4, t_max=0.8, t_min=0.2), S.time_grid(sch, 4, t_start=0.8, t_end=0.2))
    with pytest.raises(ValueError, match="t_start"):
        S.time_grid(sch, 4, t_max=0.8, t_start=0.8)
    with pytest.raises(TypeError, match="schedule"):
        S.time_grid("vp", 4)


def test_sampler_properties_replace_the_name_check():
    for name, fn in S.SAMPLERS.items():
        assert isinstance(fn, S.Sampler), name
        assert fn.step_based == (name != "probability_flow")
        assert fn.stochastic == (name != "probability_flow")
    gmm = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [torch.eye(3, dtype=F64).tolist()])
    model = AnalyticModel(gmm, VPLinear())
    mask = torch.tensor([True, False, False])

    def probability_flow(model, x_T, **kw):  # a user's step-based sampler: its name does not matter
        return S.ddpm(model, x_T, **kw)

    x = S.inpaint(model, mask, [0.3], n=6, sampler=probability_flow, steps=10, generator=_gen(0))
    assert x.shape == (6, 3) and bool((x[:, 0] == 0.3).all())
    with pytest.raises(ValueError, match="step-based"):
        S.inpaint(model, mask, [0.3], n=4, sampler=S.probability_flow)


def test_guided_model_keeps_the_base_models_contract():
    sch = VPLinear()
    base = Ranged(_gmm(), sch, (-6.0, 7.0))
    guided = S.GuidedModel(base, S.gmm_class_log_likelihood(_gmm(), sch, 0))
    assert guided.valid_log_snr == (-6.0, 7.0) and guided.d == 2 and guided.dtype == F64
    assert S.default_times(guided) == S.default_times(base)
    with pytest.raises(TypeError, match="model"):
        S.GuidedModel(object(), lambda x, t: x.sum(1))


def test_gaussian_target_one_dimensional_shape_defaults():
    model = AnalyticModel(Gaussian(torch.tensor([1.0], dtype=F64), torch.tensor([[0.25]], dtype=F64)), VPLinear())
    x = S.ddpm(model, n=7, steps=5, generator=_gen(0))
    assert x.shape == (7, 1) and math.isfinite(float(x.sum()))
