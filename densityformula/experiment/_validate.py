"""Validation over seeds: run every experiment's claims at several seeds and tally the outcomes.

Each claim is a check at family-wise level ``alpha`` (docs/math.md I25), so over ``N`` claims and
``m`` seeds a correct library fails at most ``m N alpha`` claims in expectation; the tally reports
the observed count beside that bound and the Poisson probability of seeing at least as many.
Every control must fail at every seed (a control that passes is a claim that cannot fail).
"""
from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ._experiment import Experiment
from ._runner import run_experiments
from .checks import ALPHA

__all__ = ["validate", "validation_markdown"]


def validate(
    experiments: Sequence[Experiment], out: Path, *, seeds: Sequence[int], quick: bool = True, device: Any = "cpu",
    force: bool = False,
) -> Dict[str, Any]:
    """Run ``experiments`` at each seed into ``out/seed-<s>`` (keyed and resumable) and tally the claims.

    Returns ``{"seeds", "quick", "device", "rows": [per claim], "crashed": [(experiment, seed)],
    "n_runs", "n_fail", "n_control_passed", "expected_false_failures", "p_at_least_observed",
    "seconds"}``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    rows: Dict[tuple[str, str], Dict[str, Any]] = {}
    crashed: List[tuple[str, int]] = []
    seconds = 0.0
    for seed in seeds:
        summaries = run_experiments(experiments, Path(out) / f"seed-{seed}", quick=quick, seed=seed,
                                    device=device, force=force)
        for s in summaries:
            seconds += float(s.get("seconds", 0.0))
            if s.get("error"):
                crashed.append((s["name"], seed))
            for c in s["claims"]:
                key = (s["name"], str(c["name"]))
                row = rows.setdefault(key, {"experiment": s["name"], "claim": str(c["name"]), "runs": 0,
                                            "fails": [], "control_passed": [], "power": []})
                row["runs"] += 1
                if c.get("status") == "fails":
                    row["fails"].append(seed)
                if (c.get("control") or {}).get("passed"):
                    row["control_passed"].append(seed)
                if c.get("power"):
                    row["power"].append(float(c["power"]["size"]))
                    row["power_unit"] = c["power"].get("unit", "")
    table = list(rows.values())
    n_runs = sum(r["runs"] for r in table)
    n_fail = sum(len(r["fails"]) for r in table)
    expected = n_runs * ALPHA
    return {
        "seeds": seeds, "quick": quick, "device": str(device), "rows": table, "crashed": crashed,
        "n_runs": n_runs, "n_fail": n_fail,
        "n_control_passed": sum(len(r["control_passed"]) for r in table),
        "expected_false_failures": expected, "p_at_least_observed": _poisson_tail(n_fail, expected),
        "seconds": seconds,
    }


def _poisson_tail(k: int, mean: float) -> float:
    """``P(X >= k)`` for ``X ~ Poisson(mean)``."""
    if k <= 0:
        return 1.0
    return float(max(0.0, 1.0 - sum(math.exp(-mean) * mean**j / math.factorial(j) for j in range(k))))


def validation_markdown(tally: Dict[str, Any], command: str) -> str:
    """``docs/validation.md``: the tally of :func:`validate` as a table, with machine, command and date."""
    seeds = tally["seeds"]
    lines = [
        "# Validation: every claim over several seeds",
        "",
        f"Command: `{command}`. Date: {_dt.date.today().isoformat()}. Machine: {platform.machine()}, "
        f"{platform.system()}, Python {platform.python_version()}; device {tally['device']}; "
        f"{'quick' if tally['quick'] else 'full'} mode; seeds {', '.join(map(str, seeds))}; "
        f"{tally['seconds']:.0f} s of experiment time.",
        "",
        f"Each claim is a check at family-wise level {ALPHA:g} (docs/math.md I25), so {tally['n_runs']} claim runs "
        f"should give at most {tally['expected_false_failures']:.2f} false failures in expectation. "
        f"Observed: **{tally['n_fail']} failed claim runs** (Poisson probability of at least as many under that "
        f"bound: {tally['p_at_least_observed']:.3g}); **{tally['n_control_passed']} controls passed** (each must "
        f"fail: a control that passes is a claim that cannot fail)"
        + (f"; crashed: {', '.join(f'{n} (seed {s})' for n, s in tally['crashed'])}" if tally["crashed"] else "")
        + ".",
        "",
        "| experiment | claim | runs | failed at seeds | control passed at seeds | power (min - max over seeds) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in tally["rows"]:
        power = r["power"]
        ptxt = (f"{min(power):.3g} - {max(power):.3g} {r.get('power_unit', '')}".strip()) if power else "n/a"
        lines.append(
            f"| {r['experiment']} | {r['claim'].replace('|', '/')} | {r['runs']} | "
            f"{', '.join(map(str, r['fails'])) or '-'} | {', '.join(map(str, r['control_passed'])) or '-'} | {ptxt} |"
        )
    return "\n".join(lines) + "\n"
