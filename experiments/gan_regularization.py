"""A generator regularized by the target's diffusion scores (Li & Yan section 4.2; issue 13, experiment 3).

Li & Yan read the score-matching regularizer of GAN training through the density formula: evaluated on
generated samples with the data's own diffusion scores, the denoising score-matching loss is the data
log-likelihood of the samples up to a constant, ``R(G) = E_G[-log q] + c`` (docs/math.md I38).  This
experiment first checks that identity numerically -- in value for every generator it trains, and in
gradient (batch by batch, along random directions in parameter space) against the autograd gradient of
the exact cross-entropy -- and then trains a 2-D generator on a ring of eight Gaussians with

- (a) the non-saturating GAN loss,
- (b) the GAN loss plus ``weight * R``,
- (c) ``R`` alone,

over several training seeds.  The generator is an affine-coupling flow (:class:`~densityformula.
implications.gan.CouplingGenerator`), so its density is exact: ``KL(p_G || q) = E_G[log p_G - log q]`` is
a plain Monte Carlo mean with an honest standard error (a kNN entropy estimate would carry a bias of
unknown size).  Reported per method and seed: mode coverage, the exact cross-entropy ``E_G[-log q]``
(``log_prob`` of the mixture on the generator's samples), the KL with its standard error, the
generator's entropy ``H(p_G)``, and sample plots.

The reading that holds: the identity is exact (its value and gradient), so the regularizer pulls
samples up the data log-density: (c) ends with a cross-entropy below the target's own entropy.  Where
it does not: the cross-entropy is not a divergence -- it is minimised by point masses on the modes --
so the regularizer alone collapses (low entropy, few modes, large KL), and added to the GAN it does not
cure mode dropping (never more modes covered).  Whether GAN + regularizer ends with a lower cross-entropy
or KL than the plain GAN depends on the training seed in quick mode (it does at seed 0, not at seeds 1, 3
and 4), so that comparison is reported, not claimed.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run alone: python experiments/gan_regularization.py
    import densityformula.experiment as _x

    __package__ = _x.script_package(__file__)

import copy
import math
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from densityformula import models, schedules, targets
from densityformula.experiment import Claim, Context, Control, Experiment, Outcome, checks, subplots
from densityformula.implications import gan

from . import _common as C

F64 = torch.float64
METHODS = ("gan", "gan+reg", "reg")
LABELS = {"gan": "(a) GAN", "gan+reg": "(b) GAN + regularizer", "reg": "(c) regularizer alone"}
K_MODES, RADIUS, SD = 8, 3.0, 0.25
#: a mode is covered when it holds at least this share of the samples (a quarter of its share under q)
MIN_SHARE = 1.0 / (4 * K_MODES)
#: directions in parameter space along which the gradient identity is checked
N_DIRECTIONS = 16

QUICK = {"seeds": 1, "steps": 400, "batch": 256, "reg_batch": 64, "reg_batch_alone": 128, "reg_nodes": 8,
         "n_eval": 16000,
         "n_id": 4000, "grad_batches": 48, "grad_batch": 64}
FULL = {"seeds": 6, "steps": 3000, "batch": 256, "reg_batch": 256, "reg_batch_alone": 256, "reg_nodes": 16,
        "n_eval": 40000,
        "n_id": 16000, "grad_batches": 48, "grad_batch": 128}
REG_WEIGHT = 0.1
LR = 2e-3


def ring(dtype: torch.dtype = F64, device: Any = "cpu") -> targets.GaussianMixture:
    """Eight equal Gaussians (sd 0.25) on a circle of radius 3: modes 9 sd apart."""
    ang = torch.arange(K_MODES, dtype=F64) * 2 * math.pi / K_MODES
    means = RADIUS * torch.stack([ang.cos(), ang.sin()], 1)
    return targets.GaussianMixture(torch.full((K_MODES,), 1.0 / K_MODES), means, torch.full((K_MODES,), SD**2),
                                   dtype=dtype, device=device)


def _discriminator(seed: int, device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                                  torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1))
    return net.to(device)


def _generator(seed: int, device: torch.device) -> gan.CouplingGenerator:
    return gan.CouplingGenerator(6, 32, init_scale=2.0, seed=seed, device=device)


def train(method: str, seed: int, cfg: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """One training run; the generator's parameter average (EMA, decay 0.99) as a CPU state dict."""
    gmm = ring(torch.float32, device)
    model = models.AnalyticModel(gmm, schedules.VPLinear())
    G = _generator(seed, device)
    avg = copy.deepcopy(G)
    D = _discriminator(seed + 100, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=(0.5, 0.9))
    g = torch.Generator(device=device).manual_seed(seed + 1000)
    sp = torch.nn.functional.softplus
    nb = cfg["batch"]
    hist: List[float] = []
    for _ in range(cfg["steps"]):
        if method != "reg":
            real = gmm.sample(nb, generator=g)
            with torch.no_grad():
                fake, _ = G.sample(nb, generator=g)
            loss_d = sp(-D(real)).mean() + sp(D(fake)).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
        x, _ = G.sample(nb if method != "reg" else cfg["reg_batch_alone"], generator=g)
        loss = torch.zeros((), device=device)
        if method != "reg":
            loss = loss + sp(-D(x)).mean()
        if method != "gan":
            xr = x[: cfg["reg_batch"]] if method == "gan+reg" else x
            r = gan.score_regularizer(model, xr, n_nodes=cfg["reg_nodes"], n_noise=2, generator=g)
            loss = loss + (REG_WEIGHT if method == "gan+reg" else 1.0) * (r.value - r.constant)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        with torch.no_grad():
            for pa, p in zip(avg.parameters(), G.parameters()):
                pa.lerp_(p, 0.01)
        hist.append(float(loss.detach()))
    return {"state": {k: v.detach().cpu() for k, v in avg.state_dict().items()}, "loss": hist}


def _load(state: Dict[str, torch.Tensor]) -> gan.CouplingGenerator:
    G = gan.CouplingGenerator(6, 32, init_scale=2.0, seed=0, dtype=F64)
    G.load_state_dict({k: v.to(F64) for k, v in state.items()})
    return G


def evaluate(G: gan.CouplingGenerator, gmm: targets.GaussianMixture, n: int, seed: int) -> Dict[str, Any]:
    """Exact cross-entropy, KL(p_G || q) and entropy (Monte Carlo over n samples, with se), coverage."""
    with torch.no_grad():
        x, lp = G.sample(n, generator=torch.Generator().manual_seed(seed))
        lq = gmm.log_prob(x)
    kl = lp - lq
    cov = gan.mode_coverage(gmm, x, min_share=MIN_SHARE)
    rt = math.sqrt(n)
    return {"x": x[:1000], "ce": float(-lq.mean()), "ce_se": float(lq.std()) / rt, "kl": float(kl.mean()),
            "kl_se": float(kl.std()) / rt, "h": float(-lp.mean()), "h_se": float(lp.std()) / rt,
            "coverage": cov["coverage"], "on_mode": cov["on_mode"], "shares": cov["shares"].numpy()}


def identity(G: gan.CouplingGenerator, model: models.AnalyticModel, gmm: targets.GaussianMixture, n: int,
             seed: int) -> Dict[str, Any]:
    """Per-sample ``R_i - c + log q(x_i)`` and the node means (for the wrong-weight control), float64."""
    with torch.no_grad():
        x, _ = G.sample(n, generator=torch.Generator().manual_seed(seed))
        r = gan.score_regularizer(model, x, n_nodes=24, n_noise=4, seed=seed)
        lq = gmm.log_prob(x)
    diff = r.per_sample - r.constant + lq
    return {"diff": float(diff.mean()), "se": float(diff.std()) / math.sqrt(n), "reg": float(r.value) - r.constant,
            "reg_se": r.stderr, "ce": float(-lq.mean()), "quad": r.quadrature_error, "constant": r.constant}


def gradient_identity(G: gan.CouplingGenerator, model: models.AnalyticModel, gmm: targets.GaussianMixture,
                      cfg: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """Directional derivatives of ``R``, of its log-SNR > 0 part and of the exact cross-entropy, batch by batch."""
    params = list(G.parameters())
    g = torch.Generator().manual_seed(seed)
    dirs_all = []
    for _ in range(N_DIRECTIONS):
        v = [torch.randn(p.shape, generator=g, dtype=F64) for p in params]
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        dirs_all.append([u / norm for u in v])
    rows_r, rows_u, rows_c = [], [], []
    for _ in range(cfg["grad_batches"]):
        x, _ = G.sample(cfg["grad_batch"], generator=g)
        r = gan.score_regularizer(model, x, n_nodes=24, n_noise=4, generator=g)
        upper = 0.5 * (r.node_means @ (r.weights * (r.nodes > 0)).to(F64)).mean()
        ce, _ = gan.cross_entropy(gmm, x)
        out = []
        for f, keep in ((r.value, True), (upper, True), (ce, False)):
            grads = torch.autograd.grad(f, params, retain_graph=keep)
            out.append(np.array([sum(float((gr * u).sum()) for gr, u in zip(grads, d)) for d in dirs_all]))
        rows_r.append(out[0])
        rows_u.append(out[1])
        rows_c.append(out[2])
    return {"r": np.array(rows_r), "upper": np.array(rows_u), "ce": np.array(rows_c)}


class GanRegularization(Experiment):
    name = "gan_regularization"
    title = "A generator regularized by the target's diffusion scores (Li & Yan 4.2)"
    claim = (
        "The score-matching regularizer built from the target's diffusion scores equals the cross-entropy "
        "E_G[-log q] of the generated samples plus a constant, in value and in gradient; minimised alone it "
        "collapses below the target's entropy onto few modes (cross-entropy is mode-seeking), and added to a GAN "
        "it raises the on-mode mass rather than the number of modes covered."
    )

    def compute(self, ctx: Context) -> Dict[str, Any]:
        cfg = QUICK if ctx.quick else FULL
        seeds = [ctx.seed + i for i in range(cfg["seeds"])]
        gmm = ring()
        model = models.AnalyticModel(gmm, schedules.VPLinear())
        xq = gmm.sample(20000, generator=ctx.generator(1))
        lq = gmm.log_prob(xq)
        h_q, h_q_se = float(-lq.mean()), float(lq.std()) / math.sqrt(xq.shape[0])
        runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in METHODS}
        ids: List[Dict[str, Any]] = []
        grads: List[Dict[str, Any]] = []
        with C.one_thread():
            init = _generator(seeds[0], torch.device("cpu")).to(F64)
            ids.append({"method": "initial", "seed": seeds[0], **identity(init, model, gmm, cfg["n_id"], 11)})
            grads.append({"method": "initial", "seed": seeds[0],
                          **gradient_identity(init, model, gmm, cfg, 12)})
            jobs = [(m, s) for s in seeds for m in METHODS]
            for method, seed in ctx.progress(jobs, "trainings"):
                out = ctx.cached(f"train-{method}-seed{seed}".replace("+", "_"),
                                 lambda method=method, seed=seed: train(method, seed, cfg, ctx.device))
                G = _load(out["state"])
                ev = evaluate(G, gmm, cfg["n_eval"], 77 + seed)
                runs[method].append({"seed": seed, "loss": out["loss"], **ev})
                ids.append({"method": method, "seed": seed, **identity(G, model, gmm, cfg["n_id"], 13 + seed)})
                if method == "gan+reg":
                    grads.append({"method": method, "seed": seed,
                                  **gradient_identity(G, model, gmm, cfg, 14 + seed)})
        return {"cfg": cfg, "seeds": seeds, "h_q": h_q, "h_q_se": h_q_se, "runs": runs, "ids": ids, "grads": grads,
                "target_x": xq[:1000], "means": gmm.means}

    def claims(self, r: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        ids, n_id = r["ids"], r["cfg"]["n_id"]
        yield Claim(
            "I38: regularizer - cross-entropy is the constant c for every generator",
            f"on the same samples, R - c - E_G[-log q] = 0 within its standard error for each of the {len(ids)} "
            "generators (initial and trained) and in their mean",
            checks.agreement([d["diff"] for d in ids], [d["se"] for d in ids], 0.0, dof=n_id - 1),
            Control("bias added to the regularizer", 0.08, "nats"),
        )
        gr = r["grads"]
        B = r["cfg"]["grad_batches"]

        def grad_check(s: float) -> Outcome:
            diffs = np.concatenate([(g["r"] + s * g["upper"] - g["ce"]) for g in gr], 1)  # (B, dirs x gens)
            est, se = diffs.mean(0), diffs.std(0, ddof=1) / math.sqrt(B)
            scale = np.abs(np.concatenate([g["ce"] for g in gr], 1)).mean()
            return checks.agreement(est / scale, se / scale, 0.0, dof=B - 1, unit="relative")(0.0)

        yield Claim(
            "I38: the regularizer's gradient is the autograd gradient of the cross-entropy",
            f"directional derivatives along {N_DIRECTIONS} random unit directions of the parameters, at "
            f"{len(gr)} generators, agree within their standard error over {B} batches",
            grad_check,
            Control("weights of the regularizer at log-SNR > 0 scaled by 1 + s", 1.0, "relative"),
        )
        runs = r["runs"]
        a, b, c = runs["gan"], runs["gan+reg"], runs["reg"]
        n_seeds = len(a)
        crit = checks.t_crit(n_seeds, None, sided=1)  # one-sided, Bonferroni over the training seeds

        def ucb(key: str, low: List[Dict[str, Any]], high: List[Dict[str, Any]]) -> List[float]:
            """Upper confidence bounds of ``low[key] - high[key]``, seed by seed (independent samples)."""
            return [u[key] - v[key] + crit * math.hypot(u[key + "_se"], v[key + "_se"]) for u, v in zip(low, high)]

        # Not claimed: that (b) has a lower cross-entropy, a lower KL or more on-mode mass than (a).  At seed 0
        # it does, but `make validate` (quick, seeds 0-4, 2026-12-02) found the opposite at seeds 1, 3 and 4:
        # with one short training run per method the comparison depends on the seed.  The numbers are in
        # methods.csv and the notes.
        yield Claim(
            "GAN + regularizer: no more modes covered than the plain GAN",
            f"at every training seed (b) covers at most as many of the {K_MODES} modes (share >= {MIN_SHARE:.3g}) as "
            "(a): the regularizer does not cure mode dropping",
            checks.below([u["coverage"] - v["coverage"] for u, v in zip(b, a)], 0.0,
                         label="max coverage(b) - coverage(a)"),
            Control("coverage of (b) raised", 0.75, "fraction of modes"),
        )
        best = [{"ce": min(u["ce"], v["ce"]), "ce_se": u["ce_se"] if u["ce"] <= v["ce"] else v["ce_se"]}
                for u, v in zip(a, b)]
        yield Claim(
            "regularizer alone: the lowest cross-entropy of the three",
            "at every training seed E_G[-log q] of (c) is below those of (a) and (b): it minimises what it estimates",
            checks.below(ucb("ce", c, best), 0.0, unit="nats", label="max upper bound of CE(c) - min CE(a, b)"),
            Control("cross-entropy of (c) raised", 4.0, "nats"),
        )
        yield Claim(
            "regularizer alone: entropy collapse (cross-entropy is mode-seeking)",
            "at every training seed the generator's entropy H(p_G) = E_G[-log p_G] of (c) is below that of (a), "
            "i.e. it lowers E_G[-log q] by shrinking p_G",
            checks.below(ucb("h", c, a), 0.0, unit="nats", label="max upper bound of H(c) - H(a)"),
            Control("entropy of (c) raised", 8.0, "nats"),
        )
        yield Claim(
            "regularizer alone covers fewer modes than the plain GAN",
            f"at every training seed (c) covers fewer of the {K_MODES} modes than (a)",
            checks.below([u["coverage"] - v["coverage"] + 1.0 / K_MODES for u, v in zip(c, a)], 0.0,
                         label="max coverage(c) - coverage(a) + 1/K"),
            Control("coverage of (c) raised", 1.0, "fraction of modes"),
        )

    def tables(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        rows = [{"method": m, "seed": x["seed"], "cross_entropy": x["ce"], "cross_entropy_se": x["ce_se"],
                 "kl": x["kl"], "kl_se": x["kl_se"], "entropy": x["h"], "entropy_se": x["h_se"],
                 "coverage": x["coverage"], "on_mode": x["on_mode"]} for m in METHODS for x in r["runs"][m]]
        idr = [{k: v for k, v in d.items()} for d in r["ids"]]
        return {"methods.csv": rows, "identity.csv": idr}

    def notes(self, r: Dict[str, Any], ctx: Context) -> List[str]:
        cfg = r["cfg"]
        hq = C.fmt(r["h_q"], r["h_q_se"])
        out = [f"Target: {K_MODES} Gaussians of sd {SD} on a circle of radius {RADIUS}; H(q) = {hq}"
               f" nats (Monte Carlo). Generator: 6 affine couplings, width 32, EMA of the parameters; "
               f"{cfg['steps']} Adam steps (lr {LR}), batch {cfg['batch']}, regularizer weight {REG_WEIGHT} in (b) "
               f"on {cfg['reg_batch']} samples with {cfg['reg_nodes']} log-SNR nodes; training seeds {r['seeds']}."]
        for m in METHODS:
            xs = r["runs"][m]
            out.append(f"{LABELS[m]}: cross-entropy " + ", ".join(C.fmt(x["ce"], x["ce_se"]) for x in xs)
                       + "; KL " + ", ".join(C.fmt(x["kl"], x["kl_se"]) for x in xs)
                       + "; coverage " + ", ".join(f"{x['coverage']:.3g}" for x in xs)
                       + "; on-mode " + ", ".join(f"{x['on_mode']:.3g}" for x in xs) + ".")
        out.append("Reported, not claimed: (b) against (a) in cross-entropy, KL and on-mode mass depends on the "
                   "training seed in quick mode (lower at seed 0, higher at seeds 1, 3 and 4 by `make validate`).")
        return out

    def figures(self, r: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
        fig, axes = subplots(1, 4, figsize=(15, 4.0))
        means = C.as_np(r["means"])
        tx = C.as_np(r["target_x"])
        axes[0].scatter(tx[:, 0], tx[:, 1], s=2, alpha=0.4, color="0.3")
        axes[0].set_title("target q (8 modes)")
        for ax, m in zip(axes[1:], METHODS):
            x0 = r["runs"][m][0]
            xs = C.as_np(x0["x"])
            ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.4)
            ax.set_title(f"{LABELS[m]}\nKL {x0['kl']:.2f}, CE {x0['ce']:.2f}, cover {x0['coverage']:.2f}")
        for ax in axes:
            ax.scatter(means[:, 0], means[:, 1], marker="x", color="k", s=20)
            ax.set_xlim(-5, 5)
            ax.set_ylim(-5, 5)
            ax.set_aspect("equal")
        fig2, (a1, a2) = subplots(1, 2, figsize=(11, 4.2))
        ids = r["ids"]
        a1.errorbar([d["ce"] for d in ids], [d["reg"] for d in ids], yerr=[2 * d["reg_se"] for d in ids], fmt="o")
        lo = min(d["ce"] for d in ids) - 0.3
        hi = max(d["ce"] for d in ids) + 0.3
        a1.plot([lo, hi], [lo, hi], "k--", lw=1, label="R - c = cross-entropy")
        a1.set_xlabel("exact cross-entropy E_G[-log q] (nats)")
        a1.set_ylabel("regularizer R - c (nats)")
        a1.set_title("I38 on every generator")
        a1.legend()
        for i, m in enumerate(METHODS):
            xs = r["runs"][m]
            a2.errorbar([i - 0.1] * len(xs), [x["ce"] for x in xs], yerr=[2 * x["ce_se"] for x in xs], fmt="o",
                        color="C0", label="cross-entropy" if i == 0 else None)
            a2.errorbar([i + 0.1] * len(xs), [x["kl"] for x in xs], yerr=[2 * x["kl_se"] for x in xs], fmt="s",
                        color="C3", label="KL(p_G || q)" if i == 0 else None)
        a2.axhline(r["h_q"], color="0.4", ls=":", label="H(q)")
        a2.set_xticks(range(len(METHODS)))
        a2.set_xticklabels([LABELS[m] for m in METHODS], fontsize=8)
        a2.set_ylabel("nats")
        a2.set_title("per training seed")
        a2.legend()
        return {"gan_samples": fig, "gan_identity": fig2}


EXPERIMENT = GanRegularization()

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
