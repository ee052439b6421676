"""`compare`: a run's numbers next to the YaRN paper's published ones (`evalharness.paper`)."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from ..paper import DIFFERS_NOTE, compare_run, format_comparison
from .common import EXIT_OK, check_csv_destination, write_csv


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (a run's --out)")
    p.add_argument("--model", default=None, help="compare as this published model (default: the run's model name)")
    p.add_argument("--csv", default=None, help="also write the comparison to this CSV file (default: none)")


def cmd_compare(args: argparse.Namespace) -> int:
    if args.model is not None and not args.model.strip():
        raise UsageError(f"--model {args.model!r} is empty; give a published model's name, or leave --model out "
                         "to compare as the run's own model.")
    check_csv_destination(args.csv)
    table = compare_run(args.run_dir, args.model)  # its CompareError is an EvalHarnessError: exit 2
    print(format_comparison(table))
    print(DIFFERS_NOTE)
    if args.csv:
        write_csv(args.csv, table)
    return EXIT_OK
