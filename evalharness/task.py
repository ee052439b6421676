"""The task protocol: what a task package gives the command line, the runner and the summary.

Contract: each task package defines one `TaskDefinition` instance (`TASK`, registered by name in
`registry.TASKS`). The command line adds the task's argument group (`add_arguments`), turns the
parsed arguments into the task's typed options (`options`, the only place that reads the argparse
namespace), checks them before anything is loaded (`check`) and again once the tokenizer exists
(`check_loaded`), then builds the task's cells (`cells`, a `runner.Task`). After the run the
task prints its headline table (`summary`) and, under data parallelism, recomputes the tables
derived from its rows once the shards are merged (`derive`); `plots.plot_run` asks it for its
figures (`figures`). Options every task may read (lengths,
seed, batch size, ...) come as one `CommonOptions`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .runner import Session, Task


@dataclass(frozen=True)
class CommonOptions:
    """The options of the shared argument groups that tasks read (never the argparse namespace)."""

    lengths: tuple[int, ...]
    factors: tuple[float, ...]
    seed: int = 0
    seed_given: bool = False  # lm-eval tasks keep lm-eval's own seeds unless --seed was given
    dynamic_cache: str = "recompute"
    prefill_chunk: int | str | None = None
    chunk_size: int | None = None
    batch_size: int = 1
    save_samples: bool = False


@dataclass
class RunInputs:
    """What the tasks of one run share: the resolved method specs, the common options, and values
    computed once for every task that needs them (the corpus documents: `shared`)."""

    specs: list
    common: CommonOptions
    _shared: dict[str, Any] | None = None

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value stored under `key`, computed by `compute` on first use."""
        if self._shared is None:
            self._shared = {}
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def computed(self, key: str, default: Any = None) -> Any:
        """The value under `key` if some task computed it, else `default`."""
        return (self._shared or {}).get(key, default)


class TaskDefinition:
    """One task as the rest of the harness sees it. Subclasses set `name` and override what applies;
    the defaults add no arguments, check nothing and print nothing."""

    name: str = ""
    # the task runs the model's forward itself (not through lm-eval): a length beyond the model's
    # sliding attention window is worth a warning
    own_forward: bool = False
    # a dynamic method asked only at lengths ≤ L measures nothing new for this task
    lengths_matter: bool = True
    # one `eval` command line of this task for `eval --help`'s examples (what follows `run_eval.py`)
    example: str = ""
    # options (destination names) that change a cell's numbers but are in no table key (how many
    # samples a cell scores): a resume into the folder must give them as its earlier runs did
    resume_options: tuple[str, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this task's argument group to the `eval` parser (a group shared by two tasks of one
        package is added by the first of them)."""

    def option_names(self) -> frozenset[str]:
        """The options (destination names) that mean something only for this task: those its
        `add_arguments` adds. `eval` refuses one given on the command line when the task is not run."""
        parser = argparse.ArgumentParser(add_help=False)
        self.add_arguments(parser)
        return frozenset(vars(parser.parse_args([])))

    def options(self, args: argparse.Namespace) -> Any:
        """This task's typed options from the parsed command line."""
        return None

    def check(self, options: Any, common: CommonOptions) -> None:
        """Cheap checks before anything is loaded: UsageError (one sentence) for a bad value."""

    def check_loaded(self, options: Any, common: CommonOptions, tokenizer) -> None:
        """Checks that need the tokenizer, after the model is loaded and before anything is written."""

    def cells(self, options: Any, inputs: RunInputs, session: Session) -> Task:
        """The task's cells (a `runner.Task`) as the options ask for them."""
        raise NotImplementedError

    def summary(self, store) -> str | None:
        """The run's headline table of this task as console text, or None when it has no rows."""
        return None

    def figures(self, results_dir: Path, figures_dir: Path) -> list[Path]:
        """Draw this task's figures from the tables in `results_dir` into `figures_dir` (PNG + PDF);
        the written paths, none when its tables are missing or empty."""
        return []

    def derive(self, store, common: CommonOptions) -> None:
        """Recompute the tables derived from this task's rows (after merging the shards of a
        data-parallel run)."""
