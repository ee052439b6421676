"""The leaderboard task for the runner (`LeaderboardCells`): every (scaling spec, lm-eval task) cell
through `lm_eval.simple_evaluate` on the scaled model; rows appended as each task finishes; an
exception raised inside lm-eval (or the `datasets` it drives) fails its cell (`LeaderboardTaskFailure`),
one raised in evalharness's own code (the LM wrapper, the row extraction) is a bug and propagates.
`run_leaderboard` runs the grid without the CLI."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .. import hub
from ..errors import delegated_failures
from ..parallel import Shard
from ..plan import Cell, Plan, cell_name
from ..results import key_row, normalise_key
from ..runner import Session, Task, resolve_specs, run_cells
from ..taskfiles import LM_EVAL_FOLDER
from .extract import in_run_folder, provenance_path, result_rows, save_results
from .lm import wrap_model
from .mirrors import copy_tasks, point_mirror
from .offline import offline_message
from .planning import TaskPlan, builtin_task_manager, folder_task_manager, plan_tasks
from .protocol import LeaderboardError, LeaderboardTaskFailure, default_max_length, lm_eval_seeds


def _done_cells(done_keys: set) -> tuple[set, set]:
    """(keys of (key columns, task, metric) rows, keys of (key columns, task)) from the
    leaderboard table's cell keys (`ResultStore.done`)."""
    return done_keys, {key[:-1] for key in done_keys}


def _is_done(plan: TaskPlan, key: dict, done: tuple[set, set]) -> bool:
    key_columns = ("model", "method", "factor", "original_ctx")
    base = tuple(normalise_key(key[c]) for c in key_columns) + (normalise_key(plan.name),)
    if plan.metric:
        return base + (normalise_key(plan.metric),) in done[0]
    return base in done[1]


@contextlib.contextmanager
def one_process_view():
    """lm-eval sees one process: under torchrun each rank runs whole lm-eval tasks of its own
    (the runner splits the cells), but `simple_evaluate` returns results only where
    LOCAL_RANK is 0 (its tensor-parallel rule), so LOCAL_RANK reads 0 for the duration."""
    previous = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = previous


class LeaderboardCells(Task):
    """Cells: (spec, lm-eval task), spec-major. Each spec is applied to the model in place and
    lm-eval evaluates that object with max_length = `max_length` or `default_max_length(spec)`.
    Rows go to leaderboard.csv as soon as a task finishes; lm-eval's results JSON goes to
    out_dir/lm_eval/ (with `save_samples`, also the per-example requests and log-likelihoods).
    `data_dir` runs the paper tasks as the offline mirrors in tasks/lm-eval/ on local files. Seeds of
    python, numpy, torch and the few-shot sampler are lm-eval's own defaults, or all `seed`
    (`lm_eval_seeds`); each cell records them. `bootstrap_iters` only matters
    for metrics without a closed-form standard error (lm-eval's own default is 100000). What
    lm-eval raises fails the cell (`LeaderboardTaskFailure`); the run goes on."""

    name = "leaderboard"
    table = "leaderboard"

    def __init__(self, model_name: str, tokenizer, specs, tasks: Sequence[str], out_dir,
                 limit: int | float | dict[str, int] | None = None, batch_size: int = 1,
                 max_length: int | None = None, seed: int | None = None, show_progress: bool = True,
                 data_dir: str | os.PathLike | None = None, save_samples: bool = False,
                 bootstrap_iters: int = 1000):
        self.model_name, self.tokenizer, self.specs = model_name, tokenizer, list(specs)
        self.plans = plan_tasks(tasks, data_dir)
        self.out_dir, self.limit, self.batch_size, self.max_length = out_dir, limit, batch_size, max_length
        self.seeds, self.show_progress, self.data_dir = lm_eval_seeds(seed), show_progress, data_dir
        self.save_samples, self.bootstrap_iters = save_samples, bootstrap_iters
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._mirror_dir: Path | None = None
        self._mirror_data: dict[str, dict] = {}
        self._offline: bool | None = None  # decided on the first hub task
        self._managers: dict = {}
        self._lm = None  # (spec, wrapped model, max_length, batch size) of the current spec

    def cells(self, session) -> list[Cell]:
        return [Cell(self.name, spec, (plan.name,), cell_name("leaderboard", self.model_name, spec.short, plan.name),
                     length=int(self.max_length) if self.max_length else default_max_length(spec),
                     kv_cache=not spec.is_dynamic)
                for spec in self.specs for plan in self.plans]

    def _plan(self, cell: Cell) -> TaskPlan:
        return next(p for p in self.plans if p.name == cell.unit[0])

    def pending(self, cell: Cell, done: set) -> bool:
        return not _is_done(self._plan(cell), key_row(self.model_name, cell.spec), _done_cells(done))

    def _prepare_mirrors(self) -> None:
        """Copy the shipped task YAMLs once and point each requested mirror at its local data;
        bad data fails only that mirror's cells."""
        if self._tmp is not None:
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="evalharness-tasks-")
        for name in dict.fromkeys(p.name for p in self.plans if p.kind == "mirror"):
            try:
                self._mirror_dir = self._mirror_dir or copy_tasks(Path(self._tmp.name) / "tasks")
                self._mirror_data[name] = point_mirror(self._mirror_dir, name, self.data_dir)
            except LeaderboardError as exc:
                for plan in self.plans:
                    if plan.name == name:
                        plan.error = str(exc)

    def _task_manager(self, plan: TaskPlan):
        if plan.kind == "hub":
            return builtin_task_manager()
        folder, builtins = (str(self._mirror_dir), False) if plan.kind == "mirror" else (
            str(plan.yaml_dir), bool(plan.info.get("is_group")))
        if (folder, builtins) not in self._managers:
            self._managers[folder, builtins] = folder_task_manager(folder, builtins)
        return self._managers[folder, builtins]

    def _wrapped(self, session, spec):
        if self._lm is None or self._lm[0] != spec:
            length = int(self.max_length) if self.max_length else default_max_length(spec)
            batch = 1 if spec.is_dynamic else self.batch_size
            lm = wrap_model(session.model, self.tokenizer, length, batch, self.show_progress,
                            use_kv_cache=not spec.is_dynamic)
            self._lm = (spec, lm, length, batch)
        return self._lm[1:]

    def run(self, cell: Cell, pending, session) -> dict:
        import lm_eval  # lazy, as in `lm.py`

        self._prepare_mirrors()
        plan, spec = self._plan(cell), cell.spec
        if plan.error:
            raise LeaderboardTaskFailure(plan.error)
        lm, length, batch = self._wrapped(session, spec)
        lm.progress = session.progress
        if plan.kind == "hub" and self._offline is None:
            self._offline = hub.work_offline()
        start = time.monotonic()
        task_limit = self.limit.get(plan.requested) if isinstance(self.limit, dict) else self.limit
        offline = bool(self._offline)
        with delegated_failures(lambda exc: LeaderboardTaskFailure(_failure_text(plan, exc, offline))):
            task_manager = self._task_manager(plan)
            with hub.forced_offline(bool(self._offline)), one_process_view():
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=[plan.name], num_fewshot=plan.num_fewshot, limit=task_limit,
                    task_manager=task_manager, bootstrap_iters=self.bootstrap_iters, log_samples=self.save_samples,
                    **self.seeds,
                )
            rows = result_rows(results, key_row(self.model_name, spec), plan)
        if plan.metric and not any(r["task"] == plan.name and r["metric"] == plan.metric for r in rows):
            raise LeaderboardTaskFailure(f"{plan.name}: lm-eval reported no {plan.metric} "
                                         f"(got {sorted({r['metric'] for r in rows if r['task'] == plan.name})}).")
        extra = {"spec": str(spec), "max_length": length, "batch_size": batch, "limit": task_limit,
                 "seeds": self.seeds, "task": plan.name, "requested": plan.requested, "kind": plan.kind,
                 "data": self._mirror_data.get(plan.name)}
        path = provenance_path(self.out_dir, spec, plan.name)
        copies = {str(self._mirror_dir): f"tasks/{LM_EVAL_FOLDER}"} if self._mirror_dir else {}  # the shipped source
        save_results(path, results, extra, self.save_samples, copies)
        session.store.append(self.table, rows)
        info = {"seconds": round(time.monotonic() - start, 1), "max_length": length,
                "lm_eval_json": in_run_folder(self.out_dir, path), "seeds": self.seeds}
        if plan.name in self._mirror_data and "subjects" in self._mirror_data[plan.name]:
            info["subjects"] = self._mirror_data[plan.name]["subjects"]
        return info

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._lm = None


def run_leaderboard(model, tokenizer, model_name: str, specs, tasks: Sequence[str], store, manifest, out_dir,
                    limit: int | float | dict[str, int] | None = None, batch_size: int = 1,
                    max_length: int | None = None, seed: int | None = None,
                    show_progress: bool = True, data_dir: str | os.PathLike | None = None,
                    save_samples: bool = False, bootstrap_iters: int = 1000, shard=None) -> list[str]:
    """Evaluate every (spec, task) cell not already in the store through the runner; return the
    failed cells (library entry point; the CLI builds the same cells; see `LeaderboardCells`)."""
    session = Session(model, tokenizer, model_name, store, manifest, shard or Shard(), show_progress)
    cells_task = LeaderboardCells(model_name, tokenizer, resolve_specs(model, specs), tasks, out_dir, limit, batch_size,
                                  max_length, seed, show_progress, data_dir, save_samples, bootstrap_iters)
    return run_cells(Plan(cells_task.cells(session)), [cells_task], session)


def _failure_text(plan: TaskPlan, exc: BaseException, offline: bool) -> str:
    if isinstance(exc, LeaderboardError):
        return str(exc)
    if plan.kind == "hub" and hub.unavailable_reason(exc):
        return offline_message(plan, exc, offline)
    if isinstance(exc, KeyError) and "not a registered task" in str(exc):
        return (f"{plan.name!r} is not an lm-eval task, group or tag name (nor a task YAML path); "
                f"`lm_eval ls tasks` lists them.")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"
