"""The one harness every benchmark in scripts/bench/ runs through.

A benchmark compares dffs with its competitor in the same run, so the only
thing that may differ between the two is the software. This module owns what
makes such a comparison trustworthy, so that no script does it its own way:

- the run order: odd runs go in the order the contenders are listed (dffs
  first), even runs in the reverse order (the competitor first), so neither
  side always gets the quieter machine, the warmer origin or the emptier
  disk. With more than two contenders, reversing (rather than rotating) still
  swaps every *pair* every run, and ratios are made of pairs; a rotation of n
  contenders keeps some pairs in the same order for several runs in a row;
- collection: every figure of every contender in every run;
- the summary: median and min-max per figure and contender, ratios of medians
  (and the spread of the same-run ratios), printed as a table;
- one JSON line, last on stdout, with all of the above and the parameters.

The arithmetic (:func:`run_order`, :func:`summarize`, the ratios in
:meth:`Bench.summary`) needs no process, socket or file, so it is unit tested
directly (tests/test_bench_smoke.py), beside a smoke run of every script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

import attrs

#: Bumped when the JSON line changes shape, so old and new figures are not mixed up.
JSON_VERSION = 1


@attrs.frozen
class Figure:
    """One measured quantity: every contender that has it reports it once per run."""

    name: str
    unit: str
    lower_is_better: bool = False
    digits: int = 2


@attrs.frozen
class Comparison:
    """``subject`` (the dffs side) against ``baseline`` (its competitor).

    ``figures`` limits it to some figures; by default every figure both report.
    Ratios are oriented so that > 1 means the subject did better."""

    subject: str
    baseline: str
    figures: tuple[str, ...] | None = None


def run_order(contenders: Sequence[str], run: int) -> list[str]:
    """The order of run ``run`` (counted from 1): as listed on odd runs, reversed on even ones."""
    if run < 1:
        raise ValueError(f"runs are counted from 1, not {run}")
    return list(contenders) if run % 2 else list(reversed(contenders))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and n of one figure of one contender, with the values."""
    if not values:
        raise ValueError("no values to summarize")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def _ratio(subject: float, baseline: float, lower_is_better: bool) -> float | None:
    top, bottom = (baseline, subject) if lower_is_better else (subject, baseline)
    if bottom == 0 or not math.isfinite(top) or not math.isfinite(bottom):
        return None
    return top / bottom


class Bench:
    """``bench = Bench(...)``; ``for run, who in bench.schedule(): bench.record(run, who, {...})``;
    ``bench.report()``."""

    def __init__(
        self,
        name: str,
        *,
        contenders: Sequence[str],
        figures: Sequence[Figure],
        comparisons: Sequence[Comparison] = (),
        params: Mapping[str, Any],
        runs: int,
        out: TextIO | None = None,
    ):
        if runs < 1:
            raise ValueError(f"--runs must be at least 1, not {runs}")
        if len(set(contenders)) != len(contenders):
            raise ValueError(f"contenders repeat: {list(contenders)}")
        self.name = name
        self.contenders = list(contenders)
        self.figures = {f.name: f for f in figures}
        for c in comparisons:
            for who in (c.subject, c.baseline):
                if who not in self.contenders:
                    raise ValueError(f"comparison names an unknown contender {who!r}")
            for f in c.figures or ():
                if f not in self.figures:
                    raise ValueError(f"comparison names an unknown figure {f!r}")
        self.comparisons = list(comparisons)
        self.params = dict(params)
        self.runs = runs
        self.out = out if out is not None else sys.stdout
        self.orders: list[list[str]] = []
        #: (figure, contender) -> {run: value}
        self.values: dict[tuple[str, str], dict[int, float]] = {}
        self.started = time.time()
        self.load_before = _loadavg()

    # -- running ------------------------------------------------------------
    def schedule(self) -> Iterator[tuple[int, str]]:
        """Every (run, contender) in the order they must be measured."""
        for run in range(1, self.runs + 1):
            order = run_order(self.contenders, run)
            self.orders.append(order)
            print(f"-- run {run}/{self.runs}: {', '.join(order)}", file=self.out, flush=True)
            for contender in order:
                yield run, contender

    def record(self, run: int, contender: str, values: Mapping[str, float]) -> None:
        """The figures ``contender`` reached in ``run`` (any subset of the figures)."""
        if contender not in self.contenders:
            raise ValueError(f"unknown contender {contender!r}")
        for figure, value in values.items():
            if figure not in self.figures:
                raise ValueError(f"unknown figure {figure!r} (known: {', '.join(self.figures)})")
            per_run = self.values.setdefault((figure, contender), {})
            if run in per_run:
                raise ValueError(f"{contender} already has {figure!r} for run {run}")
            per_run[run] = float(value)
        shown = ", ".join(f"{k} {_fmt(v, self.figures[k].digits)} {self.figures[k].unit}" for k, v in values.items())
        print(f"   {contender}: {shown}", file=self.out, flush=True)

    # -- results ------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Everything the JSON line holds (no I/O)."""
        figures: dict[str, Any] = {}
        for name, figure in self.figures.items():
            per_contender = {
                who: summarize([runs[r] for r in sorted(runs)])
                for who in self.contenders
                if (runs := self.values.get((name, who)))
            }
            if per_contender:
                figures[name] = {
                    "unit": figure.unit,
                    "better": "lower" if figure.lower_is_better else "higher",
                    "contenders": per_contender,
                }
        ratios = []
        for c in self.comparisons:
            for name in c.figures or tuple(self.figures):
                s, b = self.values.get((name, c.subject)), self.values.get((name, c.baseline))
                if not s or not b:
                    continue
                lower = self.figures[name].lower_is_better
                same_run = [
                    r for run in sorted(s.keys() & b.keys()) if (r := _ratio(s[run], b[run], lower)) is not None
                ]
                ratios.append(
                    {
                        "figure": name,
                        "subject": c.subject,
                        "baseline": c.baseline,
                        "formula": f"{c.baseline}/{c.subject}" if lower else f"{c.subject}/{c.baseline}",
                        "of_medians": _ratio(statistics.median(s.values()), statistics.median(b.values()), lower),
                        "same_run_min": min(same_run) if same_run else None,
                        "same_run_max": max(same_run) if same_run else None,
                        "n": len(same_run),
                    }
                )
        return {
            "bench": self.name,
            "version": JSON_VERSION,
            "params": self.params,
            "runs": self.runs,
            "orders": self.orders,
            "figures": figures,
            "ratios": ratios,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "loadavg_before": self.load_before,
            "loadavg_after": _loadavg(),
            "machine": machine(),
        }

    def report(self) -> dict[str, Any]:
        """Print the table and the ratios, then the JSON line (last line of stdout)."""
        summary = self.summary()
        out = self.out
        print(file=out)
        print(f"{self.name}: median [min-max] of n runs; {self._params_line()}", file=out)
        width = max((len(f"{n} ({f.unit})") for n, f in self.figures.items()), default=10)
        who_width = max((len(c) for c in self.contenders), default=8)
        for name, entry in summary["figures"].items():
            figure = self.figures[name]
            label = f"{name} ({figure.unit})"
            for who, s in entry["contenders"].items():
                d = figure.digits
                spread = f"[{_fmt(s['min'], d)}-{_fmt(s['max'], d)}]"
                print(
                    f"{label:{width}s}  {who:{who_width}s}  {_fmt(s['median'], d):>10s} {spread:24s} n={s['n']}",
                    file=out,
                )
                label = ""
        if summary["ratios"]:
            print(file=out)
            print("ratios of medians (> 1: the first named is better), same-run ratios in brackets:", file=out)
        for r in summary["ratios"]:
            spread = ""
            if r["n"]:
                spread = f"  [{r['same_run_min']:.2f}-{r['same_run_max']:.2f}x over {r['n']} runs]"
            value = "n/a (a zero median)" if r["of_medians"] is None else f"{r['of_medians']:.2f}x"
            print(f"  {r['figure']}: {r['formula']} = {value}{spread}", file=out)
        print(json.dumps(summary, sort_keys=False), file=out, flush=True)
        return summary

    def _params_line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "host": os.uname().nodename,
    }


# -- the command line every script shares ----------------------------------


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the shared flags, ``--runs`` and ``--smoke``; ``--help`` shows the
    script's whole docstring, where it says what it measures and what cold and warm mean."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=_positive, default=3, help="runs of every contender, the order reversed on even runs")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark works, in seconds")
    return p


def parse(
    p: argparse.ArgumentParser, argv: Sequence[str] | None = None, **defaults: tuple[Any, Any]
) -> argparse.Namespace:
    """Parse, then fill every option left unset (None) with its (full, smoke) default.

    Flags given explicitly win over --smoke. Also turns SIGTERM into SystemExit,
    so a benchmark stopped from outside still unmounts, stops its processes and
    deletes its namespaces on the way out."""
    args = p.parse_args(argv)
    for name, (full, smoke) in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, smoke if args.smoke else full)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
