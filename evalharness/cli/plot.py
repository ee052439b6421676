"""`plot`: figures and report.md rebuilt from a run folder's tables."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..report import record_options
from ..results import SCHEMAS, read_table
from .common import (
    EXIT_OK,
    add_effective_context_arguments,
    add_reference_argument,
    check_run_folder_given,
    given_report_options,
    write_figures_and_report,
)


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="run folders (a run's --out)")
    p.add_argument("--no-report", action="store_true", help="figures only (default: off)")
    p.add_argument("--optional-figures", action=argparse.BooleanOptionalAction, default=None,
                   help="also draw the figures a task offers beside its usual ones, such as the per-subject "
                        "scores of a task group; recorded in the folder, so a later plot redraws them "
                        "(default: as recorded, off when never given)")
    add_effective_context_arguments(p)
    add_reference_argument(p)


def cmd_plot(args: argparse.Namespace) -> int:
    references, rules = given_report_options(args)
    folders = [Path(folder) for folder in args.results_dirs]
    for folder in folders:  # every folder checked before any is written
        check_run_folder_given(folder)
        if not any((folder / f"{table}.csv").is_file() for table in SCHEMAS):
            raise UsageError(f"results folder {str(folder)!r} holds no result table "
                             f"({', '.join(f'{t}.csv' for t in SCHEMAS)}) to plot.")
        for name, kind in (("figures", "folder"), ("manifest.json", "file")):
            path = folder / name
            if path.exists() and path.is_dir() != (kind == "folder"):
                raise UsageError(f"{str(path)!r} is not a {kind}; move it away and rerun.")
        for table in SCHEMAS:  # a damaged table (text in a number column, a score above 1) refused now
            read_table(folder, table)
    for folder in folders:
        report = not args.no_report  # report options are recorded with the report they shape
        record_options(folder, references if report else None, rules if report else None,
                       optional_figures=args.optional_figures)
        for path in write_figures_and_report(folder, report=not args.no_report):
            print(path)
    return EXIT_OK
