"""The public API keeps working: every name the package exposes today, and every name its
documents use (README's tour, docs/architecture.md), is still there after any refactoring.

"Add, don't rename": modules may move (``models.py`` -> ``models/``, ``training.py`` ->
``training/``, the density-formula module renamed), but each name below stays reachable from the
public module it is listed under.  Only public module paths are imported here.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

import pytest

import densityformula as df

ROOT = Path(__file__).resolve().parent.parent

#: ``densityformula.__all__`` as of issue 8 (it may grow, never shrink)
TOP_LEVEL = [
    "schedules", "targets", "models", "parameterization", "neural", "training", "data", "sampling",
    "Estimate", "density_formula", "density_formula_discrete", "elbo", "likelihood", "bits_per_dim",
    "__version__",
]

#: each public submodule's ``__all__`` as of issue 8 (each may grow, never shrink)
SUBMODULE_ALL: Dict[str, List[str]] = {
    "schedules": ["Schedule", "LiYan", "VPLinear", "VPCosine", "SubVP", "VE", "Discrete"],
    "targets": ["GaussianMixture", "Gaussian", "random_gmm"],
    "models": ["DiffusionModel", "AnalyticModel", "log_snr_interval", "check_model"],
    "parameterization": [
        "KINDS", "x0_to_eps", "eps_to_x0", "eps_to_score", "score_to_eps", "x0_to_v", "eps_x0_to_v",
        "v_to_x0", "to_x0", "from_x0",
    ],
    "neural": ["MLPDenoiser", "ConditionalMLPDenoiser", "ConditionedModel", "AffineDenoiser", "log_snr_embedding"],
    "training": ["WEIGHTINGS", "TIME_SAMPLINGS", "DenoisingLoss", "denoising_loss", "Trainer"],
    "data": [
        "DIGITS_LEVELS", "DIGITS_SHAPE", "DIGITS_SCALES", "load_digits", "load_digits_raw",
        "digits_log_det_jacobian", "digits_split", "Digits",
    ],
    "sampling": [
        "ddpm", "ddim", "euler_maruyama", "reverse_diffusion", "predictor_corrector", "langevin_step",
        "probability_flow", "SAMPLERS", "GuidedModel", "gmm_class_log_likelihood",
        "gmm_inpainting_log_likelihood", "inpaint", "time_grid", "prior_sample", "default_t_start",
        "LAM_MIN", "LAM_MAX", "energy_distance", "energy_test", "EnergyTest", "ks_test", "mixture_cdf",
    ],
    "elbo": ["ddpm", "ddpm_objective", "importance_weighted", "continuous", "kl_de_bruijn"],
    "likelihood": [
        "probability_flow", "pf_velocity", "sampler_density_1d", "SamplerDensity1D", "gaussian_sampler",
        "GaussianSamplerLaw", "gaussian_kl",
    ],
}

#: the reverse-process module's public functions (docs/math.md section 8)
REVERSE = [
    "ReverseKernels", "ddpm_kernels", "em_kernels", "sampler_kernels", "input_scale", "same_discrete",
    "default_discrete", "pf_coefficients", "pf_velocity",
]

#: names used by README.md's tour and table, docs/architecture.md, the notebooks and the
#: experiments, written out literally (attribute paths from ``import densityformula as df``)
DOCUMENTED = [
    # README tour
    "df.targets.random_gmm", "df.schedules.LiYan", "df.models.AnalyticModel", "df.density_formula",
    "df.elbo.ddpm", "df.likelihood.probability_flow", "df.sampling.ddim",
    "df.targets.GaussianMixture.log_prob", "df.targets.GaussianMixture.sample",
    "df.targets.GaussianMixture.to", "df.targets.GaussianMixture.mean",
    "df.models.AnalyticModel.score", "df.Estimate.value", "df.Estimate.stderr",
    "df.models.MLPDenoiser", "df.schedules.VPLinear", "df.training.Trainer", "df.training.Trainer.train",
    # README module table
    "df.schedules.VPCosine", "df.schedules.SubVP", "df.schedules.VE", "df.schedules.Discrete",
    "df.schedules.Discrete.ddpm_linear", "df.schedules.Discrete.ddpm_cosine",
    "df.schedules.Schedule.alpha", "df.schedules.Schedule.sigma", "df.schedules.Schedule.log_snr",
    "df.schedules.Schedule.t_from_log_snr", "df.schedules.Schedule.drift", "df.schedules.Schedule.g2",
    "df.targets.GaussianMixture.marginal", "df.targets.GaussianMixture.score",
    "df.targets.GaussianMixture.denoise", "df.targets.GaussianMixture.score_divergence",
    "df.targets.GaussianMixture.responsibilities", "df.targets.GaussianMixture.condition",
    "df.targets.Gaussian", "df.models.DiffusionModel", "df.models.ConditionalMLPDenoiser",
    "df.models.AffineDenoiser", "df.neural.MLPDenoiser", "df.neural.ConditionalMLPDenoiser",
    "df.neural.AffineDenoiser", "df.neural.ConditionedModel", "df.density_formula_discrete",
    "df.elbo.ddpm_objective", "df.elbo.continuous", "df.elbo.importance_weighted", "df.elbo.kl_de_bruijn",
    "df.likelihood.sampler_density_1d", "df.likelihood.gaussian_sampler", "df.likelihood.gaussian_kl",
    "df.bits_per_dim", "df.sampling.ddpm", "df.sampling.euler_maruyama", "df.sampling.reverse_diffusion",
    "df.sampling.predictor_corrector", "df.sampling.probability_flow", "df.sampling.GuidedModel",
    "df.sampling.inpaint", "df.sampling.energy_distance", "df.sampling.energy_test", "df.sampling.ks_test",
    "df.sampling.default_t_start", "df.sampling.time_grid", "df.sampling.prior_sample",
    "df.training.DenoisingLoss", "df.data.load_digits", "df.data.Digits",
    # docs/architecture.md: schedule attributes, the model contract, Estimate, Trainer
    "df.schedules.Schedule.alpha2", "df.schedules.Schedule.sigma2", "df.schedules.Schedule.snr",
    "df.schedules.Schedule.t_min", "df.schedules.Schedule.t_max", "df.schedules.Schedule.log_snr_range",
    "df.schedules.Schedule.variance_preserving", "df.schedules.Schedule.finite_log_snr_range",
    "df.schedules.Schedule.clip_log_snr", "df.schedules.Schedule.LOG_SNR_CLIP",
    "df.schedules.Schedule.one_minus_alpha2", "df.schedules.Schedule.check_time",
    "df.schedules.Discrete.alpha_bars", "df.schedules.Discrete.log_alpha_bars",
    "df.schedules.Discrete.one_minus_alpha_bars", "df.schedules.Discrete.tau", "df.schedules.Discrete.log_snrs",
    "df.models.DiffusionModel.schedule", "df.models.DiffusionModel.denoise",
    "df.models.DiffusionModel.eps", "df.models.DiffusionModel.score",
    "df.models.DiffusionModel.v", "df.models.DiffusionModel.valid_log_snr", "df.models.log_snr_interval",
    "df.models.check_model", "df.models.AnalyticModel.score_divergence",
    "df.neural.MLPDenoiser.valid_log_snr", "df.neural.MLPDenoiser.predict",
    "df.neural.AffineDenoiser.from_gaussian",
    "df.Estimate.nfe", "df.Estimate.seconds", "df.Estimate.extras", "df.Estimate.ci", "df.Estimate.mean",
    "df.training.DenoisingLoss.sample_t", "df.training.DenoisingLoss.factor",
    "df.training.Trainer.state_dict", "df.training.Trainer.save_checkpoint", "df.training.Trainer.load_checkpoint",
]

#: keyword arguments the README and the experiments pass (accepted directly or through **kwargs)
KEYWORDS: List[Tuple[str, Tuple[Any, ...], Dict[str, Any]]] = [
    ("df.targets.random_gmm", (), {"d": 2, "K": 3, "seed": 0}),
    ("df.density_formula", (None, None), {"seed": 0, "n_replicates": 8, "n_noise": 8}),
    ("df.elbo.ddpm", (None, None), {"generator": None}),
    ("df.likelihood.probability_flow", (None, None), {"rtol": 1e-6, "atol": 1e-6}),
    ("df.sampling.ddim", (None,), {"n": 10, "steps": 50, "generator": None}),
    ("df.models.MLPDenoiser", (2, None), {"width": 64, "depth": 2, "seed": 0}),
    ("df.training.Trainer", (None, None), {"steps": 200, "batch_size": 256, "device": "cpu", "progress": False}),
    ("df.sampling.ddpm", (None,), {"n": 10, "steps": 10, "variance": "beta", "t_start": 1.0, "t_end": 0.0}),
]


def resolve(dotted: str) -> Any:
    """``df.a.b.C.m`` -> the object, by attribute access from ``densityformula`` (importing a
    public submodule only where it is not an attribute yet)."""
    parts = dotted.split(".")
    if parts[0] in ("df", "densityformula"):
        parts = parts[1:]
    obj: Any = df
    path = "densityformula"
    for name in parts:
        path = f"{path}.{name}"
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif isinstance(obj, type) and any(name in getattr(c, "__annotations__", {}) for c in obj.__mro__):
            obj = object()  # a declared instance attribute (dataclass field, protocol member)
        elif isinstance(obj, ModuleType):
            obj = importlib.import_module(path)
        else:
            raise AttributeError(f"{dotted}: {type(obj).__name__} {obj!r} has no attribute {name!r}")
    return obj


def _resolves(dotted: str) -> bool:
    try:
        resolve(dotted)
    except (AttributeError, ImportError):
        return False
    return True


def test_top_level_names() -> None:
    missing = [n for n in TOP_LEVEL if n not in df.__all__ or not hasattr(df, n)]
    assert not missing, missing
    for n in df.__all__:
        assert hasattr(df, n), n
    assert callable(df.density_formula) and not isinstance(df.density_formula, ModuleType)
    assert callable(df.density_formula_discrete)


@pytest.mark.parametrize("module", sorted(SUBMODULE_ALL))
def test_submodule_all_keeps_every_name(module: str) -> None:
    mod = importlib.import_module(f"densityformula.{module}")
    assert getattr(df, module) is mod
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"densityformula.{module} has no __all__"
    dropped = [n for n in SUBMODULE_ALL[module] if n not in exported]
    assert not dropped, f"densityformula.{module}.__all__ dropped {dropped}"
    absent = [n for n in exported if not hasattr(mod, n)]
    assert not absent, f"densityformula.{module}.__all__ names {absent}, which do not exist"
    # ``from densityformula.<module> import *`` works
    ns: Dict[str, Any] = {}
    exec(f"from densityformula.{module} import *", ns)
    assert set(exported) <= set(ns)


def test_reverse_module_names() -> None:
    mod = importlib.import_module("densityformula.reverse")
    missing = [n for n in REVERSE if not hasattr(mod, n)]
    assert not missing, missing


@pytest.mark.parametrize("dotted", DOCUMENTED)
def test_documented_name_resolves(dotted: str) -> None:
    resolve(dotted)


@pytest.mark.parametrize("dotted, args, kwargs", KEYWORDS, ids=[k[0] for k in KEYWORDS])
def test_documented_keywords_are_accepted(dotted: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    fn = resolve(dotted)
    sig = inspect.signature(fn)
    sig.bind_partial(*args, **kwargs)  # TypeError if an argument was renamed without an alias


def _names_in(path: Path) -> List[str]:
    text = path.read_text(encoding="utf-8")
    found = set(re.findall(r"(?<![\w.])df\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text))
    found |= set(re.findall(r"(?<![\w./])densityformula\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text))
    # ``densityformula.<module>.py``-style file names are paths, not attribute paths
    return sorted(n for n in found if not re.search(r"\.(py|md|ipynb|txt|csv|gz)$", n))


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md", "docs/math.md"])
def test_every_name_the_documents_use_resolves(doc: str) -> None:
    """Attribute paths ``df.x.y`` / ``densityformula.x.y`` written in a document exist."""
    path = ROOT / doc
    names = _names_in(path)
    missing = [n for n in names if not _resolves(n)]
    assert not missing, f"{doc} names {missing}, which do not resolve"


def test_the_literal_list_covers_readme_tour() -> None:
    """Every ``df.<...>`` of README's code blocks is in :data:`DOCUMENTED` (so the contract is explicit)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    used = {"df." + n for n in re.findall(r"(?<![\w.])df\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", blocks)}
    literal = set(DOCUMENTED) | {"df." + n for n in TOP_LEVEL} | {
        f"df.{m}" for m in SUBMODULE_ALL
    }
    assert used <= literal, sorted(used - literal)


def test_old_import_paths_of_the_experiments_and_notebooks() -> None:
    """``from densityformula.density_formula import ...`` (experiments, notebooks) keeps working
    after the module's rename; ``df.density_formula`` stays the function."""
    ns: Dict[str, Any] = {}
    exec("from densityformula.density_formula import FORMS, density_formula, density_formula_discrete", ns)
    assert ns["density_formula"] is df.density_formula
    assert ns["density_formula_discrete"] is df.density_formula_discrete
    assert tuple(ns["FORMS"]) == ("eps", "denoiser", "score", "hyvarinen")
    for module, name in (("models", "AnalyticModel"), ("neural", "MLPDenoiser"), ("training", "Trainer"),
                         ("likelihood", "gaussian_kl"), ("data", "Digits")):
        exec(f"from densityformula.{module} import {name}", ns)
        assert ns[name] is getattr(getattr(df, module), name)
