"""Claims, their negative controls and their power (docs/math.md section 11).

A claim is a *check* -- a function of the size ``s >= 0`` of a deliberately introduced defect,
returning an :class:`Outcome` -- together with a :class:`Control`, the defect that the check must
detect.  ``check(0)`` is the claim on the experiment's real data; ``check(control.size)`` is the
same check applied to the deliberately wrong input, and must fail.  The *power* of a claim is the
smallest defect size that makes its check fail, found by bisection in log scale where the check
is cheap to re-evaluate (``Control(search=True)``).

A claim whose control passes cannot fail when it should: :func:`evaluate` records that as a
defect (``"status": "control passed"``), which the report shows and which makes the run fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

__all__ = ["Quantity", "Outcome", "Control", "Claim", "evaluate"]

Number = Union[int, float]


@dataclass(frozen=True)
class Quantity:
    """A number with its unit, as the report shows it (``0.0123 nats``)."""

    value: float
    unit: str = ""
    digits: int = 4

    def text(self) -> str:
        v = float(self.value)
        if not math.isfinite(v):
            body = str(v)
        elif v.is_integer() and abs(v) < 1e9:  # counts (steps, samples) in full: 12000, not 1.2e+04
            body = str(int(v))
        elif 1e-3 <= abs(v) < 1e5:
            body = f"{v:.{self.digits}g}"
        else:
            body = f"{v:.{max(self.digits - 1, 1)}e}"
        return f"{body} {self.unit}".strip()

    def as_json(self) -> Dict[str, Any]:
        v = float(self.value)
        return {"value": v if math.isfinite(v) else str(v), "unit": self.unit, "text": self.text()}


def _quantities(values: Mapping[str, Any]) -> Dict[str, Quantity]:
    out: Dict[str, Quantity] = {}
    for k, v in values.items():
        if isinstance(v, Quantity):
            out[str(k)] = v
        elif isinstance(v, tuple) and len(v) == 2:
            out[str(k)] = Quantity(float(v[0]), str(v[1]))
        else:
            out[str(k)] = Quantity(float(v))
    return out


@dataclass(frozen=True)
class Outcome:
    """What a check found: ``passed`` and the numbers behind it (label -> :class:`Quantity`).

    ``values`` may also be given as plain floats or ``(value, unit)`` pairs.
    """

    passed: bool
    values: Mapping[str, Any] = field(default_factory=dict)

    def quantities(self) -> Dict[str, Quantity]:
        return _quantities(self.values)


#: a check: defect size ``s >= 0`` -> outcome (``s = 0``: the real data)
Check = Callable[[float], Outcome]


@dataclass(frozen=True)
class Control:
    """The negative control of a claim: a defect of ``size`` (in ``unit``) described by ``what``.

    ``what`` reads as a noun phrase with the size left out (``"bias added to every estimate"``):
    the report writes ``what (size unit)``.  With ``search=True`` the claim's power is found by
    bisecting over the size (the check is re-evaluated about a dozen times); leave it ``False``
    where one evaluation is expensive (then the power is reported as at most ``size``).
    """

    what: str
    size: float
    unit: str = ""
    search: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.what, str) or not self.what:
            raise ValueError("Control.what must be a non-empty description of the defect")
        if not (isinstance(self.size, (int, float)) and math.isfinite(self.size) and self.size > 0):
            raise ValueError(f"Control.size must be a positive finite number, got {self.size!r}")


@dataclass(frozen=True)
class Claim:
    """A named check with its expectation (one sentence) and its negative control."""

    name: str
    expected: str
    check: Check
    control: Control


def _power(check: Check, control: Control, *, steps: int = 8, span: float = 1024.0) -> Dict[str, Any]:
    """The smallest failing defect size in ``(0, control.size]`` (log-scale bisection).

    Assumes the check fails for every size above the smallest failing one (monotone defects).
    Returns ``{"size", "unit", "relation"}``: relation ``"="`` (to the bisection's resolution),
    ``"<"`` (fails already at ``size / span``), or ``"<="`` (no search: at most the control's size).
    """
    hi = float(control.size)
    if not control.search:
        return {"size": hi, "unit": control.unit, "relation": "<="}
    lo = hi / span
    if not check(lo).passed:
        return {"size": lo, "unit": control.unit, "relation": "<"}
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if check(mid).passed:
            lo = mid
        else:
            hi = mid
    return {"size": hi, "unit": control.unit, "relation": "="}


def evaluate(claim: Claim) -> Dict[str, Any]:
    """Run a claim, its control and (where cheap) its power search; the JSON record of all three.

    ``status`` is ``"holds"`` (claim passes, control fails), ``"fails"`` (the claim fails) or
    ``"control passed"`` (the claim passes but so does its deliberately wrong input: the claim
    cannot detect the defect it is meant to, which is a defect of the experiment).
    ``passed`` is ``status == "holds"``.
    """
    real = claim.check(0.0)
    wrong = claim.check(float(claim.control.size))
    status = "fails" if not real.passed else ("control passed" if wrong.passed else "holds")
    power: Optional[Dict[str, Any]] = None
    if real.passed and not wrong.passed:
        power = _power(claim.check, claim.control)
    return {
        "name": claim.name,
        "expected": claim.expected,
        "value": {k: q.as_json() for k, q in real.quantities().items()},
        "passed": status == "holds",
        "status": status,
        "control": {
            "what": claim.control.what,
            "size": float(claim.control.size),
            "unit": claim.control.unit,
            "passed": bool(wrong.passed),
            "value": {k: q.as_json() for k, q in wrong.quantities().items()},
        },
        "power": power,
    }
