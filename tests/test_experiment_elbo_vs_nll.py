"""The statistics of experiments/elbo_vs_nll.py's eps-vs-elbo sampler comparisons, on synthetic numbers.

* quick mode trains eps and elbo at 8 seeds (the 1-D claim is a one-sided t-test over seeds at alpha
  1e-3: its limit is 7.17 at 5 seeds, 4.79 at 8), the other weightings at 5;
* the 2-D comparison's standard error is over training seeds *and* held-out points: on a two-way
  random-effects model it covers the spread of the mean over replicates, where the standard error over
  points alone (the network held fixed) is several times too small;
* its check passes a clear effect, fails the control (the difference lowered) and fails an effect smaller
  than the seed-to-seed spread, and the 2-D comparison is claimed in full mode only.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from densityformula.experiment import Context, checks
from experiments import elbo_vs_nll as E


def test_quick_budget_trains_the_compared_weightings_at_more_seeds():
    b = E.budgets(True)[1]
    assert b.seeds_of("eps") == b.seeds_of("elbo") == 8 and b.seeds_of("uniform") == 5
    assert checks.t_crit(1, b.seeds_of("eps") - 1, sided=1) < 4.8 < 7.1 < checks.t_crit(1, b.seeds - 1, sided=1)
    for d, full in E.budgets(False).items():  # full mode: every weighting at the same seeds
        assert full.seeds_of("eps") == full.seeds_of("uniform") == full.seeds, d


def _two_way(rng: np.random.Generator, n: int, big_n: int, mu: float, sa: float, sb: float, se: float) -> np.ndarray:
    """``f[s, i] = mu + a_s + b_i + e_si``: seed effects ``a``, point effects ``b``, interaction ``e``."""
    return (mu + sa * rng.standard_normal((n, 1)) + sb * rng.standard_normal((1, big_n))
            + se * rng.standard_normal((n, big_n)))


def test_seed_level_standard_error_covers_the_seed_to_seed_spread():
    rng = np.random.default_rng(0)
    n, big_n = 5, 400
    sims = [_two_way(rng, n, big_n, 0.1, 0.15, 0.5, 0.5) for _ in range(400)]
    stats = [E._seed_level(f) for f in sims]
    spread = float(np.std([s["mean"] for s in stats], ddof=1))
    truth = math.sqrt(0.15**2 / n + 0.5**2 / big_n + 0.5**2 / (n * big_n))
    assert spread == pytest.approx(truth, rel=0.15)
    se = np.array([s["se"] for s in stats])
    assert np.sqrt(np.mean(se**2)) == pytest.approx(truth, rel=0.15)
    assert all(2 < s["dof"] < n * big_n for s in stats)
    # the standard error over points alone (networks held fixed) misses the seeds' spread
    points_only = np.mean([math.sqrt((s["per_seed_se"] ** 2).sum()) / n for s in stats])
    assert points_only < spread / 3


def test_significant_passes_a_clear_effect_and_fails_its_control():
    rng = np.random.default_rng(1)
    f = _two_way(rng, 5, 1024, 0.13, 0.01, 0.5, 0.3)
    check = E._significant(f, "d")
    assert check(0.0).passed
    assert not check(0.3).passed


def test_significant_fails_an_effect_smaller_than_the_seed_spread():
    # quick mode's 2-D numbers: a difference of about 0.1 nats, seeds spread by about 0.15, 3 seeds
    rng = np.random.default_rng(2)
    f = _two_way(rng, 3, 384, 0.1, 0.15, 0.6, 0.4)
    f[2] -= f[2].mean() + 0.02  # one seed slightly the other way, not significantly per its points
    out = E._significant(f, "d")(0.0)
    assert not out.passed
    q = out.quantities()
    assert q["t (mean)"].value < q["limit t (mean)"].value


def _rows(quick: bool) -> dict:
    """A minimal synthetic result of ``compute`` (numbers chosen so that every claim can be evaluated)."""
    rng = np.random.default_rng(3)
    bud = E.budgets(quick)
    rows1, rows2 = [], []
    for lab, w, _ in E.trainings(quick):
        for i in range(bud[1].seeds_of(w)):
            for step in bud[1].checkpoints:
                nll = 1.5 + (0.05 if w == "elbo" else 0.0) + 0.01 * rng.random()
                rows1.append({"training": lab, "seed": i, "step": step, "neg_elbo": nll + 0.1, "neg_elbo_error": 0.0,
                              "nll": nll, "nll_error": 0.0, "gap": 0.1, "loss_excess": 0.1, "bayes_loss": 1.0,
                              "loss_error": 0.0})
        for i in range(bud[2].seeds_of(w)):
            for step in bud[2].checkpoints:
                iw = torch.tensor(-3.6 - (0.1 if w == "elbo" else 0.0) + 0.3 * rng.standard_normal(64))
                rows2.append({"training": lab, "seed": i, "step": step, "iw": iw, "kl_iw": 0.2, "kl_iw_se": 0.01,
                              "iw_minus_elbo": 0.1, "iw_minus_elbo_se": 0.01,
                              "iw_minus_eps_iw": 0.1, "iw_minus_eps_iw_se": 0.04, "nll_iw": 3.7})
    budgets = {d: dict(b.__dict__, n_points=64) for d, b in bud.items()}
    return {"budgets": budgets, "rows1": rows1, "rows2": rows2}


@pytest.mark.parametrize("quick", [True, False])
def test_the_2d_comparison_is_claimed_in_full_mode_only(quick):
    ctx = Context(out_dir=Path("unused"), quick=quick)
    names = [c.name for c in E.EXPERIMENT.claims(_rows(quick), ctx)]
    assert any(n.startswith("(c, 1-D) training on the ELBO does not give the best sampler") for n in names)
    assert any("ELBO-trained networks' samplers have a higher NLL" in n for n in names) is not quick
    note = E.ElboVsNll._note_2d(_rows(quick), ctx)
    assert ("not claimed in quick mode" in note) is quick and "t " in note
