"""Experiments whose claims can fail: typed experiments, claims with negative controls, fresh results.

An experiment (:class:`Experiment`) computes numbers, makes claims about them and draws figures.
Each claim (:class:`Claim`) is a *check* of a defect size ``s`` (``check(0)``: the real data)
with a negative control (:class:`Control`): the same check on deliberately wrong input must fail,
and the smallest defect it detects (its power) is reported (docs/math.md I25).  :mod:`checks`
holds the statistical and exact checks.  Results are keyed on a hash of the code and arguments
that made them, written atomically, and rendered into ``index.html`` (:func:`write_index`).

    from densityformula.experiment import Experiment, Claim, Control, checks

    class Mean(Experiment):
        name, title, claim = "mean", "Sample mean", "The sample mean of N(0, 1) draws is 0."

        def compute(self, ctx):
            x = torch.randn(1000, generator=ctx.generator())
            return {"mean": float(x.mean()), "se": float(x.std()) / 1000**0.5}

        def claims(self, r, ctx):
            yield Claim("mean is 0", "|mean| <= c se", checks.agreement(r["mean"], r["se"], 0.0, dof=999),
                        Control("bias added to the mean", 0.2, "units"))
"""
from . import checks
from ._claims import Claim, Control, Outcome, Quantity, evaluate
from ._experiment import Context, Experiment, Timer
from ._figures import STYLE, loglog_slope, save, save_table, subplots
from ._report import write_index
from ._runner import discover, exit_code, find_experiments_dir, run_experiments, script_package

__all__ = [
    "Experiment", "Context", "Claim", "Control", "Outcome", "Quantity", "evaluate", "checks", "Timer",
    "STYLE", "subplots", "save", "save_table", "loglog_slope", "write_index", "discover", "exit_code",
    "find_experiments_dir", "run_experiments", "script_package",
]
