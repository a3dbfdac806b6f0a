"""elbo.ddpm's memory is bounded by memory_budget: beyond its per-point result it does not grow with n."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import densityformula as df

_SCRIPT = """
import sys, threading, time, torch, densityformula as df
n, budget = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
gmm = df.targets.random_gmm(2, 3, seed=0)
m = df.models.AnalyticModel(gmm, df.schedules.Discrete.ddpm_linear(1000))
x = gmm.sample(n, generator=torch.Generator().manual_seed(0))
kw = {} if budget == 0 else {"memory_budget": budget}
page = 4096
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base, peak, done = rss(), [0], [False]
def watch():  # the resident set sampled every millisecond during the call
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
w = threading.Thread(target=watch)
w.start()
e = df.elbo.ddpm(m, x, n_samples=8, generator=torch.Generator().manual_seed(1), **kw)
done[0] = True
w.join()
assert bool(torch.isfinite(e.value).all())
print(max(peak[0], rss()) - base)  # bytes the call added at its peak
"""


def _peak_bytes(n: int, budget: int) -> int:
    """What ``elbo.ddpm`` of ``n`` points adds to the resident set at its peak (fresh process)."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(n), str(budget)], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_peak_memory_does_not_grow_with_n_beyond_the_budget_and_the_result():
    budget = 8 << 20
    T, n_small, n_large = 1000, 200, 1000
    growth = _peak_bytes(n_large, budget) - _peak_bytes(n_small, budget)
    # what must grow: the returned per-point arrays ((n, T) terms and a few (n,) vectors), taken
    # with a factor 4 for the copies made while they are assembled and the allocator's slack;
    # n_samples = 8 makes the (T, S, n) work arrays 8 times larger than that
    result = 4 * (n_large - n_small) * (T + 8) * 8
    assert growth < budget + result, (growth, budget, result)
    # negative control: without the budget (1 GiB default: one group) the same n grows by the
    # (T, S, n) work arrays, several times the bound above
    # (the sampled peak can only be missed, not exceeded, by a starved watcher: take the larger of two)
    growth_unbounded = max(_peak_bytes(n_large, 0), _peak_bytes(n_large, 0)) - _peak_bytes(n_small, 0)
    assert growth_unbounded > 2 * (budget + result), (growth_unbounded, budget + result)


def test_work_arrays_of_each_group_fit_the_budget(monkeypatch):
    """The grouping itself, deterministically: every (T, S, group) work array that the all-steps
    estimate allocates fits the budget; negative control: with the default budget one group holds
    all points and its work arrays are several times the small budget."""
    import densityformula.elbo as E

    seen = []
    real = E._sq_errors

    def spy(kern, x0, ks, n_samples, generator, cv, *rest):
        seen.append(int(ks.shape[0]) * n_samples * int(x0.shape[0]) * (int(x0.shape[1]) + 4) * 8)
        return real(kern, x0, ks, n_samples, generator, cv, *rest)

    monkeypatch.setattr(E, "_sq_errors", spy)
    gmm = df.targets.random_gmm(2, 3, seed=0)
    m = df.models.AnalyticModel(gmm, df.schedules.Discrete.ddpm_linear(1000))
    x = gmm.sample(1000, generator=torch.Generator().manual_seed(0))
    budget = 8 << 20
    df.elbo.ddpm(m, x, n_samples=8, generator=torch.Generator().manual_seed(1), memory_budget=budget)
    assert len(seen) > 1 and max(seen) <= budget
    seen.clear()
    df.elbo.ddpm(m, x, n_samples=8, generator=torch.Generator().manual_seed(1))
    assert len(seen) == 1 and seen[0] > 4 * budget


def test_grouped_points_give_the_same_estimate_in_law():
    """Groups draw other noise, so values differ, but only by their standard errors: the paired
    z-scores have mean 0 (tested at 5 standard errors of the mean) and unit scale."""
    gmm = df.targets.random_gmm(2, 3, seed=0)
    m = df.models.AnalyticModel(gmm, df.schedules.Discrete.ddpm_linear(200))
    x = gmm.sample(400, generator=torch.Generator().manual_seed(0))
    a = df.elbo.ddpm(m, x, generator=torch.Generator().manual_seed(1))
    b = df.elbo.ddpm(m, x, generator=torch.Generator().manual_seed(1), memory_budget=1 << 18)
    assert a.extras["terms"].shape == b.extras["terms"].shape == (400, 200)
    z = (a.value - b.value) / torch.sqrt(a.stderr**2 + b.stderr**2)
    assert abs(float(z.mean())) < 5 / math.sqrt(400)
    assert 0.7 < float(z.std()) < 1.3
    with pytest.raises(ValueError, match="memory_budget"):
        df.elbo.ddpm(m, x, memory_budget=0)
