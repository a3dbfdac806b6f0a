"""Minimise an objective over a family: closed form where known, L-BFGS otherwise (docs/math.md I30).

``theta* = argmin_theta J(D_theta)`` for ``J`` the ELBO objective (:class:`ELBOObjective`), the true KL
(:class:`KLObjective`) or any callable ``model -> scalar tensor``.  ``method="auto"`` takes the
family's closed form (:meth:`Family.closed_form`, e.g. the affine family, I30) when it has one and
otherwise runs scipy's L-BFGS-B on ``theta`` with the gradient from autograd (float64); an objective
without a gradient (``objective.differentiable`` false) gets Powell's derivative-free method.  The
result says how it ended: iterations, evaluations, the final gradient norm (also for a closed form:
a zero gradient there is a check of it) and whether the optimiser's convergence test was met.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch

from .._validation import check_int, check_positive_float
from ._common import check_choice
from .family import Family

Tensor = torch.Tensor

__all__ = ["MinimizeResult", "minimize"]

_METHODS = ("auto", "closed_form", "L-BFGS-B", "Powell", "Nelder-Mead")


@dataclass
class MinimizeResult:
    """The minimiser found and how the search ended.

    Attributes:
        params: ``theta*`` (float64 vector); the family's parameters are left set to it.
        value: ``J(theta*)``.
        method: ``"closed_form"``, ``"L-BFGS-B"``, ``"Powell"`` or ``"Nelder-Mead"``.
        iterations, evaluations: optimiser iterations and objective evaluations (0 and 1 for a
            closed form).
        grad_norm: ``||grad J(theta*)||_2`` (``nan`` where the objective has no gradient).
        converged: the optimiser's own convergence test was met (``True`` for a closed form).
        message: the optimiser's message.
        seconds: wall time.
    """

    params: Tensor
    value: float
    method: str
    iterations: int
    evaluations: int
    grad_norm: float
    converged: bool
    message: str
    seconds: float


def _value_and_grad(objective: Callable[[Any], Tensor], family: Family, theta: np.ndarray) -> Tuple[float, np.ndarray]:
    family.set_vector(theta)
    with torch.enable_grad():
        v = objective(family.model)
        if not isinstance(v, Tensor) or v.numel() != 1:
            raise TypeError("objective must return a scalar tensor")
        if not v.requires_grad:
            raise ValueError("the objective has no gradient in the family's parameters; use method='Powell'")
        g_list = torch.autograd.grad(v, family.parameters, allow_unused=True)
    g = torch.cat([(gi if gi is not None else torch.zeros_like(p)).detach().reshape(-1).to("cpu", torch.float64)
                   for gi, p in zip(g_list, family.parameters)]).numpy()
    return float(v.detach()), g


def _value(objective: Callable[[Any], Tensor], family: Family, theta: np.ndarray) -> float:
    family.set_vector(theta)
    with torch.no_grad():
        return float(objective(family.model).detach())


def minimize(
    objective: Callable[[Any], Tensor],
    family: Family,
    *,
    method: str = "auto",
    x0: Optional[Any] = None,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
) -> MinimizeResult:
    """``theta* = argmin J(D_theta)`` over ``family`` (I30); the family is left at ``theta*``.

    Args:
        objective: :class:`~densityformula.study.ELBOObjective`, :class:`~densityformula.study.KLObjective`
            or any callable ``model -> scalar tensor`` (with a gradient for L-BFGS-B).
        family: the :class:`Family`.
        method: ``"auto"``, ``"closed_form"`` (``ValueError`` if the family has none for this
            objective), ``"L-BFGS-B"``, ``"Powell"`` or ``"Nelder-Mead"``.
        x0: the starting ``theta`` (default the family's current parameters).
        max_iter: iteration limit; ``converged`` is false when it is reached first.
        gtol, ftol: L-BFGS-B's projected-gradient and relative-decrease tolerances (Powell and
            Nelder-Mead use ``ftol`` as their ``fatol``/``ftol`` and ``1e-8`` on ``theta``).
    """
    from scipy import optimize

    if not isinstance(family, Family):
        raise TypeError(f"family must be a densityformula.study.Family, got {type(family).__name__}")
    if not callable(objective):
        raise TypeError(f"objective must be callable (model -> scalar tensor), got {type(objective).__name__}")
    check_choice(method, "method", _METHODS)
    max_iter = check_int(max_iter, "max_iter", 1)
    gtol = check_positive_float(gtol, "gtol")
    ftol = check_positive_float(ftol, "ftol")
    tic = time.perf_counter()
    if method in ("auto", "closed_form"):
        theta = family.closed_form(objective)
        if theta is None and method == "closed_form":
            raise ValueError(f"{family!r} has no closed-form minimiser of {objective!r}")
        if theta is not None:
            differentiable = bool(getattr(objective, "differentiable", True))
            if differentiable:
                value, g = _value_and_grad(objective, family, theta.numpy())
                gn = float(np.linalg.norm(g))
            else:
                value, gn = _value(objective, family, theta.numpy()), math.nan
            return MinimizeResult(family.vector(), value, "closed_form", 0, 1, gn, True, "closed form",
                                  time.perf_counter() - tic)
        method = "L-BFGS-B" if bool(getattr(objective, "differentiable", True)) else "Powell"
    start = family.vector().numpy() if x0 is None else np.asarray(
        x0.detach().cpu() if isinstance(x0, Tensor) else x0, dtype=np.float64)
    if start.shape != (family.n_params,):
        raise ValueError(f"x0 must be a vector of {family.n_params} numbers, got shape {start.shape}")
    if method == "L-BFGS-B":
        res = optimize.minimize(lambda th: _value_and_grad(objective, family, th), start, jac=True,
                                method="L-BFGS-B", options={"maxiter": max_iter, "gtol": gtol, "ftol": ftol,
                                                            "maxfun": 20 * max_iter})
        _, g = _value_and_grad(objective, family, res.x)
        gn = float(np.linalg.norm(g))
    else:
        opts: dict[str, Any] = {"maxiter": max_iter, "xtol": 1e-8}
        if method == "Nelder-Mead":
            opts = {"maxiter": max_iter, "xatol": 1e-8, "fatol": ftol}
        else:
            opts["ftol"] = ftol
        res = optimize.minimize(lambda th: _value(objective, family, th), start, method=method, options=opts)
        gn = math.nan
    family.set_vector(res.x)
    return MinimizeResult(family.vector(), float(res.fun), method, int(res.nit), int(res.nfev), gn,
                          bool(res.success), str(res.message), time.perf_counter() - tic)
