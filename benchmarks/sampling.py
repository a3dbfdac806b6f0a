"""Sampler accuracy and speed with the exact score (df.sampling).

    .venv/bin/python benchmarks/sampling.py [--quick]

1. Convergence: for the Gaussian target N(1, 0.25) and the exact score, the EXACT mean and
   variance of each sampler's output (affine steps pushed through with unit noise impulses; no
   Monte Carlo error) versus the number of steps, and the slope of the error.
2. Probability-flow ODE: pathwise error against the exact Gaussian transport map, fixed-step
   RK4/Euler in log-SNR and adaptive dopri5 (NFE).
3. Predictor-corrector Langevin bias at fixed snr (Monte Carlo).
4. Replacement vs guided inpainting: energy distance to the exact conditional and its permutation p.
5. Wall time per sampler, 2-D mixture, n = 10000 points, float64, one CPU thread.
"""
import argparse
import math
import platform
import subprocess
import sys
import time

import torch

from densityformula import sampling as S
from densityformula.models import AnalyticModel
from densityformula.schedules import VE, LiYan, VPLinear
from densityformula.targets import Gaussian, GaussianMixture

F64 = torch.float64
M, V = 1.0, 0.25


def gauss_model(sch):
    return AnalyticModel(Gaussian(torch.tensor([M], dtype=F64), torch.tensor([[V]], dtype=F64)), sch)


def exact_moments(sampler, sch, steps, **kw):
    t0 = S.default_t_start(sch)
    a0, s20 = float(sch.alpha(t0)), float(sch.sigma2(t0))
    m0, v0 = a0 * M, a0 * a0 * V + s20
    count = [0]

    def impulse(x, i):
        z = torch.zeros_like(x)
        z[2 + count[0]] = 1.0
        count[0] += 1
        return z

    xT = torch.full((steps + 2, 1), m0, dtype=F64)
    xT[1] += 1.0
    out = sampler(gauss_model(sch), xT, steps=steps, t_max=t0, noise_sampler=impulse, **kw)[:, 0]
    gain, noise = out[1] - out[0], out[2:] - out[0]
    return float(out[0]), float(gain**2 * v0 + (noise**2).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"# machine: {cpu or platform.processor()}, torch {torch.__version__}, 1 thread")
    print(f"# command: {' '.join([sys.executable.split('/')[-1]] + sys.argv)}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")

    steps_list = [16, 64, 256] if args.quick else [16, 32, 64, 128, 256, 512, 1024]
    cases = [
        ("ddpm beta_tilde", S.ddpm, dict(variance="beta_tilde")),
        ("ddpm beta", S.ddpm, dict(variance="beta")),
        ("ddim eta=0", S.ddim, dict(eta=0.0)),
        ("euler_maruyama", S.euler_maruyama, {}),
        ("reverse_diffusion", S.reverse_diffusion, {}),
    ]
    print("## 1. Error of the output variance, Gaussian target N(1, 0.25), exact score, exact x_T")
    print("(entries: Var(out) - 0.25; last column: log2 slope between the last two step counts)\n")
    print("| schedule | sampler | " + " | ".join(f"N={k}" for k in steps_list) + " | slope |")
    print("|---|---|" + "---|" * (len(steps_list) + 1))
    for sch in (VPLinear(), LiYan()):
        for name, fn, kw in cases:
            errs = []
            for k in steps_list:
                mean, var = exact_moments(fn, sch, k, **kw)
                errs.append(var - V)
            slope = math.log2(abs(errs[-2]) / abs(errs[-1])) / math.log2(steps_list[-1] / steps_list[-2])
            print(f"| {sch!r} | {name} | " + " | ".join(f"{e:+.2e}" for e in errs) + f" | {slope:.2f} |")

    print("\n## 2. Probability-flow ODE in log-SNR: max pathwise error vs the exact transport map "
          "(61 points in [-3, 3] sd)\n")
    print("| schedule | method | steps | max error | NFE |")
    print("|---|---|---|---|---|")
    for sch in (VPLinear(), LiYan(), VE()):
        model = gauss_model(sch)
        t0, te = S.default_t_start(sch), sch.t_min
        a0, ae = float(sch.alpha(t0)), float(sch.alpha(te))
        v0, ve = a0 * a0 * V + float(sch.sigma2(t0)), ae * ae * V + float(sch.sigma2(te))
        xT = a0 * M + math.sqrt(v0) * torch.linspace(-3, 3, 61, dtype=F64)[:, None]
        exact = ae * M + math.sqrt(ve / v0) * (xT - a0 * M)
        for method, steps in [("euler", 64), ("rk4", 16), ("rk4", 64), ("dopri5", None)]:
            info = {}
            kw = dict(steps=steps, method=method) if steps else dict(rtol=1e-5, atol=1e-5)
            out = S.probability_flow(model, xT, callback=info.update, **kw)
            err = float((out - exact).abs().max())
            print(f"| {sch!r} | {method} | {steps or 'adaptive 1e-5'} | {err:.2e} | {info['nfe']} |")

    print("\n## 3. Predictor-corrector (reverse diffusion + 1 Langevin step) bias, VPLinear, Monte Carlo\n")
    n = 20_000 if args.quick else 100_000
    print(f"n = {n}; standard error of Var: {V * math.sqrt(2 / n):.1e}; ULA prediction v snr^2/(1-snr^2)\n")
    print("| snr | steps | Var(out) - 0.25 | prediction |")
    print("|---|---|---|---|")
    sch = VPLinear()
    for snr in (0.16, 0.04):
        for steps in (128, 512) if not args.quick else (128,):
            g = torch.Generator().manual_seed(1)
            a0, s20 = float(sch.alpha(1.0)), float(sch.sigma2(1.0))
            xT = a0 * M + math.sqrt(a0 * a0 * V + s20) * torch.randn(n, 1, generator=g, dtype=F64)
            x = S.predictor_corrector(gauss_model(sch), xT, steps=steps, snr=snr, generator=g)
            print(f"| {snr} | {steps} | {float(x.var()) - V:+.2e} | {V * snr**2 / (1 - snr**2):.2e} |")

    print("\n## 4. Inpainting a correlated 3-D mixture (x_1 = 0.3 known), ddpm 1000 steps, n = 2000\n")
    gmm3 = GaussianMixture(
        [0.4, 0.6],
        [[-1.5, 0.5, 1.0], [1.5, -0.5, 0.0]],
        [[[0.6, 0.3, 0.2], [0.3, 0.5, 0.1], [0.2, 0.1, 0.4]], [[0.4, -0.2, 0.1], [-0.2, 0.5, 0.0], [0.1, 0.0, 0.3]]],
    )
    mask, vals = torch.tensor([True, False, False]), torch.tensor([0.3], dtype=F64)
    cond = gmm3.condition(mask, vals)
    ref = cond.sample(2000, generator=torch.Generator().manual_seed(9))
    print("| method | energy distance | permutation p (499) | mean of unknowns | exact mean |")
    print("|---|---|---|---|---|")
    for method in ("replacement", "guidance"):
        kw = dict(log_likelihood=S.gmm_inpainting_log_likelihood(gmm3, sch, mask, vals)) if method == "guidance" else {}
        out = S.inpaint(AnalyticModel(gmm3, sch), mask, vals, n=2000, method=method, steps=1000,
                        generator=torch.Generator().manual_seed(8), **kw)[:, 1:]
        et = S.energy_test(out, ref, permutations=499, generator=torch.Generator().manual_seed(7))
        print(f"| {method} | {et.statistic:.4f} | {et.p_value:.3f} | {[round(v, 3) for v in out.mean(0).tolist()]} | "
              f"{[round(v, 3) for v in cond.mean().tolist()]} |")

    print("\n## 5. Wall time, 2-D two-component mixture, exact score, n = 10000, float64, 1 thread\n")
    gmm = GaussianMixture(
        [0.35, 0.65], [[-2.0, 0.5], [1.5, -0.5]], [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.6]]]
    )
    model = AnalyticModel(gmm, VPLinear())
    print("| sampler | steps | seconds | model evaluations per point |")
    print("|---|---|---|---|")
    for name, kw, nfe in [
        ("ddpm", dict(steps=1000), 1000), ("ddim", dict(steps=100), 100), ("euler_maruyama", dict(steps=1000), 1000),
        ("reverse_diffusion", dict(steps=1000), 1000), ("predictor_corrector", dict(steps=500), 1000),
        ("probability_flow", dict(), None),
    ]:
        if args.quick and "steps" in kw:
            kw = dict(steps=kw["steps"] // 10)
            nfe = nfe // 10
        info = {}
        t = time.perf_counter()
        S.SAMPLERS[name](model, n=10_000, generator=torch.Generator().manual_seed(0), callback=info.update, **kw)
        dt = time.perf_counter() - t
        print(f"| {name} | {kw.get('steps', 'adaptive 1e-5')} | {dt:.2f} | {nfe if nfe else info['nfe']} |")


if __name__ == "__main__":
    main()
