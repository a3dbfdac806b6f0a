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
from typing import List, Optional, Sequence

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
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args, argv)

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
