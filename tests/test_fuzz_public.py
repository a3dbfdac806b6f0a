"""Property-based fuzz suite over every public entry point (issue 9).

Each entry point has a *base* call (hypothesis draws its valid arguments: sizes, seeds, times,
values) and, per category of bad input, a deterministic list of *mutations* of that base call
(an argument replaced by a wrong type, dtype, shape, non-finite or out-of-range value, an
unavailable device, or the model replaced by a misbehaving one).  Every mutation of the category
is tried on each drawn base call, so even the fast profile covers every mutation.

Every call is classified (``classify``):

* ``ok-finite``          valid input, finite result (good)
* ``wrong-but-finite``   valid input with a known answer, finite but wrong (bad)
* ``ok-but-nonfinite``   a silent NaN/inf in the result (bad)
* ``accepted-invalid``   invalid input, returned without complaint (bad)
* ``clear-error``        invalid input, ``ValueError``/``TypeError`` whose message names the
                         offending argument (for model faults: the model method) (good)
* ``vague-error``        ``ValueError``/``TypeError`` not naming it, or raised on valid input (bad)
* ``foreign-exception``  any other exception (bad)

``XFAIL`` (the one dict to edit) lists the (entry point, category) pairs the library does not yet
handle: they are ``xfail(strict=True)``, so the suite is green now and turns red (XPASS) as soon
as one is fixed; then delete its line.  ``tests/fuzz_report.py`` runs the same generators and
prints the outcome table.

Profiles: the default (fast) one draws ``FUZZ_FAST_EXAMPLES`` base calls per (entry point,
category); the ``slow``-marked copy draws ``FUZZ_SLOW_EXAMPLES``.
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import densityformula as df
from densityformula import bits, data, elbo, likelihood, models, sampling, training
from densityformula import parameterization as P
from densityformula import schedules as S
from densityformula import targets as T

F64 = torch.float64

# ----------------------------------------------------------------------------------------------
# the one list to edit: (entry point, category) -> why it is expected to fail today
# ----------------------------------------------------------------------------------------------
# one line per (entry point, category) with a bad outcome on the current code (the calls and their outcome);
# regenerate with `tests/fuzz_report.py --xfail`, or delete the lines that XPASS
XFAIL: Dict[Tuple[str, str], str] = {
}

#: pairs that only the slow profile's larger draws reach (derandomized, so as strict as XFAIL)
XFAIL_SLOW: Dict[Tuple[str, str], str] = {
}

FUZZ_FAST_EXAMPLES = 2
FUZZ_SLOW_EXAMPLES = 25

BAD = ("wrong-but-finite", "ok-but-nonfinite", "accepted-invalid", "vague-error", "foreign-exception")
GOOD = ("ok-finite", "clear-error")
CLASSES = GOOD + BAD
CATEGORIES = ("valid", "type", "dtype", "shape", "nonfinite", "range", "device", "model")

#: a model fault's message must name the model method (``checked`` writes ``Model.denoise(x_t, t = ...)``)
MODEL_WORDS = re.compile(r"\b(denoise|eps|score|score_divergence|denoise_and_score_divergence)\b|\.v\(")


Muts = Dict[str, List[Tuple[str, Any, bool]]]

# ----------------------------------------------------------------------------------------------
# calls and their classification
# ----------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One call of an entry point: ``fn(**kwargs)``."""

    fn: Callable[..., Any]
    kwargs: Dict[str, Any]
    valid: bool = True
    #: for an invalid call: names of which at least one must appear in the error message
    names: Tuple[str, ...] = ()
    #: for a valid call with a known answer: returns a reason if the result is wrong
    check: Optional[Callable[[Any], Optional[str]]] = None
    label: str = ""
    post: Optional[Callable[[Any], Any]] = None  # e.g. call .train() / .log_prob() on the result
    #: either a clear error or a correct (``check``-ed) result is fine (e.g. a point beyond a grid)
    either: bool = False


def _nonfinite(obj: Any, depth: int = 0) -> bool:
    """True when a NaN/inf is anywhere in a (nested) result."""
    if depth > 4:
        return False
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            if obj.device.type == "meta":
                return False
            return bool((~torch.isfinite(obj.detach())).any())
        return False
    if isinstance(obj, (float, np.floating)):
        return not math.isfinite(float(obj))
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc":
        return bool(~np.isfinite(obj).all())
    if isinstance(obj, df.Estimate):
        return _nonfinite(obj.value, depth + 1) or _nonfinite(obj.stderr, depth + 1)
    if isinstance(obj, dict):
        return any(_nonfinite(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_nonfinite(v, depth + 1) for v in obj)
    for attr in ("value", "statistic", "pvalue", "p_value", "loss", "losses", "mean", "cov", "mass"):
        if hasattr(obj, attr) and not callable(getattr(type(obj), attr, None)):
            try:
                if _nonfinite(getattr(obj, attr), depth + 1):
                    return True
            except Exception:  # noqa: BLE001 - a property that cannot be read is not a NaN
                pass
    return False


def names_it(msg: str, names: Sequence[str]) -> bool:
    for name in names:
        if name == "<model>":
            if MODEL_WORDS.search(msg):
                return True
        elif re.search(r"(?<![A-Za-z0-9_])" + re.escape(name) + r"(?![A-Za-z0-9_])", msg):
            return True
    return False


def run_call(call: Call) -> Tuple[str, str]:
    """Run one call; (outcome class, detail)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call.fn(**call.kwargs)
            if call.post is not None:
                out = call.post(out)
    except (ValueError, TypeError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        if "unexpected keyword argument" in str(exc) or "positional argument" in str(exc):
            return "vague-error", "HARNESS: the fuzzer called it wrongly: " + msg[:300]
        if call.valid and not call.either:
            return "vague-error", "raised on valid input: " + msg[:300]
        if names_it(str(exc), call.names):
            return "clear-error", msg[:200]
        return "vague-error", f"does not name {call.names}: " + msg[:300]
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything
        return "foreign-exception", f"{type(exc).__name__}: {str(exc)[:300]}"
    if _nonfinite(out):
        return "ok-but-nonfinite", "NaN/inf in the result"
    if not call.valid and not call.either:
        return "accepted-invalid", "no error raised"
    if call.check is not None:
        why = call.check(out)
        if why:
            return "wrong-but-finite", why
    return "ok-finite", ""


# ----------------------------------------------------------------------------------------------
# building blocks: models (good and misbehaving), data
# ----------------------------------------------------------------------------------------------
SCHEDULES: Dict[str, Callable[[], S.Schedule]] = {
    "LiYan": S.LiYan,
    "VPLinear": S.VPLinear,
    "VPCosine": S.VPCosine,
    "SubVP": S.SubVP,
    "VE": S.VE,
    "Discrete": lambda: S.Discrete.ddpm_linear(50),
}


def gmm(d: int, seed: int = 0) -> T.GaussianMixture:
    return T.random_gmm(d, 2, seed=seed)


def exact(d: int, schedule: Optional[S.Schedule] = None, seed: int = 0) -> models.AnalyticModel:
    return models.AnalyticModel(gmm(d, seed), schedule if schedule is not None else S.LiYan())


def _fault(out: torch.Tensor, fault: str) -> torch.Tensor:
    if fault == "shape_n1":  # broadcastable wrong shape: (n, 1) for d > 1, (n,) for d = 1
        return out[..., :1].contiguous() if out.shape[-1] > 1 else out.reshape(out.shape[:-1])
    if fault == "nan":
        return out * float("nan")
    if fault == "inf":
        return out + float("inf")
    if fault == "dtype":
        return out.to(torch.float32 if out.dtype == F64 else F64)
    raise AssertionError(fault)


class Faulty(models.AnalyticModel):
    """An exact model whose every output (denoise, eps, score, v) breaks the contract in one way.

    AnalyticModel computes eps, score and v from the mixture directly, not from denoise, so all
    four are broken: an estimator that only calls eps must meet the fault too."""

    def __init__(self, target: T.GaussianMixture, schedule: S.Schedule, fault: str) -> None:
        super().__init__(target, schedule)
        self.fault = fault
        # the exact outputs come from a clean copy: AnalyticModel.eps calls self.score, so faulting
        # through super() would apply a fault twice (and two dtype flips cancel)
        self.exact = models.AnalyticModel(target, schedule)

    def denoise(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return _fault(self.exact.denoise(x_t, t), self.fault)

    def eps(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return _fault(self.exact.eps(x_t, t), self.fault)

    def score(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return _fault(self.exact.score(x_t, t), self.fault)

    def v(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return _fault(self.exact.v(x_t, t), self.fault)

    def score_divergence(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        return self.exact.score_divergence(x_t, t)

    def denoise_and_score_divergence(self, x_t: torch.Tensor, t: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        D, div = self.exact.denoise_and_score_divergence(x_t, t)
        return _fault(D, self.fault), div


FAULTS = ("shape_n1", "nan", "inf", "dtype")


class FaultyMLP(models.MLPDenoiser):
    """A trainable network whose ``denoise`` breaks the contract (for the trainer)."""

    fault = "nan"

    def predict(self, x_t: torch.Tensor, t: Any, kind: str = "x0", cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        # every output (denoise, eps, score, v) of the network goes through predict
        return _fault(super().predict(x_t, t, kind, cond), self.fault)


def faulty_mlps(d: int, schedule: S.Schedule) -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    for f in FAULTS:
        m = FaultyMLP(d, schedule, width=8, depth=1, dtype=F64)
        m.fault = f
        out.append((f, m))
    return out


def faulty_models(d: int, schedule: Optional[S.Schedule] = None) -> List[Tuple[str, Any]]:
    sch = schedule if schedule is not None else S.LiYan()
    out: List[Tuple[str, Any]] = [(f, Faulty(gmm(d), sch, f)) for f in FAULTS]
    return out


def points(d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64)


# ----------------------------------------------------------------------------------------------
# generic mutations of one argument, per kind of argument
# ----------------------------------------------------------------------------------------------
def x_mutations(x: torch.Tensor) -> Dict[str, List[Tuple[str, Any, bool]]]:
    """category -> [(label, value, valid)] for a point batch ``x`` of shape (n, d)."""
    n, d = x.shape
    nan = x.clone()
    nan[0, 0] = float("nan")
    inf = x.clone()
    inf[-1, -1] = float("inf")
    return {
        "type": [("str", "x", False), ("None", None, False), ("complex-scalar", 1 + 2j, False)],
        "dtype": [
            ("int64", x.round().to(torch.int64), False),
            ("complex128", x.to(torch.complex128), False),
            ("bool", x > 0, False),
            ("float16", x.to(torch.float16), False),
        ],
        "shape": [
            ("empty-batch", x[:0], False),
            ("wrong-d", torch.cat([x, x[:, :1]], 1), False),
            ("extra-dim", x[:, :, None], False),
        ],
        "nonfinite": [("nan", nan, False), ("inf", inf, False)],
        "device": [("meta", x.to("meta"), False)],
    }


def _no_f16(muts: Dict[str, List[Tuple[str, Any, bool]]]) -> Dict[str, List[Tuple[str, Any, bool]]]:
    """Without the float16 mutation: for model-free functions of samples an upcast is legitimate."""
    return {k: [m for m in v if m[0] != "float16"] for k, v in muts.items()}


def int_mutations(v: int, minimum: int, *, seed: bool = False) -> Dict[str, List[Tuple[str, Any, bool]]]:
    muts: Dict[str, List[Tuple[str, Any, bool]]] = {
        "type": [
            ("str", str(v), False),
            ("list", [v], False),
            ("complex", complex(v), False),
            ("bool", True, False),
            ("float", v + 0.5, False),
            ("np.int64", np.int64(v), True),
        ],
        "range": [("below-min", minimum - 1, False), ("negative", -3, False)],
    }
    if seed:
        muts["range"] += [("2**70", 2**70, False), ("2**63", 2**63, False)]
    return muts


def posfloat_mutations(v: float) -> Dict[str, List[Tuple[str, Any, bool]]]:
    return {
        "type": [("str", str(v), False), ("list", [v], False), ("complex", complex(v, 1), False),
                 ("bool", True, False), ("np.float64", np.float64(v), True)],
        "nonfinite": [("nan", float("nan"), False), ("inf", float("inf"), False)],
        "range": [("zero", 0.0, False), ("negative", -v, False)],
    }


def device_mutations() -> Dict[str, List[Tuple[str, Any, bool]]]:
    out: List[Tuple[str, Any, bool]] = [("nonsense", "gpu7", False)]
    if not torch.cuda.is_available():
        out.append(("cuda-unavailable", "cuda", False))
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        out.append(("mps-unavailable", "mps", False))
    return {"device": out}


def merge(*dicts: Dict[str, List[Tuple[str, Any, bool]]]) -> Dict[str, List[Tuple[str, Any, bool]]]:
    out: Dict[str, List[Tuple[str, Any, bool]]] = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, []).extend(v)
    return out


# ----------------------------------------------------------------------------------------------
# entry points: each returns {category: [Call, ...]} for one drawn base
# ----------------------------------------------------------------------------------------------
Draw = Callable[[st.SearchStrategy[Any]], Any]
Cases = Dict[str, List[Call]]


class Both(dict):  # type: ignore[type-arg]
    """A mutation that sets several arguments at once (e.g. equal interval ends)."""


def _cases(fn: Callable[..., Any], base: Dict[str, Any], arg_muts: Dict[str, Dict[str, List[Tuple[str, Any, bool]]]],
           *, aliases: Optional[Dict[str, Tuple[str, ...]]] = None,
           check: Optional[Callable[[Any], Optional[str]]] = None,
           model_arg: Optional[str] = None, models_bad: Sequence[Tuple[str, Any]] = (),
           post: Optional[Callable[[Any], Any]] = None) -> Cases:
    """The valid base call, plus every mutation of every argument, grouped by category."""
    cases: Cases = {"valid": [Call(fn, dict(base), True, (), check, "base", post)]}
    for arg, muts in arg_muts.items():
        names = (arg,) + ((aliases or {}).get(arg, ()))
        for cat, items in muts.items():
            for label, value, valid in items:
                kw = dict(base)
                if isinstance(value, Both):
                    kw.update(value)
                else:
                    kw[arg] = value
                cases.setdefault(cat, []).append(
                    Call(fn, kw, valid, names, check if valid else None, f"{arg}={label}", post))
    if model_arg is not None:
        for label, m in models_bad:
            kw = dict(base)
            kw[model_arg] = m
            cases.setdefault("model", []).append(Call(fn, kw, False, ("<model>",), None, f"{model_arg}={label}", post))
        kw = dict(base)
        kw[model_arg] = "not a model"
        cases.setdefault("type", []).append(Call(fn, kw, False, (model_arg,), None, f"{model_arg}=str", post))
    return cases


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-8) -> Optional[str]:
    a64, b64 = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    if a64.shape != b64.shape:
        return f"shape {tuple(a64.shape)} != {tuple(b64.shape)}"
    err = float((a64 - b64).abs().max()) if a64.numel() else 0.0
    scale = 1.0 + float(b64.abs().max()) if b64.numel() else 1.0
    return None if err <= tol * scale else f"max error {err:.3g}"


_SIMPLEST: Dict[int, Any] = {}


_RECORD = [True]


def _simple(strategy: st.SearchStrategy[Any], value: Any) -> st.SearchStrategy[Any]:
    if _RECORD[0]:
        _SIMPLEST[id(strategy)] = (strategy, value)
    return strategy


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return _simple(st.integers(lo, hi), lo)


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return _simple(st.floats(lo, hi), lo)


def choice(items: Sequence[Any]) -> st.SearchStrategy[Any]:
    items = list(items)
    return _simple(st.sampled_from(items), items[0])


def flag() -> st.SearchStrategy[bool]:
    return _simple(st.booleans(), False)


# --- schedules --------------------------------------------------------------------------------
def e_schedule_methods(draw: Draw) -> Cases:
    name = draw(choice(sorted(SCHEDULES)))
    sch = SCHEDULES[name]()
    lo, hi = float(sch.t_min), float(sch.t_max)
    u = draw(floats(0.05, 0.95))
    t = torch.tensor([lo + u * (hi - lo), lo + (1 - u) * (hi - lo)], dtype=F64)

    def call(t: Any) -> Any:
        return [sch.alpha(t), sch.sigma(t), sch.alpha2(t), sch.sigma2(t), sch.log_snr(t), sch.g2(t)]

    def check(out: Any) -> Optional[str]:
        alpha, sigma, a2, s2, lam, _ = out
        return (_close(alpha**2, a2, 1e-10) or _close(sigma**2, s2, 1e-10)
                or _close(torch.log(a2 / s2), lam, 1e-8))

    tm: Muts = {"type": [("str", "0.5", False), ("complex", 0.5j, False), ("list-of-str", ["a"], False)],
          "dtype": [("complex128", t.to(torch.complex128), False), ("bool", t > 0, False)],
          "nonfinite": [("nan", torch.tensor([float("nan")]), False), ("inf", float("inf"), False)],
          "range": [("above-t_max", hi + 1.0, False), ("below-t_min", lo - 1.0, False)]}
    return _cases(call, {"t": t}, {"t": tm}, check=check)


def e_schedule_t_from_log_snr(draw: Draw) -> Cases:
    name = draw(choice(sorted(SCHEDULES)))
    sch = SCHEDULES[name]()
    lo, hi = float(sch.t_min), float(sch.t_max)
    u = draw(floats(0.1, 0.9))
    t = torch.tensor([lo + u * (hi - lo)], dtype=F64)
    lam = sch.log_snr(t)

    def call(log_snr: Any) -> Any:
        return sch.t_from_log_snr(log_snr)

    tm: Muts = {"type": [("str", "0.0", False), ("complex", 1j, False)],
          "dtype": [("complex128", lam.to(torch.complex128), False)],
          "nonfinite": [("nan", torch.tensor([float("nan")], dtype=F64), False)]}
    return _cases(call, {"log_snr": lam}, {"log_snr": tm}, aliases={"log_snr": ("lam", "lambda", "log-SNR")},
                  check=lambda out: _close(out, t, 1e-6))


def e_discrete(draw: Draw) -> Cases:
    n = draw(ints(21, 200))

    def call(T: Any) -> Any:
        s = S.Discrete.ddpm_linear(T)
        return s.log_alpha_bars

    return _cases(call, {"T": n}, {"T": int_mutations(n, 1)})


# --- targets ----------------------------------------------------------------------------------
def _scipy_logpdf(g: T.GaussianMixture, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    w = g.weights.numpy()
    comps = []
    for k in range(g.K):
        mean = alpha * g.means[k].numpy()
        cov = alpha**2 * g.covs[k].numpy() + sigma**2 * np.eye(g.d)
        comps.append(np.log(w[k]) + multivariate_normal(mean, cov).logpdf(x.numpy()).reshape(-1))
    return torch.as_tensor(logsumexp(np.stack(comps), axis=0), dtype=F64)


def e_gmm_log_prob(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 4)), draw(ints(1, 5)), draw(ints(0, 50))
    g = gmm(d, seed)
    x = points(d, n, seed)
    with_t = draw(flag())
    sch = S.LiYan()
    tval = draw(floats(0.05, 0.95))

    if with_t:
        def call(x: Any, t: Any = tval) -> Any:
            return g.log_prob(x, t, sch)
        a, s = float(sch.alpha(torch.tensor(tval, dtype=F64))), float(sch.sigma(torch.tensor(tval, dtype=F64)))
    else:
        def call(x: Any, t: Any = None) -> Any:
            return g.log_prob(x)
        a, s = 1.0, 0.0
    muts: Dict[str, Dict[str, List[Tuple[str, Any, bool]]]] = {"x": x_mutations(x)}
    if with_t:
        muts["t"] = {"nonfinite": [("nan", float("nan"), False)], "type": [("str", "0.5", False)],
                     "range": [("above-t_max", 2.0, False)]}
    return _cases(call, {"x": x, "t": tval}, muts, check=lambda out: _close(out, _scipy_logpdf(g, x, a, s), 1e-8))


def e_gmm_score_denoise(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 5)), draw(ints(0, 50))
    g, sch = gmm(d, seed), S.LiYan()
    x = points(d, n, seed)
    tval = draw(floats(0.05, 0.95))

    def call(x: Any, t: Any) -> Any:
        return [g.score(x, t, sch), g.denoise(x, t, sch)]

    def check(out: Any) -> Optional[str]:  # Tweedie (I2): x0_hat = (x + sigma^2 score) / alpha
        tt = torch.tensor(tval, dtype=F64)
        a, s = sch.alpha(tt), sch.sigma(tt)
        return _close(out[1], (x + s**2 * out[0]) / a, 1e-8)

    tm: Muts = {"nonfinite": [("nan", float("nan"), False), ("inf", float("inf"), False)],
          "type": [("str", "0.5", False), ("complex", 0.5j, False)], "range": [("above-t_max", 2.0, False)]}
    return _cases(call, {"x": x, "t": tval}, {"x": x_mutations(x), "t": tm}, check=check)


def e_gmm_sample(draw: Draw) -> Cases:
    d, n = draw(ints(1, 3)), draw(ints(1, 20))
    g = gmm(d)

    def call(n: Any, generator: Any = None) -> Any:
        return g.sample(n, generator=generator)

    return _cases(call, {"n": n}, {"n": int_mutations(n, 0)})


def e_gaussian_mixture(draw: Draw) -> Cases:
    d, K = draw(ints(1, 3)), draw(ints(1, 3))
    w = torch.full((K,), 1.0 / K, dtype=F64)
    mu = torch.zeros(K, d, dtype=F64)
    cov = torch.eye(d, dtype=F64).expand(K, d, d).clone()
    nanmu = mu.clone()
    nanmu[0, 0] = float("nan")
    bad_cov = cov.clone()
    bad_cov[0] = -bad_cov[0]

    def call(weights: Any, means: Any, covs: Any, device: Any = None) -> Any:
        return T.GaussianMixture(weights, means, covs, device=device).log_prob(torch.zeros(1, d, dtype=F64))

    return _cases(call, {"weights": w, "means": mu, "covs": cov, "device": None}, {
        "means": {"nonfinite": [("nan", nanmu, False)], "shape": [("wrong-K", mu[:0], False)],
                  "type": [("str", "mu", False)]},
        "weights": {"range": [("negative", -w, False)], "nonfinite": [("nan", w * float("nan"), False)]},
        "covs": {"range": [("not-psd", bad_cov, False)], "shape": [("wrong-d", cov[:, :0, :0], False)]},
        "device": device_mutations(),
    })


def e_random_gmm(draw: Draw) -> Cases:
    d, K, seed = draw(ints(1, 4)), draw(ints(1, 4)), draw(ints(0, 1000))

    def call(d: Any, K: Any, seed: Any, separation: Any = 3.0, condition_number: Any = 10.0, device: Any = None) -> Any:
        return T.random_gmm(d, K, seed=seed, separation=separation, condition_number=condition_number,
                            device=device).means

    return _cases(call, {"d": d, "K": K, "seed": seed, "separation": 3.0, "condition_number": 10.0, "device": None}, {
        "d": int_mutations(d, 1), "K": int_mutations(K, 1), "seed": int_mutations(seed, 0, seed=True),
        "separation": {"nonfinite": [("nan", float("nan"), False)], "type": [("str", "3", False)]},
        "condition_number": {"nonfinite": [("inf", float("inf"), False)], "range": [("below-1", 0.5, False)]},
        "device": device_mutations(),
    })


# --- models -----------------------------------------------------------------------------------
def _model_methods(model: Any, x: torch.Tensor, tval: float, lo: float, hi: float) -> Cases:
    def call(x: Any, t: Any) -> Any:
        return [model.denoise(x, t), model.eps(x, t), model.score(x, t)]

    def check(out: Any) -> Optional[str]:  # I1: eps = (x - alpha x0) / sigma, score = -eps / sigma
        tt = torch.tensor(tval, dtype=F64)
        a = model.schedule.alpha(tt).to(x.dtype)
        s = model.schedule.sigma(tt).to(x.dtype)
        tol = 1e-8 if x.dtype == F64 else 1e-4
        return _close(out[1], (x - a * out[0]) / s, tol) or _close(out[2], -out[1] / s, tol)

    tm: Muts = {"nonfinite": [("nan", float("nan"), False), ("inf", float("inf"), False)],
          "type": [("str", "0.5", False), ("complex", 0.5j, False)],
          "range": [("above-t_max", hi + 1.0, False), ("below-t_min", lo - 1.0, False)]}
    return _cases(call, {"x": x, "t": tval}, {"x": x_mutations(x), "t": tm}, check=check, aliases={"x": ("x_t",)})


def e_analytic_model(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 4)), draw(ints(0, 20))
    name = draw(choice(sorted(SCHEDULES)))
    sch = SCHEDULES[name]()
    lo, hi = float(sch.t_min), float(sch.t_max)
    tval = lo + draw(floats(0.1, 0.9)) * (hi - lo)
    return _model_methods(models.AnalyticModel(gmm(d, seed), sch), points(d, n, seed), tval, lo, hi)


def e_analytic_model_init(draw: Draw) -> Cases:
    d = draw(ints(1, 3))

    def call(target: Any, schedule: Any) -> Any:
        return models.AnalyticModel(target, schedule).denoise(torch.zeros(1, d, dtype=F64), 0.5)

    return _cases(call, {"target": gmm(d), "schedule": S.LiYan()}, {
        "target": {"type": [("str", "gmm", False), ("None", None, False)]},
        "schedule": {"type": [("str", "liyan", False), ("class", S.LiYan, False)]},
    })


def e_mlp_denoiser(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 4)), draw(ints(0, 20))
    sch = S.VPCosine()
    m = models.MLPDenoiser(d, sch, width=8, depth=1, dtype=F64, seed=seed)
    return _model_methods(m, points(d, n, seed), 0.5, float(sch.t_min), float(sch.t_max))


def e_mlp_denoiser_init(draw: Draw) -> Cases:
    d, width, seed = draw(ints(1, 4)), draw(ints(1, 16)), draw(ints(0, 1000))

    def call(d: Any, width: Any, depth: Any = 1, seed: Any = 0, parameterization: Any = "eps",
             dtype: Any = F64, device: Any = None) -> Any:
        m = models.MLPDenoiser(d, S.LiYan(), width=width, depth=depth, seed=seed,
                               parameterization=parameterization, dtype=dtype, device=device)
        return m.denoise(torch.zeros(2, d, dtype=F64), 0.5)

    return _cases(call, {"d": d, "width": width, "depth": 1, "seed": seed, "parameterization": "eps", "dtype": F64,
                         "device": None}, {
        "d": int_mutations(d, 1), "width": int_mutations(width, 1), "seed": int_mutations(seed, 0, seed=True),
        "parameterization": {"type": [("unknown", "epsilon-ish", False), ("None", None, False)]},
        "dtype": {"dtype": [("int64", torch.int64, False), ("complex64", torch.complex64, False),
                            ("str", "float64", False)]},
        "device": device_mutations(),
    })


def e_affine_denoiser(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 4)), draw(ints(0, 20))
    sch = S.Discrete.ddpm_linear(50)
    m = models.AffineDenoiser(d, sch)
    cases = _model_methods(m, points(d, n, seed), 20.0, float(sch.t_min), float(sch.t_max))

    def init(d: Any, init: Any = "identity", device: Any = None) -> Any:
        return models.AffineDenoiser(d, sch, init=init, device=device).denoise(torch.zeros(1, 1, dtype=F64), 10.0)

    more = _cases(init, {"d": 1, "init": "identity", "device": None}, {
        "d": int_mutations(1, 1), "init": {"type": [("unknown", "nonsense", False)]}, "device": device_mutations()})
    for k, v in more.items():
        if k != "valid":
            cases.setdefault(k, []).extend(v)
    return cases


# --- parameterization -------------------------------------------------------------------------
def e_parameterization(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 4)), draw(ints(0, 50))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=F64)
    eps = torch.randn(n, d, generator=g, dtype=F64)
    a = draw(floats(0.05, 0.99))
    s = math.sqrt(1 - a * a)
    x_t = a * x0 + s * eps
    src, tgt = draw(choice(list(P.KINDS))), draw(choice(list(P.KINDS)))

    def call(out: Any, x_t: Any, alpha: Any, sigma: Any) -> Any:
        there = P.convert("x0", src, out, x_t, alpha, sigma)
        y = P.convert(src, tgt, there, x_t, alpha, sigma)
        return [P.convert(tgt, "x0", y, x_t, alpha, sigma), P.x0_to_eps(x_t, out, alpha, sigma)]

    def check(res: Any) -> Optional[str]:
        return _close(res[0], x0, 1e-8) or _close(res[1], eps, 1e-8)

    return _cases(call, {"out": x0, "x_t": x_t, "alpha": a, "sigma": s}, {
        "out": {"shape": [("wrong-d", torch.cat([x0, x0], 1), False)], "type": [("str", "x0", False)]},
        "x_t": {"dtype": [("complex128", x_t.to(torch.complex128), False), ("int64", x_t.to(torch.int64), False)]},
        "sigma": {"range": [("zero", 0.0, False), ("negative", -s, False)],
                  "nonfinite": [("nan", float("nan"), False)], "type": [("str", "0.5", False)]},
        "alpha": {"nonfinite": [("inf", float("inf"), False)]},
    }, check=check)


# --- estimators -------------------------------------------------------------------------------
def _log_q(model: models.AnalyticModel, x: torch.Tensor) -> torch.Tensor:
    return model.target.log_prob(x)


def _within(out: Any, truth: torch.Tensor, k: float = 5.0) -> Optional[str]:
    if not isinstance(out, df.Estimate):
        return None
    # every reported deterministic error bound (truncation, discretisation, O(1/T), grid) widens the tolerance
    bound: Any = 0.0
    for key, val in (out.extras.items() if isinstance(out.extras, dict) else ()):
        if str(key).endswith("_bound") and isinstance(val, (float, int, torch.Tensor)):
            bound = bound + torch.as_tensor(val, dtype=F64).reshape(-1)
    err = (out.value - truth).abs()
    tol = k * out.stderr + bound + 1e-6 * (1 + truth.abs())
    if bool((err > tol).any()):
        z = float(((err - bound).clamp_min(0) / out.stderr.clamp_min(1e-300)).max())
        return f"|error| {float(err.max()):.3g} = {z:.3g} stderr beyond the reported bound(s)"
    return None


def _estimator_cases(fn: Callable[..., Any], draw: Draw, base_extra: Dict[str, Any],
                     extra_muts: Dict[str, Dict[str, List[Tuple[str, Any, bool]]]], *,
                     schedule: Optional[S.Schedule] = None, check_truth: bool = False, n_max: int = 3,
                     aliases: Optional[Dict[str, Tuple[str, ...]]] = None, d_range: Tuple[int, int] = (1, 2)) -> Cases:
    d, n, seed = draw(ints(*d_range)), draw(ints(1, n_max)), draw(ints(0, 100))
    model = exact(d, schedule, seed)
    x = points(d, n, seed) * 0.7
    base = {"model": model, "x": x, **base_extra}
    check = (lambda out: _within(out, _log_q(model, x))) if check_truth else None
    cases = _cases(fn, base, {"x": x_mutations(x), **extra_muts}, aliases=aliases, check=check, model_arg="model",
                   models_bad=faulty_models(d, schedule))
    if d == 1:  # the reproducer is d = 2 with denoise returning (n, 1): always try it
        x2 = points(2, n, seed) * 0.7
        for label, m in faulty_models(2, schedule):
            cases["model"].append(Call(fn, {**base, "model": m, "x": x2}, False, ("<model>",), None,
                                       f"model={label} (d=2)"))
    return cases


def e_density_formula(draw: Draw) -> Cases:
    nodes = draw(choice([16, 32]))
    cases = _estimator_cases(df.density_formula, draw, {"n_nodes": nodes, "n_replicates": 4, "n_pilot": 4, "seed": 1}, {
        "n_nodes": int_mutations(8, 1), "n_replicates": {"range": [("zero", 0, False), ("negative", -1, False)]},
        "seed": int_mutations(1, 0, seed=True),
        "lambda_range": {"range": [("equal-ends", (1.0, 1.0), False), ("reversed", (5.0, -5.0), False)],
                         "nonfinite": [("nan", (float("nan"), 1.0), False)]},
        "memory_budget": {"range": [("zero", 0, False)]},
    }, check_truth=True)
    # a coarse rule: its quadrature error must be inside the reported stderr + bound(s), not silently wrong
    base = cases["valid"][0]
    cases["valid"].append(Call(base.fn, {**base.kwargs, "n_nodes": 8}, True, (), base.check, "n_nodes=8"))
    return cases


def e_density_formula_discrete(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(50)
    return _estimator_cases(df.density_formula_discrete, draw, {"n_replicates": 4, "n_pilot": 4, "seed": 1}, {
        "n_replicates": {"range": [("zero", 0, False)], "type": [("np.int64", np.int64(4), True)]},
        "seed": int_mutations(1, 0, seed=True),
        "schedule": {"type": [("str", "linear", False), ("continuous", S.LiYan(), False)]},
    }, schedule=sch, check_truth=True)


def _lower_bound_check(model: models.AnalyticModel, x: torch.Tensor) -> Callable[[Any], Optional[str]]:
    def check(out: Any) -> Optional[str]:
        if isinstance(out, dict):
            outs = list(out.values())
        else:
            outs = [out]
        for o in outs:
            if isinstance(o, df.Estimate):
                truth = _log_q(model, x)
                # an ELBO of the exact model may not exceed log q by more than 5 stderr
                if bool((o.value - truth > 5 * o.stderr + 1e-6 * (1 + truth.abs()) + 0.05).any()):
                    return f"bound above log q by {float((o.value - truth).max()):.3g}"
        return None
    return check


def e_elbo_ddpm(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(50)
    fn = draw(choice([elbo.ddpm, elbo.ddpm_objective]))
    cases = _estimator_cases(fn, draw, {"n_samples": 2}, {
        "n_samples": int_mutations(2, 1), "steps": {"range": [("zero", 0, False), ("negative", -2, False)]},
        "decoder_variance": posfloat_mutations(0.01),
        "step_probs": {"nonfinite": [("nan", torch.full((50,), float("nan"), dtype=F64), False)],
                       "range": [("negative", -torch.ones(50, dtype=F64), False)],
                       "shape": [("wrong-T", torch.ones(3, dtype=F64), False)]},
        "variance": {"type": [("unknown", "nonsense", False)]},
    }, schedule=sch)
    return cases


def e_elbo_importance_weighted(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(50)
    return _estimator_cases(elbo.importance_weighted, draw, {"k": 2, "n_replicates": 2}, {
        "k": merge({k: [m for m in v if m[0] != "list"] for k, v in int_mutations(2, 1).items()},
                   {"type": [("list", [1, 2], True), ("list-of-np", [np.int64(1), np.int64(2)], True),
                             ("list-with-zero", [0, 2], False)]}),
        "n_replicates": int_mutations(2, 1), "decoder_variance": posfloat_mutations(0.01),
        "chunk_size": {"range": [("zero", 0, False)]},
    }, schedule=sch)


def e_elbo_continuous(draw: Draw) -> Cases:
    return _estimator_cases(elbo.continuous, draw, {"n_nodes": 8, "n_replicates": 4, "seed": 1}, {
        "n_nodes": int_mutations(8, 1), "seed": {"range": [("2**70", 2**70, False), ("negative", -1, False)]},
    })


def e_elbo_kl_de_bruijn(draw: Draw) -> Cases:
    d = draw(ints(1, 2))
    q, p = gmm(d, 0), gmm(d, 1)

    def call(q: Any, p: Any, n_samples: Any = 64, n_nodes: Any = 16, lambda_range: Any = None) -> Any:
        return elbo.kl_de_bruijn(q, p, n_samples=n_samples, n_nodes=n_nodes, lambda_range=lambda_range)

    def check(out: Any) -> Optional[str]:
        return "negative KL" if bool((out.value < -5 * out.stderr - 1e-3).any()) else None

    return _cases(call, {"q": q, "p": p, "n_samples": 64, "n_nodes": 16, "lambda_range": None}, {
        "n_samples": int_mutations(64, 1), "n_nodes": int_mutations(16, 1),
        "lambda_range": {"range": [("equal-ends", (0.0, 0.0), False)],
                         "nonfinite": [("nan", (float("nan"), 1.0), False)]},
        "q": {"type": [("str", "q", False)]}, "p": {"shape": [("wrong-d", gmm(d + 1), False)]},
    }, check=check)


def e_likelihood_pf(draw: Draw) -> Cases:
    return _estimator_cases(likelihood.probability_flow, draw, {"rtol": 1e-4, "atol": 1e-4}, {
        "rtol": posfloat_mutations(1e-4), "atol": posfloat_mutations(1e-4),
        "t_min": {"range": [("equal-ends", Both(t_min=0.5, t_max=0.5), False), ("above-t_max", 5.0, False)],
                  "nonfinite": [("nan", float("nan"), False)]},
        "t_max": {"nonfinite": [("inf", float("inf"), False)], "range": [("below-t_min", -1.0, False)]},
        "max_steps": int_mutations(100000, 1), "method": {"type": [("unknown", "rk99", False)]},
    }, aliases={"t_min": ("t_end", "t_start", "t_max", "interval"), "t_max": ("t_start", "t_end", "t_min", "interval"),
                "n_trajectory": ("return_trajectory",)})


def e_likelihood_pf_trajectory(draw: Draw) -> Cases:
    """``return_trajectory=True`` must return the same log-density as without it (issue 9)."""
    d, n, seed = draw(ints(1, 2)), draw(ints(1, 3)), draw(ints(0, 100))
    model = exact(d, None, seed)
    x = points(d, n, seed) * 0.7
    nt = draw(choice([2, 5]))

    def call(n_trajectory: Any) -> Any:
        out = likelihood.probability_flow(model, x, rtol=1e-6, atol=1e-6, return_trajectory=True, n_trajectory=nt
                                          if n_trajectory is None else n_trajectory)
        return out[0] if isinstance(out, tuple) else out

    def check(out: Any) -> Optional[str]:
        ref = likelihood.probability_flow(model, x, rtol=1e-6, atol=1e-6)
        return _close(out.value, ref.value, 1e-5)

    return _cases(call, {"n_trajectory": nt}, {"n_trajectory": {"range": [("one", 1, False), ("zero", 0, False)],
                                                                "type": [("np.int64", np.int64(3), True)]}},
                  aliases={"n_trajectory": ("return_trajectory",)}, check=check)


_DENSITIES: Dict[int, Any] = {}


def _density_1d(model: Any, grid: torch.Tensor) -> Any:
    """One grid density per process (building it is the slow part; its log_prob is what is fuzzed)."""
    key = grid.numel()
    if key not in _DENSITIES:
        _DENSITIES[key] = likelihood.sampler_density_1d(model, grid=grid)
    return _DENSITIES[key]


def e_sampler_density_1d(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(50)
    model = models.AnalyticModel(T.Gaussian(torch.zeros(1, dtype=F64), torch.ones(1, 1, dtype=F64))
                                 if hasattr(T, "Gaussian") else gmm(1), sch)
    xs = torch.linspace(-3, 3, draw(ints(1, 5)), dtype=F64)[:, None]

    grid = torch.linspace(-8, 8, 401, dtype=F64)

    def call(x: Any) -> Any:
        return _density_1d(model, grid).log_prob(x)

    def check(out: Any) -> Optional[str]:  # exact model, fine DDPM: close to N(0, 1) within 0.1 nats
        truth = -0.5 * xs[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
        err = float((out.reshape(-1) - truth).abs().max())
        return None if err < 0.1 else f"log_prob off by {err:.3g} nats"

    cases = _cases(call, {"x": xs}, {"x": _no_f16(x_mutations(xs))}, check=check)
    beyond = torch.tensor([[9.0]], dtype=F64)  # issue 9: -5,040 nats instead of -41.4 on the grid [-8, 8]

    def tail_check(out: Any) -> Optional[str]:
        err = abs(float(out.reshape(-1)[0]) - (-40.5 - 0.5 * math.log(2 * math.pi)))
        return None if err < 0.5 else f"log_prob(9) off by {err:.3g} nats (neither an exact tail nor an error)"

    cases.setdefault("range", []).append(Call(call, {"x": beyond}, False, ("x", "grid"), tail_check, "x=beyond-grid",
                                              either=True))
    for k in ("shape",):  # (n, 1) and (n,) are both natural for 1-D: drop "wrong-d"/"extra-dim" (ambiguous)
        cases[k] = [c for c in cases[k] if c.label == "x=empty-batch"]

    def build(model: Any, grid: Any = grid, device: Any = None, dtype: Any = None) -> Any:
        return likelihood.sampler_density_1d(model, grid=grid, device=device, dtype=dtype).log_prob(xs)

    more = _cases(build, {"model": model, "grid": grid, "device": None, "dtype": None}, {
        "grid": {"shape": [("empty", torch.zeros(0, dtype=F64), False)],
                 "nonfinite": [("nan", torch.tensor([0.0, float("nan"), 1.0], dtype=F64), False)]},
        "device": device_mutations(), "dtype": {"dtype": [("int64", torch.int64, False)]},
    }, model_arg="model", models_bad=faulty_models(1, sch))
    for k, v in more.items():
        cases.setdefault(k, []).extend(v)
    return cases


def e_gaussian_sampler(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(50)
    d = draw(ints(1, 3))
    model = models.AffineDenoiser(d, sch)

    def call(model: Any, d: Any = None, affine_rtol: Any = 1e-7, device: Any = None) -> Any:
        return likelihood.gaussian_sampler(model, d=d, affine_rtol=affine_rtol, device=device).mean

    return _cases(call, {"model": model, "d": None, "affine_rtol": 1e-7, "device": None}, {
        "d": {"range": [("zero", 0, False), ("wrong-d", d + 1, False)], "type": [("str", "2", False)]},
        "affine_rtol": {"range": [("negative", -1.0, False)], "nonfinite": [("nan", float("nan"), False)]},
        "device": device_mutations(),
    }, model_arg="model", models_bad=faulty_models(d, sch))


# --- samplers ---------------------------------------------------------------------------------
SAMPLER_FNS = {"ddpm": sampling.ddpm, "ddim": sampling.ddim, "euler_maruyama": sampling.euler_maruyama,
               "reverse_diffusion": sampling.reverse_diffusion, "predictor_corrector": sampling.predictor_corrector,
               "probability_flow": sampling.probability_flow}


def _sampler_entry(name: str) -> Callable[[Draw], Cases]:
    fn = SAMPLER_FNS[name]

    def entry(draw: Draw) -> Cases:
        d, n, steps = draw(ints(1, 2)), draw(ints(1, 4)), draw(ints(2, 6))
        model = exact(d, None, 0)
        base: Dict[str, Any] = {"model": model, "n": n, "steps": steps, "generator": torch.Generator().manual_seed(0)}
        g = torch.Generator().manual_seed(1)
        x_T = torch.randn(n, d, generator=g, dtype=F64)
        muts: Dict[str, Dict[str, List[Tuple[str, Any, bool]]]] = {
            "n": int_mutations(n, 1), "steps": int_mutations(steps, 1),
            "t_min": {"range": [("equal-ends", Both(t_min=0.5, t_max=0.5), False), ("above-t_max", 2.0, False)],
                      "nonfinite": [("nan", float("nan"), False)]},
            "t_max": {"nonfinite": [("inf", float("inf"), False)]},
            "device": device_mutations(),
            "dtype": {"dtype": [("int64", torch.int64, False), ("complex128", torch.complex128, False)]},
            "x_T": {k: v for k, v in x_mutations(x_T).items() if k in ("dtype", "nonfinite", "device")},
        }
        if name == "probability_flow":
            muts["rtol"] = posfloat_mutations(1e-4)
            muts["atol"] = {"range": [("negative", -1e-4, False)], "nonfinite": [("inf", float("inf"), False)]}
            base["steps"] = None
            del muts["steps"]
        if name == "ddim":
            muts["eta"] = {"nonfinite": [("nan", float("nan"), False)], "range": [("negative", -1.0, False)]}
        return _cases(fn, base, muts, model_arg="model", models_bad=faulty_models(d) + (
                      [(f"{lab} (d=2)", m) for lab, m in faulty_models(2)] if d == 1 else []),
                      aliases={"t_min": ("t_end", "t_start", "t_max", "interval"),
                               "t_max": ("t_start", "t_end", "t_min", "interval")})

    return entry


def e_energy_distance(draw: Draw) -> Cases:
    d, n, m = draw(ints(1, 3)), draw(ints(2, 8)), draw(ints(2, 8))
    x, y = points(d, n, 0), points(d, m, 1)
    fn = draw(choice(["distance", "test"]))

    def call(x: Any, y: Any, permutations: Any = 19) -> Any:
        if fn == "distance":
            return sampling.energy_distance(x, y)
        return sampling.energy_test(x, y, permutations=permutations, generator=torch.Generator().manual_seed(0))

    def check(out: Any) -> Optional[str]:
        v = out if isinstance(out, torch.Tensor) else getattr(out, "statistic", None)
        if isinstance(v, torch.Tensor) and float(v) < -1e-9:
            return f"negative energy distance {float(v):.3g}"
        return None

    muts: Dict[str, Dict[str, List[Tuple[str, Any, bool]]]] = {"x": _no_f16(x_mutations(x)), "y": {
        "shape": [("wrong-d", torch.cat([y, y], 1), False), ("empty-batch", y[:0], False)]}}
    if fn == "test":
        muts["permutations"] = int_mutations(19, 1)
    return _cases(call, {"x": x, "y": y, "permutations": 19}, muts, check=check)


def e_ks_test(draw: Draw) -> Cases:
    d, n = draw(ints(1, 2)), draw(ints(5, 30))
    g = gmm(d)
    s = g.sample(n, generator=torch.Generator().manual_seed(0))

    def call(samples: Any, gmm: Any = g, direction: Any = None) -> Any:
        return sampling.ks_test(samples, gmm, direction)

    return _cases(call, {"samples": s, "gmm": g, "direction": None}, {
        "samples": {k: [m for m in v if m[0] != "float16"] for k, v in x_mutations(s).items() if k != "device"},
        "direction": {"shape": [("wrong-d", torch.ones(d + 1, dtype=F64), False)],
                      "range": [("zero", torch.zeros(d, dtype=F64), False)]},
        "gmm": {"type": [("str", "gmm", False)]}})


# --- training ---------------------------------------------------------------------------------
def e_denoising_loss(draw: Draw) -> Cases:
    d, n, seed = draw(ints(1, 3)), draw(ints(1, 6)), draw(ints(0, 100))
    sch = S.VPCosine()
    weighting = draw(choice(sorted(training.WEIGHTINGS)))
    loss = training.DenoisingLoss(sch, weighting)
    model = models.MLPDenoiser(d, sch, width=8, depth=1, dtype=F64, seed=seed)
    x0 = points(d, n, seed)

    def call(model: Any, x0: Any, t: Any = None) -> Any:
        return loss(model, x0, generator=torch.Generator().manual_seed(0), t=t)

    cases = _cases(call, {"model": model, "x0": x0, "t": None}, {
        "x0": x_mutations(x0),
        "t": {"nonfinite": [("nan", torch.full((n,), float("nan"), dtype=F64), False)],
              "range": [("above-t_max", torch.full((n,), 2.0, dtype=F64), False)],
              "shape": [("wrong-n", torch.full((n + 1,), 0.5, dtype=F64), False)]},
    }, model_arg="model", models_bad=faulty_models(d, sch), aliases={"x0": ("x",)})

    def build(schedule: Any, weighting: Any = "eps", time_sampling: Any = "uniform", truncation: Any = 1e-3) -> Any:
        return training.DenoisingLoss(schedule, weighting, time_sampling, truncation=truncation)(
            model, x0, generator=torch.Generator().manual_seed(0))

    more = _cases(build, {"schedule": sch, "weighting": "eps", "time_sampling": "uniform", "truncation": 1e-3}, {
        "schedule": {"type": [("str", "cosine", False)]}, "weighting": {"type": [("unknown", "nonsense", False)]},
        "time_sampling": {"type": [("unknown", "nonsense", False)]},
        "truncation": {"nonfinite": [("nan", float("nan"), False)], "range": [("negative", -0.1, False)]}})
    for k, v in more.items():
        if k != "valid":
            cases.setdefault(k, []).extend(v)
    return cases


def e_trainer(draw: Draw) -> Cases:
    d, steps, seed = draw(ints(1, 2)), draw(ints(1, 3)), draw(ints(0, 100))
    sch = S.VPCosine()
    x = points(d, 32, seed)

    def call(model: Any, data: Any, steps: Any, batch_size: Any = 16, lr: Any = 1e-3, seed: Any = 0,
             device: Any = "cpu", ema_decay: Any = 0.9) -> Any:
        tr = training.Trainer(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                              ema_decay=ema_decay)
        hist = tr.train()
        return getattr(hist, "losses", hist)

    def fresh() -> Any:
        return models.MLPDenoiser(d, sch, width=8, depth=1, dtype=F64, seed=seed)

    return _cases(call, {"model": fresh(), "data": x, "steps": steps, "batch_size": 16, "lr": 1e-3, "seed": seed,
                         "device": "cpu", "ema_decay": 0.9}, {
        "steps": int_mutations(steps, 1), "batch_size": int_mutations(16, 1), "seed": int_mutations(seed, 0, seed=True),
        "lr": posfloat_mutations(1e-3), "device": device_mutations(),
        "ema_decay": {"range": [("above-1", 1.5, False)], "nonfinite": [("nan", float("nan"), False)]},
        "data": {k: [m for m in v if m[0] != "float16"] for k, v in x_mutations(x).items()
                 if k in ("nonfinite", "shape", "dtype")},
    }, aliases={"data": ("x", "x0", "batch")}, model_arg="model", models_bad=faulty_mlps(d, sch))


# --- glue ---------------------------------------------------------------------------------------
def e_bits_per_dim(draw: Draw) -> Cases:
    n, d = draw(ints(1, 5)), draw(ints(1, 64))
    logp = -torch.rand(n, dtype=F64, generator=torch.Generator().manual_seed(n)) * 10 * d
    as_est = draw(flag())

    def mk(v: torch.Tensor) -> Any:
        return df.Estimate(v, torch.zeros_like(v), 1, 0.0) if as_est else v

    def call(logp: Any, d: Any, data_scale: Any = 1.0, dequantization: Any = "uniform") -> Any:
        return bits.bits_per_dim(mk(logp) if isinstance(logp, torch.Tensor) else logp, d, data_scale=data_scale,
                                 dequantization=dequantization)

    return _cases(call, {"logp": logp, "d": d, "data_scale": 1.0, "dequantization": "uniform"}, {
        "logp": {"nonfinite": [("nan", logp * float("nan"), False),
                               ("estimate-nan", df.Estimate(logp * float("nan"), torch.zeros_like(logp), 1, 0.0),
                                False),
                               ("estimate-nan-stderr", df.Estimate(logp, logp * float("nan"), 1, 0.0), False)],
                 "dtype": [("complex", logp.to(torch.complex128), False)]},
        "d": int_mutations(d, 1),
        "data_scale": {k: [m for m in v if m[0] != "list"] for k, v in posfloat_mutations(1.0).items()},
        "dequantization": {"type": [("unknown", "nonsense", False)]}})


def e_load_digits(draw: Draw) -> Cases:
    scale = draw(choice(["symmetric"]))

    def call(scale: Any = "symmetric", dtype: Any = torch.float32, device: Any = None, generator: Any = None) -> Any:
        return data.load_digits(scale, generator=generator, dtype=dtype, device=device)

    return _cases(call, {"scale": scale, "dtype": torch.float32, "device": None}, {
        "scale": {"type": [("unknown", "nonsense", False), ("None", None, False)]},
        "dtype": {"dtype": [("int64", torch.int64, False), ("bool", torch.bool, False), ("str", "float32", False)]},
        "device": device_mutations(), "generator": {"type": [("int", 3, False)]}})



# -- the exact 1-D chain laws (I39-I42) -----------------------------------------------------------
_G1 = torch.linspace(-6.0, 6.0, 601, dtype=F64)


def _normal_log(grid: torch.Tensor, m: float, v: float) -> torch.Tensor:
    return -0.5 * (grid - m) ** 2 / v - 0.5 * math.log(2 * math.pi * v)


def _grid_muts() -> Dict[str, List[Tuple[str, Any, bool]]]:
    nonuni = _G1.clone()
    nonuni[5] += 0.003
    nan = _G1.clone()
    nan[3] = float("nan")
    return {"shape": [("two-points", _G1[:2], False), ("2-d", _G1[:, None], False)],
            "range": [("non-uniform", nonuni, False), ("decreasing", _G1.flip(0), False)],
            "nonfinite": [("nan", nan, False)], "type": [("list", _G1.tolist(), False)],
            "dtype": [("int64", torch.arange(601), False)]}


def e_grid_kl(draw: Draw) -> Cases:
    m, v = draw(floats(-0.5, 0.5)), draw(floats(0.3, 1.0))
    wide = torch.linspace(-10.0, 10.0, 1001, dtype=F64)  # tails beyond +-10 negligible; the rule is spectral
    lp, lq = _normal_log(wide, m, v), _normal_log(wide, 0.0, 1.0)
    exact = 0.5 * (v + m**2 - 1.0 - math.log(v))

    def call(log_p: Any, log_q: Any, grid: Any) -> Any:
        return likelihood.grid_kl(log_p, log_q, grid)

    def check(out: Any) -> Optional[str]:
        return None if abs(out[0] - exact) < 1e-8 else f"KL {out[0]:.6g} != {exact:.6g}"

    nan = lp.clone()
    nan[10] = float("nan")
    ninf = lq.clone()
    ninf[500] = -math.inf
    return _cases(call, {"log_p": lp, "log_q": lq, "grid": wide}, {
        "log_p": {"shape": [("short", lp[:-1], False)], "nonfinite": [("nan", nan, False)],
                  "type": [("list", lp.tolist(), False)]},
        "log_q": {"range": [("-inf-where-p>0", ninf, False)], "shape": [("2-d", lq[:, None], False)]},
        "grid": _grid_muts(),
    }, check=check)


def e_gaussian_step_1d(draw: Draw) -> Cases:
    a, var = draw(floats(0.5, 1.2)), draw(floats(0.05, 0.5))
    p = torch.exp(_normal_log(_G1, 0.3, 0.4))

    def call(grid: Any, density: Any, mean: Any, var: Any, weights: Any = None) -> Any:
        return likelihood.gaussian_step_1d(grid, density, mean, var, weights)

    def check(out: Any) -> Optional[str]:  # y = a x + N(0, var): N(0.3 a, a^2 0.4 + var)
        truth = torch.exp(_normal_log(_G1, 0.3 * a, a * a * 0.4 + var))
        return _close(out, truth, 1e-7)

    bad_mean = (a * _G1).clone()
    bad_mean[7] = float("inf")
    return _cases(call, {"grid": _G1, "density": p, "mean": a * _G1, "var": var}, {
        "var": merge(posfloat_mutations(var), {"range": [("below-grid-step", 1e-6, False)]}),
        "density": {"shape": [("short", p[:-1], False)]},
        "mean": {"nonfinite": [("inf", bad_mean, False)], "shape": [("short", (a * _G1)[:-2], False)],
                 "type": [("list", [0.0], False)]},
        "weights": {"range": [("not-summing-to-1", Both(mean=torch.stack([_G1, _G1]),
                                                        weights=torch.tensor([0.7, 0.7], dtype=F64)), False)]},
    }, check=check)


def _gauss_model(schedule: Optional[S.Schedule] = None) -> models.AnalyticModel:
    return models.AnalyticModel(T.GaussianMixture([1.0], [[0.5]], [0.25]), schedule or S.VPLinear())


def e_pc_density_1d(draw: Draw) -> Cases:
    model = _gauss_model()
    snr = draw(floats(0.05, 0.2))
    times = sampling.time_grid(model, 40)

    def call(model: Any, times: Any = times, grid: Any = _G1, snr: Any = snr, corrector_steps: Any = 1,
             predictor: Any = "reverse_diffusion") -> Any:
        return likelihood.pc_density_1d(model, times, grid=grid, snr=snr, corrector_steps=corrector_steps,
                                        predictor=predictor)

    def check(out: Any) -> Optional[str]:  # N(0.5, 0.25) up to discretization and the Langevin bias (I40)
        m, v = out.moments()
        return None if abs(m - 0.5) < 0.05 and abs(v / 0.25 - 1) < 0.15 else f"moments {m:.3g}, {v:.3g}"

    return _cases(call, {"model": model, "times": times, "grid": _G1, "snr": snr, "corrector_steps": 1,
                         "predictor": "reverse_diffusion"}, {
        "snr": posfloat_mutations(snr),
        "corrector_steps": {"range": [("negative", -1, False)], "type": [("float", 1.5, False), ("str", "1", False)]},
        "predictor": {"range": [("unknown", "heun", False)]},
        "times": {"range": [("increasing", times.flip(0), False)], "shape": [("one", times[:1], False)]},
        "grid": _grid_muts(),
    }, model_arg="model", models_bad=faulty_models(1, S.VPLinear()), check=check)


def e_langevin_stationary_1d(draw: Draw) -> Cases:
    model = _gauss_model()
    snr = draw(floats(0.05, 0.3))
    t = 0.3

    def call(model: Any, t: Any = t, grid: Any = _G1, snr: Any = snr, alpha: Any = 1.0) -> Any:
        return likelihood.langevin_stationary_1d(model, t, grid=grid, snr=snr, alpha=alpha)[0]

    v_t = 0.25 * float(model.schedule.alpha2(torch.tensor(t, dtype=F64))) + float(
        model.schedule.sigma2(torch.tensor(t, dtype=F64)))

    def check(out: Any) -> Optional[str]:  # I40: V / v - 1 = alpha snr^2
        _, v = out.moments()
        return None if abs((v / v_t - 1) - snr**2) < 1e-3 else f"excess {v / v_t - 1:.4g} != snr^2 {snr**2:.4g}"

    return _cases(call, {"model": model, "t": t, "grid": _G1, "snr": snr, "alpha": 1.0}, {
        "snr": posfloat_mutations(snr), "alpha": posfloat_mutations(1.0), "grid": _grid_muts(),
    }, model_arg="model", models_bad=faulty_models(1, S.VPLinear()), check=check)


def e_replacement_density_1d(draw: Draw) -> Cases:
    # independent coordinates: the unknown one's chain is the plain 1-D sampler of N(0.5, 0.25)
    g2 = T.GaussianMixture([1.0], [[0.0, 0.5]], [[0.3, 0.25]])
    model = models.AnalyticModel(g2, S.VPLinear())
    times = sampling.time_grid(model, draw(ints(180, 240)))  # 45 steps: 14% variance error
    value = draw(floats(-1.0, 1.0))

    def call(model: Any, times: Any = times, known: Any = 0, value: Any = value, grid: Any = _G1,
             nodes: Any = 8) -> Any:
        return likelihood.replacement_density_1d(model, times, known=known, value=value, grid=grid, nodes=nodes)

    def check(out: Any) -> Optional[str]:
        m, v = out.moments()
        return None if abs(m - 0.5) < 0.02 and abs(v / 0.25 - 1) < 0.06 else f"moments {m:.3g}, {v:.3g}"

    return _cases(call, {"model": model, "times": times, "known": 0, "value": value, "grid": _G1, "nodes": 8}, {
        "known": {"range": [("two", 2, False)]},
        "value": {"nonfinite": [("nan", float("nan"), False)]},
        "nodes": merge(int_mutations(8, 2)),
        "times": {"range": [("increasing", times.flip(0), False)]},
        "grid": _grid_muts(),
    }, model_arg="model", models_bad=faulty_models(2, S.VPLinear()), check=check)


def e_girsanov_1d(draw: Draw) -> Cases:
    sch = S.Discrete.ddpm_linear(40)
    target = T.GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.3], [0.3]])
    ref = models.AnalyticModel(target, sch)
    grid = torch.linspace(-5.0, 5.0, 401, dtype=F64)

    def call(model: Any, reference: Any = ref, grid: Any = grid, target: Any = target, sampler: Any = "ddpm") -> Any:
        return likelihood.girsanov_1d(model, reference, grid=grid, target=target, sampler=sampler)

    def check(out: Any) -> Optional[str]:  # the model is the reference: path KL 0, output KL 0
        return None if abs(out.bound) < 1e-12 and abs(out.kl) < 1e-9 else f"bound {out.bound:.3g}, kl {out.kl:.3g}"

    two_d = T.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    return _cases(call, {"model": ref, "reference": ref, "grid": grid, "target": target, "sampler": "ddpm"}, {
        "reference": {"type": [("str", "ref", False)],
                      "range": [("other-steps", models.AnalyticModel(target, S.Discrete.ddpm_linear(60)), False)]},
        "target": {"type": [("str", "q", False)], "shape": [("2-d", two_d, False)]},
        "sampler": {"range": [("unknown", "heun", False)]},
    }, model_arg="model", models_bad=faulty_models(1, sch), check=check)


ENTRY_POINTS: Dict[str, Callable[[Draw], Cases]] = {
    "schedules.methods": e_schedule_methods,
    "schedules.t_from_log_snr": e_schedule_t_from_log_snr,
    "schedules.Discrete": e_discrete,
    "targets.GaussianMixture": e_gaussian_mixture,
    "targets.GaussianMixture.log_prob": e_gmm_log_prob,
    "targets.GaussianMixture.score/denoise": e_gmm_score_denoise,
    "targets.GaussianMixture.sample": e_gmm_sample,
    "targets.random_gmm": e_random_gmm,
    "models.AnalyticModel": e_analytic_model_init,
    "models.AnalyticModel.methods": e_analytic_model,
    "models.MLPDenoiser": e_mlp_denoiser_init,
    "models.MLPDenoiser.methods": e_mlp_denoiser,
    "models.AffineDenoiser": e_affine_denoiser,
    "parameterization": e_parameterization,
    "density_formula": e_density_formula,
    "density_formula_discrete": e_density_formula_discrete,
    "elbo.ddpm": e_elbo_ddpm,
    "elbo.importance_weighted": e_elbo_importance_weighted,
    "elbo.continuous": e_elbo_continuous,
    "elbo.kl_de_bruijn": e_elbo_kl_de_bruijn,
    "likelihood.probability_flow": e_likelihood_pf,
    "likelihood.probability_flow.trajectory": e_likelihood_pf_trajectory,
    "likelihood.sampler_density_1d": e_sampler_density_1d,
    "likelihood.gaussian_sampler": e_gaussian_sampler,
    "likelihood.grid_kl": e_grid_kl,
    "likelihood.gaussian_step_1d": e_gaussian_step_1d,
    "likelihood.pc_density_1d": e_pc_density_1d,
    "likelihood.langevin_stationary_1d": e_langevin_stationary_1d,
    "likelihood.replacement_density_1d": e_replacement_density_1d,
    "likelihood.girsanov_1d": e_girsanov_1d,
    **{f"sampling.{k}": _sampler_entry(k) for k in SAMPLER_FNS},
    "sampling.energy": e_energy_distance,
    "sampling.ks_test": e_ks_test,
    "training.DenoisingLoss": e_denoising_loss,
    "training.Trainer": e_trainer,
    "bits_per_dim": e_bits_per_dim,
    "data.load_digits": e_load_digits,
}


def cases_for(entry: str, category: str, draw: Draw) -> List[Call]:
    return ENTRY_POINTS[entry](draw).get(category, [])


class _MinimalDraw:
    """A stand-in for ``data.draw`` that returns each strategy's simplest value (no hypothesis run)."""

    def __call__(self, strategy: st.SearchStrategy[Any]) -> Any:
        return _SIMPLEST[id(strategy)][1]


_MINIMAL: Dict[str, Cases] = {}


def _minimal(entry: str) -> Cases:
    if entry not in _MINIMAL:
        _MINIMAL[entry] = ENTRY_POINTS[entry](_MinimalDraw())
    return _MINIMAL[entry]


def _categories_of(entry: str) -> List[str]:
    """Categories an entry point has mutations in (from one minimal draw)."""
    found = _minimal(entry)
    return [c for c in CATEGORIES if found.get(c)]


def n_calls(entry: str, category: str) -> int:
    return len(_minimal(entry).get(category, []))


PAIRS: List[Tuple[str, str]] = [(e, c) for e in ENTRY_POINTS for c in _categories_of(e)]
_RECORD[0] = False
_SIMPLEST.clear()


def run_pair(entry: str, category: str, draw: Draw, tally: Optional[Counter] = None,  # type: ignore[type-arg]
             details: Optional[List[Tuple[str, str, str, str]]] = None) -> List[Tuple[str, str, str]]:
    """Run every call of one drawn base; return the bad ones (label, class, detail)."""
    bad: List[Tuple[str, str, str]] = []
    for call in cases_for(entry, category, draw):
        cls, detail = run_call(call)
        if tally is not None:
            tally[(entry, cls)] += 1
        if details is not None:
            details.append((entry, category, call.label, cls + ": " + detail))
        if cls in BAD:
            bad.append((call.label, cls, detail))
    return bad


# ----------------------------------------------------------------------------------------------
# the tests
# ----------------------------------------------------------------------------------------------
def _params(slow: bool) -> List[Any]:
    marks_base = [pytest.mark.slow] if slow else []
    out = []
    for entry, cat in PAIRS:
        marks = list(marks_base)
        known = {**XFAIL, **XFAIL_SLOW} if slow else XFAIL
        if (entry, cat) in known:
            marks.append(pytest.mark.xfail(strict=True, reason=known[(entry, cat)]))
        out.append(pytest.param(entry, cat, marks=marks, id=f"{entry}-{cat}"))
    return out


def _check(entry: str, category: str, data: Any) -> None:
    torch.manual_seed(0)
    bad = run_pair(entry, category, data.draw)
    assert not bad, f"{entry} [{category}]: " + "; ".join(f"{lab} -> {cls} ({det})" for lab, cls, det in bad)


_SETTINGS = dict(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=list(HealthCheck), report_multiple_bugs=False)


@pytest.mark.parametrize("entry, category", _params(slow=False))
@settings(max_examples=FUZZ_FAST_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_fuzz_fast(entry: str, category: str, data: Any) -> None:
    _check(entry, category, data)


@pytest.mark.parametrize("entry, category", _params(slow=True))
@settings(max_examples=FUZZ_SLOW_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_fuzz_slow(entry: str, category: str, data: Any) -> None:
    _check(entry, category, data)


#: public callables (module.name) that the registry above fuzzes, directly or through the entry point named
FUZZED = {
    "schedules.LiYan", "schedules.VPLinear", "schedules.VPCosine", "schedules.SubVP", "schedules.VE",
    "schedules.Discrete", "targets.GaussianMixture", "targets.Gaussian", "targets.random_gmm",
    "models.AnalyticModel", "models.MLPDenoiser", "models.AffineDenoiser", "models.checked", "models.CheckedModel",
    "models.check_model", "models.ModelOutputError",
    "parameterization.x0_to_eps", "parameterization.convert", "parameterization.eps_to_x0",
    "parameterization.eps_to_score", "parameterization.score_to_eps", "parameterization.x0_to_v",
    "parameterization.eps_x0_to_v", "parameterization.v_to_x0", "parameterization.to_x0", "parameterization.from_x0",
    "formula.density_formula", "formula.density_formula_discrete",
    "elbo.ddpm", "elbo.ddpm_objective", "elbo.importance_weighted", "elbo.continuous", "elbo.kl_de_bruijn",
    "likelihood.probability_flow", "likelihood.sampler_density_1d", "likelihood.SamplerDensity1D",
    "likelihood.gaussian_sampler", "likelihood.GaussianSamplerLaw", "likelihood.grid_kl", "likelihood.gaussian_step_1d",
    "likelihood.pc_density_1d", "likelihood.ChainDensity1D", "likelihood.langevin_stationary_1d",
    "likelihood.replacement_density_1d", "likelihood.girsanov_1d", "likelihood.GirsanovBound1D",
    "sampling.ddpm", "sampling.ddim", "sampling.euler_maruyama", "sampling.reverse_diffusion",
    "sampling.predictor_corrector", "sampling.probability_flow", "sampling.energy_distance", "sampling.energy_test",
    "sampling.EnergyTest", "sampling.ks_test", "training.DenoisingLoss", "training.WeightedLoss", "training.Trainer",
    "bits.bits_per_dim", "data.load_digits",
}
#: public callables deliberately left out (protocols/ABCs, helpers below the public estimators, or not in the
#: issue's list); a new public name must be added to one of the two sets
NOT_FUZZED_PREFIXES = (
    "schedules.Schedule", "parameterization.ZeroScaleError", "models.Denoiser", "models.ModelProtocol",
    "models.ExactDivergence",
    "models.DiffusionModel", "models.ConditionalMLPDenoiser", "models.ConditionedModel", "models.log_snr_embedding",
    "models.log_snr_interval", "models.check_output", "likelihood.pf_velocity", "likelihood.gaussian_kl",
    "sampling.langevin_step", "sampling.Sampler", "sampling.SamplerInfo", "sampling.SamplerDivergedError",
    "sampling.NoiseSampler", "sampling.gaussian_noise", "sampling.GuidedModel", "sampling.gmm_",
    "sampling.inpaint", "sampling.time_grid", "sampling.default_", "sampling.prior_sample", "sampling.mixture_cdf",
    "training.", "data.",
)


def fast_verdict(entry: str, category: str) -> Optional[str]:
    """What ``test_fuzz_fast[entry-category]`` finds on the current code: None (green) or the bad calls."""
    found: List[str] = []

    @settings(max_examples=FUZZ_FAST_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
    @given(data=st.data())
    def probe(data: Any) -> None:
        torch.manual_seed(0)
        for lab, cls, _ in run_pair(entry, category, data.draw):
            found.append(f"{lab} -> {cls}")

    probe()
    return "; ".join(sorted(set(found))) or None


def test_every_public_entry_point_is_fuzzed() -> None:
    """Walk each module's ``__all__``: every public callable is fuzzed or explicitly left out."""
    import importlib

    missing = []
    for mod_name in ["schedules", "targets", "models", "parameterization", "formula", "elbo", "likelihood",
                     "sampling", "training", "bits", "data"]:
        mod = importlib.import_module(f"densityformula.{mod_name}")
        for name in mod.__all__:
            if not callable(getattr(mod, name)):
                continue
            q = f"{mod_name}.{name}"
            if q not in FUZZED and not q.startswith(NOT_FUZZED_PREFIXES):
                missing.append(q)
    assert not missing, f"public callables neither fuzzed nor listed as left out: {missing}"
    for q in FUZZED:
        mod_name, name = q.split(".", 1)
        assert name in importlib.import_module(f"densityformula.{mod_name}").__all__, q
    for name in ("density_formula", "density_formula_discrete", "bits_per_dim"):
        assert name in df.__all__
    assert set(SAMPLER_FNS) <= set(sampling.SAMPLERS) | {"probability_flow"}
