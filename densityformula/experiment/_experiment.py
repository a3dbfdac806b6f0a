"""The experiment type: name, title, claim, and a run split into compute -> claims -> figures."""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar

import torch

from .._validation import check_seed, resolve_device
from ._claims import Claim, evaluate

__all__ = ["Context", "Experiment", "Timer"]

T = TypeVar("T")
_CACHE_KEY = re.compile(r"[A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class Context:
    """What one run of an experiment is given: where to write, budget, seed, device.

    ``quick`` selects the small budgets of ``make reproduce``; ``seed`` is the run's only source
    of randomness (use :meth:`generator`); ``device`` is where tensors go.  ``cache_dir`` (set by
    the runner: ``out/.cache/<name>/<key>``, keyed like the results, removed once they are
    installed) keeps the parts of a long run that :meth:`cached` computed, so a killed run resumes.
    """

    out_dir: Path
    quick: bool = True
    seed: int = 0
    device: torch.device = torch.device("cpu")
    cache_dir: Optional[Path] = None

    def cached(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, or its value saved under ``key`` by an earlier, interrupted run of the same inputs.

        Values are saved with ``torch.save`` (atomically) and loaded on the CPU; ``key`` names one part
        of the run (letters, digits, ``._-=``).  Without a ``cache_dir`` this is ``compute()``.
        """
        if not isinstance(key, str) or not _CACHE_KEY.fullmatch(key):
            raise ValueError(f"key must be a non-empty string of letters, digits and ._-=, got {key!r}")
        if self.cache_dir is None:
            return compute()
        path = self.cache_dir / f"{key}.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]
            except Exception:  # a file cut short by a kill outside the atomic rename: recompute it
                path.unlink(missing_ok=True)
        value = compute()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value

    def generator(self, offset: int = 0, *, device: Any = "cpu") -> torch.Generator:
        """A fresh generator seeded with ``seed + offset`` (on ``device``; CPU by default)."""
        return torch.Generator(device=device).manual_seed(int(self.seed) + int(offset))

    def progress(self, items: Iterable[T], desc: str, total: Optional[int] = None) -> Iterator[T]:
        """``items`` with a progress bar on stderr (tqdm), labelled ``desc``."""
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False, disable=None, file=sys.stderr)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0


class Experiment:
    """One experiment: a claim about the theory, checked on numbers it computes.

    Subclasses set ``name`` (a short identifier, the results folder's name), ``title`` and
    ``claim`` (one sentence), and implement

    * :meth:`compute` -- the expensive part: returns a dict of results;
    * :meth:`claims` -- the claims, each a :class:`Claim` with its negative control, made from
      those results (cheap: the controls and power searches re-evaluate them);
    * :meth:`figures` / :meth:`tables` / :meth:`notes` -- what the report shows.

    A module in ``experiments/`` defines one instance, conventionally ``EXPERIMENT``, and ends
    with ``if __name__ == "__main__": raise SystemExit(EXPERIMENT.main())`` so that it runs alone.
    """

    name: str = ""
    title: str = ""
    claim: str = ""

    def compute(self, ctx: Context) -> Dict[str, Any]:
        raise NotImplementedError

    def claims(self, results: Dict[str, Any], ctx: Context) -> Iterable[Claim]:
        raise NotImplementedError

    def figures(self, results: Dict[str, Any], ctx: Context) -> Mapping[str, Any]:
        """``stem -> matplotlib figure``; each is saved as ``<stem>.png`` and ``<stem>.pdf``."""
        return {}

    def tables(self, results: Dict[str, Any], ctx: Context) -> Mapping[str, Any]:
        """``file name (.csv) -> rows`` (a list of dicts or a pandas DataFrame)."""
        return {}

    def notes(self, results: Dict[str, Any], ctx: Context) -> List[str]:
        return []

    def source_files(self) -> List[Path]:
        """The files whose contents make this experiment's results: its module and the helpers beside it.

        (The library's own files are added by the runner.)
        """
        path = Path(inspect.getfile(type(self))).resolve()
        helpers = sorted(p for p in path.parent.glob("_*.py") if p.name != "__init__.py")
        return [path, *helpers]

    def run(self, ctx: Context) -> Dict[str, Any]:
        """compute -> claims (with controls and power) -> figures, tables, notes; the summary dict."""
        from . import _figures

        for attr in ("name", "title", "claim"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise ValueError(f"experiment {type(self).__name__} must set a non-empty {attr!r}")
        t0 = time.perf_counter()
        results = self.compute(ctx)
        t_compute = time.perf_counter() - t0
        claims = []
        for c in self.claims(results, ctx):
            if not isinstance(c, Claim):
                raise TypeError(f"experiment {self.name}: claims() must yield Claim objects, got {type(c).__name__}")
            claims.append(evaluate(c))
        names = [c["name"] for c in claims]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: claim names must be unique, got {names}")
        figures = [_figures.save(fig, ctx.out_dir, stem) for stem, fig in self.figures(results, ctx).items()]
        tables = [_figures.save_table(rows, ctx.out_dir, fname) for fname, rows in self.tables(results, ctx).items()]
        return {
            "claims": claims,
            "figures": figures,
            "tables": tables,
            "notes": [str(n) for n in self.notes(results, ctx)],
            "compute_seconds": round(t_compute, 2),
        }

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        """Run this experiment alone: ``python experiments/<name>.py [--quick|--full] [--out DIR]
        [--device auto] [--seed N] [--force]``; writes ``DIR/<name>/`` and ``DIR/index.html``."""
        from ._report import write_index
        from ._runner import exit_code, run_experiments

        parser = argparse.ArgumentParser(prog=f"experiments/{self.name}.py", description=self.title)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true", default=True, help="small budgets (default)")
        mode.add_argument("--full", action="store_true", help="the budgets behind the reference figures")
        parser.add_argument("--out", type=Path, default=Path("results"))
        parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="rerun even if the results are up to date")
        args = parser.parse_args(argv)
        try:
            seed = check_seed(args.seed, "--seed")
            device = resolve_device(args.device, "--device")
        except (TypeError, ValueError) as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 2
        summaries = run_experiments([self], args.out, quick=not args.full, seed=seed, device=device, force=args.force)
        print(f"report: {write_index(summaries, args.out)}")
        return exit_code(summaries)
