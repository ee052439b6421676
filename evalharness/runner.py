"""One runner for every task: execute a plan's cells against one loaded model.

Contract:
- A `Task` (built by a task package's `task.TaskDefinition.cells`) lists its cells (`cells`), says
  which part of a cell is still missing from the result store (`pending`), computes a cell (`run`),
  and may aggregate after the last cell (`finish`).
- `run_cells` walks the cells in plan order. Cell i belongs to rank i mod world (`Shard.owns`):
  under torchrun / accelerate every task's cells are split across ranks, each computed once.
  A cell whose rows are all in the store (or in the folders it resumes from) is skipped.
- Before a cell runs, its scaling spec is applied to the model in place.
- Failure policy: an exception for which `errors.is_cell_failure` holds (out of memory, a
  non-finite result, an lm-eval task error, any `CellFailure`) is recorded in the manifest as the
  cell's failure and the run goes on; every other exception (a bug, a user error) propagates.
- Progress: on a terminal one overall bar (cells done / to do, tokens/s, ETA) above the cell's own
  (`progress.CellProgress`, `Session.progress`: tokens prefilled or generated); in a log file one
  plain line per cell and, inside a long cell, at most one line every `progress.PLAIN_INTERVAL_S`
  seconds; nothing with `show_progress` off.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .errors import UsageError, failure_text, is_cell_failure
from .parallel import Shard
from .plan import Cell, Plan
from .progress import CellProgress
from .results import now, read_manifest
from .scaling import apply_scaling, resolve_spec


@dataclass
class Session:
    """What every cell of one run shares: the loaded model, where rows go, which rank this is."""

    model: Any
    tokenizer: Any
    model_name: str
    store: Any
    manifest: Any
    shard: Shard = field(default_factory=Shard)
    show_progress: bool = True
    info: Any = None  # models.ModelInfo when the CLI loaded the model
    run_dir: Any = None  # the run folder (`--out`); a rank's store writes to a shard folder inside it
    progress: CellProgress = field(default_factory=CellProgress)  # the running cell's (`run_cells` sets it)

    @property
    def out_dir(self) -> Path:
        """Where files other than the tables go (the run folder, also under data parallelism)."""
        return Path(self.run_dir if self.run_dir is not None else self.store.out_dir)


class Task:
    """A kind of evaluation. Subclasses set `name` and `table` and implement `cells`, `pending`
    and `run`; `finish` and `close` are optional."""

    name: str = ""
    table: str = ""  # the result table its rows go to (`results.SCHEMAS`)

    def cells(self, session: Session) -> list[Cell]:
        """Every cell of this task in run order (done or not)."""
        raise NotImplementedError

    def pending(self, cell: Cell, done: set) -> Any:
        """The part of `cell` still to compute, given the cell keys already in `self.table`
        (`ResultStore.done`); falsy when the cell is complete."""
        raise NotImplementedError

    def run(self, cell: Cell, pending: Any, session: Session) -> dict:
        """Compute the pending part of a cell (its spec already applied to the model), append its
        rows to `session.store`, and return extra manifest fields for the cell."""
        raise NotImplementedError

    def finish(self, session: Session) -> None:
        """After this process's last cell (derived tables; single process only)."""

    def close(self) -> None:
        """Release what the task holds (temporary folders); called once, also after an error."""


def resolve_specs(model, specs: Sequence) -> list:
    """Specs as their rows will name them: `native` resolved with what ships (rope_type, factor, L),
    the others with `original_ctx` filled in from the model's native context where missing."""

    return [resolve_spec(model, s) for s in specs]


def build_plan(tasks: Sequence[Task], session: Session) -> Plan:
    return Plan([cell for task in tasks for cell in task.cells(session)])


def plan_status(plan: Plan, tasks: dict[str, Task], store) -> list[tuple[Cell, Any]]:
    """(cell, pending) for every cell of the plan against the store's finished rows."""
    done = {name: store.done(task.table) for name, task in tasks.items()}
    return [(cell, tasks[cell.task].pending(cell, done[cell.task])) for cell in plan.cells]


def record_failure(session: Session, failed: list, cell: str, error: BaseException | str) -> None:
    """Note a failed cell in the manifest and the run's list, and give back cached accelerator
    memory so the next cell starts clean."""
    failed.append(cell)
    session.manifest.cell(cell, "failed", error=failure_text(error))

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record_cells_found_in_tables(session: Session, done: Sequence[str]) -> None:
    """Give every planned cell the tables already hold but the manifest does not list (a manifest
    rebuilt after damage, or one written by a process that died before recording the cell) the
    entry `{"status": "done", "from_tables": true}`: the manifest regains what the tables say."""
    current = session.manifest.data.get("cells", {})
    missing = [name for name in done if current.get(name, {}).get("status") != "done"]
    if missing:
        session.manifest.merge_cells({name: {"status": "done", "from_tables": True, "time": now()}
                                      for name in missing})


def earlier_runs(out_dir: Path) -> list[dict]:
    """The runs the folder's manifest records (none for a new folder), as `check_same_settings` and
    `check_same_numerics` compare them with this run."""
    path = Path(out_dir) / "manifest.json"
    return read_manifest(path, quiet=True).get("runs", []) if path.exists() else []


def check_same_settings(out_dir: Path, runs: list[dict], settings: dict[str, dict], args: dict) -> None:
    """UsageError when an earlier run (`runs`) of the same model (`args["model"]`) ran a task of
    `settings` (task → {option: value}, destination names) with another value of one of them: its
    cells are done and a resume would keep their counts under this run's setting."""
    settings = json.loads(json.dumps(settings))  # as the manifest holds values (a map's keys as text)
    for run in runs:
        earlier = run.get("args") or {}
        if earlier.get("model") != args.get("model"):
            continue
        ran = {t.strip() for t in str(earlier.get("tasks", "")).split(",")}
        for task, values in settings.items():
            for name, value in values.items():
                if task in ran and name in earlier and earlier[name] != value:
                    flag = "--" + name.replace("_", "-")
                    raise UsageError(f"{str(out_dir)!r} holds {task} results of {args['model']} computed with "
                                     f"{flag} {option_text(earlier[name])}; this run gives {option_text(value)}, "
                                     "and the cells already done would keep their first count: give "
                                     f"{flag} {option_text(earlier[name])} to resume, or another --out.")


def option_text(value) -> str:
    """An option's value as a command line writes it: `none` for unset, `a=1,b=2` for a per-task map."""
    if value is None:
        return "none (not given)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def window_text(size: int | None) -> str:
    """A sliding-window attention as a sentence says it: `off`, `of 4096 tokens`."""
    return "off" if size is None else f"of {size} tokens"


def check_same_numerics(out_dir: Path, runs: list[dict], model_name: str, dtype: str,
                        sliding_window: int | None) -> None:
    """UsageError when an earlier run (`runs`) computed results of `model_name` in another dtype or
    with another sliding-window attention: no table column tells such rows apart, so a resume
    computes as the earlier runs did (or goes to another --out)."""
    for run in runs:
        info = run.get("model_info") or {}
        if info.get("name") != model_name:
            continue  # another model: its rows carry its own name
        if info.get("dtype") not in (None, dtype):
            raise UsageError(f"{str(out_dir)!r} holds {model_name} results computed in {info['dtype']}; this run "
                             f"would compute in {dtype} and mix both in tables that have no dtype column: give "
                             f"--dtype {info['dtype']} to resume, or another --out.")
        window = run.get("sliding_window_attention")
        if window is not None and window.get("applied") != sliding_window:
            earlier = window.get("applied")
            raise UsageError(f"{str(out_dir)!r} holds {model_name} results computed with sliding-window attention "
                             f"{window_text(earlier)}; this run's is {window_text(sliding_window)}: give "
                             f"--sliding-window-attention {'off' if earlier is None else earlier} to resume, or "
                             "another --out.")


def resume_line(done: int, total: int) -> str:
    """What a resumed run says before it computes: `k of n cells already done`."""
    rest = total - done
    return (f"{done} of {total} cells already done; " +
            (f"computing the other {rest}." if rest else "nothing to compute."))


def run_cells(plan: Plan, tasks: Sequence[Task], session: Session) -> list[str]:
    """Compute every cell of `plan` this rank owns and the store lacks; return the failed cells'
    names. Tasks are closed at the end, also when an exception propagates."""

    by_name = {task.name: task for task in tasks}
    try:
        status = plan_status(plan, by_name, session.store)
        if not session.shard.active:
            record_cells_found_in_tables(session, [cell.name for cell, pending in status if not pending])
        owned = [(cell, pending) for index, (cell, pending) in enumerate(status) if session.shard.owns(index)]
        todo = [(cell, pending) for cell, pending in owned if pending]
        failed: list[str] = []
        if len(todo) < len(owned):
            print(resume_line(len(owned) - len(todo), len(owned)), file=sys.stderr)
        terminal = sys.stderr.isatty()
        mode = "off" if not session.show_progress else "bar" if terminal else "lines"
        overall = tqdm(total=len(todo), unit="cell", desc="cells", position=0, dynamic_ncols=True,
                       disable=not session.show_progress or not todo or not terminal)
        tokens, start = 0, time.monotonic()
        try:
            for number, (cell, pending) in enumerate(todo, 1):
                task = by_name[cell.task]
                apply_scaling(session.model, cell.spec)
                overall.set_description(f"cells ({cell.task})")
                cell_start = time.monotonic()
                session.progress = CellProgress(f"cell {number}/{len(todo)}", mode)
                try:
                    info = task.run(cell, pending, session)
                    seconds = round(time.monotonic() - cell_start, 1)
                    session.manifest.cell(cell.name, "done", **{"seconds": seconds, **(info or {})})
                except Exception as exc:  # the policy is in is_cell_failure; the rest propagates
                    if not is_cell_failure(exc):
                        raise
                    record_failure(session, failed, cell.name, exc)
                finally:
                    session.progress.close()
                    session.progress = CellProgress()
                tokens += cell.tokens
                overall.update(1)
                if session.show_progress and not terminal:  # a log file: one plain line per cell
                    state = "failed" if failed and failed[-1] == cell.name else "done"
                    print(f"cell {number}/{len(todo)} {state} in {time.monotonic() - cell_start:.1f} s: "
                          f"{cell.name}", file=sys.stderr, flush=True)
                elapsed = time.monotonic() - start
                if tokens and elapsed > 0:
                    overall.set_postfix_str(f"{tokens / elapsed:,.0f} tok/s", refresh=False)
        finally:
            overall.close()
        if not session.shard.active:
            for task in tasks:
                task.finish(session)
        return failed
    finally:
        for task in tasks:
            task.close()
