"""The ``densityformula`` command: ``densityformula reproduce [--quick | --full] [--out results] ...``.

``reproduce`` runs the experiments of a checkout's ``experiments/`` folder (found from any
directory inside the checkout, or given with ``--experiments-dir``) into ``<out>/<name>/``
(``summary.json``, figures as PNG and PDF, CSV tables) and writes ``<out>/index.html``.

Results are keyed on a hash of the experiment's code, the library's code, the package version,
the mode, the seed and the device (:mod:`densityformula.experiment._store`): up-to-date results
are kept (a rerun with nothing changed takes seconds); stale ones are rerun and the old folder is
moved to ``<out>/.archive/``; ``--force`` reruns and replaces up-to-date ones.  Result folders
are written atomically, a run killed midway leaves complete old results or none, a crashed
experiment is retried by the next run, and the experiments an interrupted ``--force`` had not
replaced are rerun by the next run.

Exit codes: 0 when every claim holds and every negative control is detected; 1 when a claim
fails, a control passes (the claim could not fail) or an experiment crashed; 2 for unusable
arguments (an unknown ``--only`` name, an ``--out`` that is a file or not writable, no
experiments folder), with one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ._validation import check_seed, resolve_device
from .experiment import Experiment, discover, exit_code, find_experiments_dir, run_experiments, write_index
from .experiment._runner import check_only
from .experiment._store import check_out

__all__ = ["main", "discover", "run_experiments", "write_index"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="densityformula", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the experiments into a report")
    mode = rep.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="small budgets (default)")
    mode.add_argument("--full", action="store_true", help="the budgets behind the reference figures")
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    rep.add_argument("--experiments-dir", type=Path, default=None,
                     help="folder of experiment scripts (default: the experiments/ of the checkout around "
                          "the working directory)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    rep.add_argument("--force", action="store_true", help="rerun experiments whose results are up to date")
    rep.add_argument("--only", nargs="*", help="run only these experiments (by name)")
    rep.add_argument("--list", action="store_true", help="list the experiments and exit")
    val = sub.add_parser("validate", help="run every experiment at several seeds and tally the claims")
    val.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    val.add_argument("--full", action="store_true", help="full budgets (default: quick)")
    val.add_argument("--out", type=Path, default=Path("results/validation"))
    val.add_argument("--write", type=Path, default=None, help="write the tally as markdown to this file")
    val.add_argument("--experiments-dir", type=Path, default=None)
    val.add_argument("--device", default="cpu")
    val.add_argument("--force", action="store_true")
    _evaluate_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args, argv)
    if args.command == "evaluate":
        return _evaluate(args)

    try:
        seed = check_seed(args.seed, "--seed")
        device = resolve_device(args.device, "--device")
        experiments = _experiments(args.experiments_dir)
        if args.list:
            for e in experiments:
                print(f"{e.name}: {e.title}")
            return 0
        check_only(args.only, experiments)
        check_out(args.out)
    except (ValueError, TypeError) as err:
        print(f"densityformula reproduce: error: {_for_cli(str(err))}", file=sys.stderr)
        return 2
    summaries = run_experiments(
        experiments, args.out, quick=not args.full, seed=seed, device=device, force=args.force, only=args.only
    )
    print(f"report: {write_index(summaries, args.out, experiments)}")
    return exit_code(summaries)


def _validate(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> int:
    from .experiment._validate import validate, validation_markdown
    from .experiment.checks import ALPHA

    try:
        seeds = [check_seed(s, "--seeds") for s in args.seeds]
        device = resolve_device(args.device, "--device")
        experiments = _experiments(args.experiments_dir)
        check_out(args.out)
    except (ValueError, TypeError) as err:
        print(f"densityformula validate: error: {_for_cli(str(err))}", file=sys.stderr)
        return 2
    tally = validate(experiments, args.out, seeds=seeds, quick=not args.full, device=device, force=args.force)
    words = list(argv) if argv is not None else sys.argv[1:]
    text = validation_markdown(tally, "densityformula " + " ".join(words))
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"tally: {args.write}")
    print(f"{tally['n_fail']} failed claim runs of {tally['n_runs']} (expected at most "
          f"{tally['expected_false_failures']:.2f}); {tally['n_control_passed']} controls passed; "
          f"{len(tally['crashed'])} crashes")
    consistent = tally["p_at_least_observed"] >= ALPHA  # failures no more than the level allows
    return 0 if consistent and not tally["n_control_passed"] and not tally["crashed"] else 1


def _evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("evaluate", help="per-point log-likelihoods of a dataset under a checkpoint, as a CSV")
    ev.add_argument("--checkpoint", type=Path, required=True, help="a trainer checkpoint")
    ev.add_argument("--data", default="digits", help="'digits' (default) or a .npy / .csv file of an (n, d) array")
    ev.add_argument("--estimator", nargs="+", action="extend", default=None,
                    help="pf_ode (default), density_formula, continuous, ddpm, iw (several, or the flag "
                         "repeated: one row each)")
    ev.add_argument("--out", type=Path, required=True, help="the CSV to write")
    ev.add_argument("--option", action="append", default=[], metavar="[ESTIMATOR.]KEY=VALUE",
                    help="an estimator option, e.g. pf_ode.rtol=1e-6 or trace=hutchinson (repeatable)")
    ev.add_argument("--schedule", default=None,
                    help="the model's schedule when the checkpoint does not record it, e.g. "
                         "'VPLinear(beta_min=0.1, beta_max=20.0)' or vp_linear")
    ev.add_argument("--weights", default="ema", help="ema (default) or model")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=64, help="points per work item (default 64)")
    ev.add_argument("--block", type=int, default=16,
                    help="points per pf_ode call, fixed by global index (default 16; part of the results' key)")
    ev.add_argument("--limit", type=int, default=None, help="the first LIMIT points only")
    ev.add_argument("--scale", default="symmetric", help="digits scaling: symmetric (default), unit, counts")
    ev.add_argument("--no-dequantize", action="store_true", help="digits at the bin centres")
    ev.add_argument("--data-seed", type=int, default=0, help="seed of the digits' dequantization noise")
    ev.add_argument("--data-scale", type=float, default=None, help="dy/du of a data file (bits/dim; default 1)")
    ev.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    ev.add_argument("--force", action="store_true", help="replace an existing --out")
    ev.add_argument("--keep-parts", action="store_true", help="keep <out>.parts/ after the table is written")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_options(pairs: Sequence[str], estimators: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``--option [ESTIMATOR.]KEY=VALUE`` as ``{estimator: {key: value}}`` (a bare KEY: every estimator having it)."""
    from .evaluation import get_estimator

    specs = [get_estimator(e) for e in estimators]
    out: Dict[str, Dict[str, str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--option must be [ESTIMATOR.]KEY=VALUE, got {pair!r}")
        est, dot, key = name.rpartition(".")
        targets = [s for s in specs if (s.name == est if dot else key in s.options)]
        if dot and not targets:
            raise ValueError(f"--option {pair!r} names estimator {est!r}, which is not among --estimator")
        if not targets:
            raise ValueError(f"--option {pair!r}: no estimator among {', '.join(estimators)} has option {key!r}")
        for s in targets:
            out.setdefault(s.name, {})[key] = value
    return out


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from .evaluation import evaluate

    dtypes = {"float64": torch.float64, "float32": torch.float32}
    try:
        if args.dtype not in dtypes:
            raise ValueError(f"--dtype must be float64 or float32, got {args.dtype!r}")
        device = resolve_device(args.device, "--device")
        if not args.checkpoint.is_file():
            raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
        if not args.estimator:
            args.estimator = ["pf_ode"]
        options = _evaluate_options(args.option, args.estimator)
        result = evaluate(
            args.checkpoint, args.data, args.estimator, options=options, out=args.out, overwrite=args.force,
            keep_parts=args.keep_parts, seed=args.seed, batch_size=args.batch_size, block=args.block,
            dtype=dtypes[args.dtype], device=device, schedule=args.schedule, weights=args.weights, limit=args.limit,
            scale=args.scale, dequantize=not args.no_dequantize, data_seed=args.data_seed, data_scale=args.data_scale,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        print(f"densityformula evaluate: error: {_evaluate_message(str(err))}", file=sys.stderr)
        return 2
    if result.path is not None:
        print(f"table: {result.path} ({len(result.records)} rows; {result.computed_blocks} estimator calls on rank "
              f"{result.rank} of {result.world_size}, {result.reused_points} points resumed) in {result.seconds:.1f} s")
    return 0


def _evaluate_message(message: str) -> str:
    """A library argument error in the command line's words (``batch_size`` -> ``--batch-size``)."""
    message = message.splitlines()[0] if message else message
    message = message.replace("pass schedule=", "pass --schedule")
    message = message.replace("pass overwrite=True (--force)", "pass --force")
    for arg, flag in (("out", "--out"), ("batch_size", "--batch-size"), ("block", "--block"), ("seed", "--seed"),
                      ("limit", "--limit"), ("scale", "--scale"), ("weights", "--weights"),
                      ("schedule", "--schedule"), ("data_scale", "--data-scale"), ("data", "--data"),
                      ("estimator", "--estimator")):
        if message.startswith(f"{arg} ") or message.startswith(f"{arg}:"):
            return flag + message[len(arg):]
    return message


def _experiments(experiments_dir: Optional[Path]) -> List[Experiment]:
    return discover(experiments_dir if experiments_dir is not None else find_experiments_dir())


def _for_cli(message: str) -> str:
    """An argument error's message with the command line's option names (``only`` -> ``--only``)."""
    for arg in ("only", "out"):
        if message.startswith(f"{arg} ") or message.startswith(f"{arg}:"):
            return "--" + message
    return message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
