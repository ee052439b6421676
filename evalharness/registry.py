"""The task registry: every task by name, the one module outside the task packages that names them.

Contract: `TASKS` maps a task name to "module:ATTRIBUTE" of its `task.TaskDefinition`, imported on
first use (`definition`), in the order the command line lists them, runs them and reports them.
Adding a task is one package and one line here.
"""
from __future__ import annotations

import importlib

from .errors import UsageError
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


def definition(name: str) -> TaskDefinition:
    """The definition of the task `name` (UsageError listing the names when unknown)."""
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}.")
    module, _, attribute = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def definitions() -> list[TaskDefinition]:
    """Every registered task's definition, in registry order."""
    return [definition(name) for name in TASKS]
