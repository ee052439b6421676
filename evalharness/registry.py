"""The task registry: every task by name, the one module outside the task packages that names them.

Contract: `TASKS` maps a task name to "module:ATTRIBUTE" of its `task.TaskDefinition`, imported on
first use (`definition`), in the order the command line lists them, runs them and reports them.
Each task's package holds, beside its `task` module, modules that need no torch and that the shared
layers reach through `package_modules`: `schema` (`SCHEMAS`, `CELL_COLUMNS`: its result tables, read
by `results` through `table_schemas` / `cell_columns`), `analysis` (its tables' aggregations and, if
it has one, its effective-context `CRITERION`), `figures` (`figures(results_dir, figures_dir)`, and
optionally `optional_figures` with their stems in `OPTIONAL_FIGURES`) and
`report` (`report_section`, `FIGURE_CAPTIONS`, `TABLES`), and where the YaRN paper published its
numbers `paper` (`TABLE`, `PUBLISHED`, `compare`, `mismatch_reason`, read by `paper`). Adding a task
is one package and one line here.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # task.py imports the runner, which imports results, which reads the schemas here
    from .task import TaskDefinition

TASKS: dict[str, str] = {
    "perplexity": "evalharness.perplexity.task:PERPLEXITY",
    "passkey": "evalharness.passkey.task:TASK",
    "leaderboard": "evalharness.leaderboard.task:TASK",
    "temperature-sweep": "evalharness.perplexity.task:TEMPERATURE_SWEEP",
    "ruler": "evalharness.ruler.task:TASK",
}


def task_names() -> list[str]:
    """Every registered task name, in registry order."""
    return list(TASKS)


def definition(name: str) -> "TaskDefinition":
    """The definition of the task `name` (UsageError listing the names when unknown)."""
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}.")
    module, _, attribute = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def definitions() -> list["TaskDefinition"]:
    """Every registered task's definition, in registry order."""
    return [definition(name) for name in TASKS]


def package_modules(kind: str, required: bool = True) -> list:
    """Each task package's module `kind` (`schema`, `analysis`, `figures`, `report`; `paper`, which
    only the packages with published numbers have, with `required=False`), once per package, in
    registry order."""
    packages = dict.fromkeys(target.partition(":")[0].rpartition(".")[0] for target in TASKS.values())
    return [importlib.import_module(f"{package}.{kind}") for package in packages
            if required or importlib.util.find_spec(f"{package}.{kind}") is not None]


def schema_modules() -> list:
    """Each task package's `schema` module, once per package, in registry order."""
    return package_modules("schema")


def table_schemas() -> dict[str, list[str]]:
    """Every result table's columns (table name → columns), from the task packages."""
    return {table: columns for module in schema_modules() for table, columns in module.SCHEMAS.items()}


def value_ranges() -> dict[str, dict[str, tuple]]:
    """Each table's checked columns (`VALUE_RANGES` of a schema module, where it has one): column →
    (lowest, highest) with None for no bound, or `BOOL` for a True/False column."""
    return {table: ranges for module in schema_modules()
            for table, ranges in getattr(module, "VALUE_RANGES", {}).items()}


def cell_columns() -> dict[str, list[str]]:
    """The columns that identify a cell of each table that has them, from the task packages."""
    return {table: columns for module in schema_modules() for table, columns in module.CELL_COLUMNS.items()}
