"""`plot`: figures and report.md rebuilt from a run folder's tables."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..report import record_options
from .common import (
    EXIT_OK,
    add_effective_context_arguments,
    add_reference_argument,
    given_report_options,
    write_figures_and_report,
)


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="run folders (a run's --out)")
    p.add_argument("--no-report", action="store_true", help="figures only (default: off)")
    add_effective_context_arguments(p)
    add_reference_argument(p)


def cmd_plot(args: argparse.Namespace) -> int:
    references, rules = given_report_options(args)
    for folder in map(Path, args.results_dirs):
        if not folder.is_dir():
            raise UsageError(f"results folder {str(folder)!r} does not exist; give a run's --out folder.")
        if not any(folder.glob("*.csv")):
            raise UsageError(f"results folder {str(folder)!r} holds no result table (*.csv) to plot.")
        if not args.no_report:
            record_options(folder, references, rules)
        for path in write_figures_and_report(folder, report=not args.no_report):
            print(path)
    return EXIT_OK
