"""`effective-context`: the longest length each method passes each task's rule, from the tables of
one or more run folders together (a markdown table)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.effective_context import criteria, effective_context, load_effective_context_tables
from ..errors import UsageError
from ..report import effective_context_lines
from .common import (
    EXIT_OK,
    add_effective_context_arguments,
    check_csv_destination,
    check_run_folder_given,
    effective_context_rules,
    write_csv,
)


def effective_context_description() -> str:
    """The command's description, each registered criterion's rule in a few words."""
    return ("The longest length at which each method x factor passes each task's rule ("
            + ", ".join(c.passes for c in criteria() if c.passes)
            + "), from the tables of all RUN_DIRs together (markdown table).")


def add_effective_context_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders; series are matched across them by model, method, factor, original_ctx")
    p.add_argument("--csv", default=None, help="also write the table (one row per series and criterion) to "
                                               "this CSV file (default: none)")
    add_effective_context_arguments(p)


def cmd_effective_context(args: argparse.Namespace) -> int:
    rules = effective_context_rules(args)
    folders = [Path(folder) for folder in args.run_dirs]
    for folder in folders:
        check_run_folder_given(folder)
    check_csv_destination(args.csv)
    tables = load_effective_context_tables(folders)
    if all(frame.empty for frame in tables.values()):
        names = list(tables)
        raise UsageError(f"{', '.join(str(f) for f in folders)}: no {', '.join(names[:-1])} or {names[-1]} table, "
                         "so there is no effective context to compute; give the run folders of those tasks.")
    table = effective_context(tables, rules)
    print("\n".join(effective_context_lines(table, rules)).rstrip())
    if args.csv:
        write_csv(args.csv, table)
    return EXIT_OK
