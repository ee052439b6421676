"""`run_leaderboard`: every (scaling spec, task) cell through `lm_eval.simple_evaluate` on the scaled
model; rows appended as each task finishes, failures recorded per cell."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .. import hub
from .extract import _save_results, provenance_path, result_rows
from .lm import wrap_model
from .mirrors import copy_tasks, point_mirror
from .offline import offline_message
from .planning import TaskPlan, _builtin_task_manager, _folder_task_manager, plan_tasks
from .protocol import LeaderboardError, default_max_length, lm_eval_seeds


def _done_cells(store) -> tuple[set, set]:
    """(keys of (key columns, task, metric) rows, keys of (key columns, task)) already in the store
    (including the folders it resumes from)."""
    with_metric = store.done("leaderboard")  # CELL_COLUMNS: key columns, task, metric
    return with_metric, {key[:-1] for key in with_metric}


def _is_done(plan: TaskPlan, key: dict, done: tuple[set, set]) -> bool:
    from ..results import _normalise_key

    base = tuple(_normalise_key(key[c]) for c in ("model", "method", "factor", "original_ctx")) + (_normalise_key(plan.name),)
    if plan.metric:
        return base + (_normalise_key(plan.metric),) in done[0]
    return base in done[1]


def run_leaderboard(model, tokenizer, model_name: str, specs, tasks: Sequence[str], store, manifest, out_dir,
                    limit: int | float | dict[str, int] | None = None, batch_size: int = 1, max_length: int | None = None, seed: int | None = None,
                    show_progress: bool = True, data_dir: str | os.PathLike | None = None,
                    save_samples: bool = False, bootstrap_iters: int = 1000) -> list[str]:
    """Evaluate every (spec, task) cell not already in the store; return the failed cells.

    Each spec is applied to `model` in place (`apply_scaling`) and lm-eval evaluates that object
    with max_length = `max_length` or `default_max_length(spec)`. Rows go to leaderboard.csv as
    soon as a task finishes; lm-eval's results JSON goes to out_dir/lm_eval/ (with `save_samples`,
    also the per-example requests and log-likelihoods). `data_dir` runs the paper tasks as the
    offline mirrors in tasks/ on local files. Seeds (`lm_eval_seeds`): lm-eval's own defaults
    (random 0; numpy, torch and few-shot 1234), or `seed` for all four; each cell records them.
    `bootstrap_iters` only matters for metrics without a closed-form
    standard error (lm-eval's own default is 100000).
    """
    import lm_eval

    from ..results import ResultWriteError, key_row, record_failure
    from ..scaling import apply_scaling

    plans = plan_tasks(tasks, data_dir)
    seeds = lm_eval_seeds(seed)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="evalharness-tasks-") as tmp:
        mirror_dir = None
        mirror_data: dict[str, dict] = {}
        mirror_names = [p.name for p in plans if p.kind == "mirror"]
        if mirror_names:
            for name in dict.fromkeys(mirror_names):  # one mirror at a time: bad data fails only its task
                try:
                    mirror_dir = mirror_dir or copy_tasks(Path(tmp) / "tasks")
                    mirror_data[name] = point_mirror(mirror_dir, name, data_dir)
                except LeaderboardError as exc:
                    for plan in plans:
                        if plan.name == name:
                            plan.error = str(exc)
        offline = None  # decided on the first hub task
        managers: dict = {}

        def task_manager_for(plan: TaskPlan):
            if plan.kind == "hub":
                return _builtin_task_manager()
            folder, builtins = (str(mirror_dir), False) if plan.kind == "mirror" else (
                str(plan.yaml_dir), bool(plan.info.get("is_group")))
            if (folder, builtins) not in managers:
                managers[folder, builtins] = _folder_task_manager(folder, builtins)
            return managers[folder, builtins]

        for spec in specs:
            resolved = apply_scaling(model, spec)
            key = key_row(model_name, resolved)
            done = _done_cells(store)
            todo = [p for p in plans if not _is_done(p, key, done)]
            if not todo:
                continue
            length = int(max_length) if max_length else default_max_length(resolved)
            cell_batch = 1 if resolved.is_dynamic else batch_size
            lm = wrap_model(model, tokenizer, length, cell_batch, show_progress, use_kv_cache=not resolved.is_dynamic)
            for plan in todo:
                cell = f"leaderboard|{model_name}|{resolved.short}|{plan.name}"
                if plan.error:
                    record_failure(manifest, failed, cell, plan.error)
                    continue
                if plan.kind == "hub" and offline is None:
                    offline = hub.work_offline()
                start = time.monotonic()
                task_limit = limit.get(plan.requested) if isinstance(limit, dict) else limit
                try:
                    task_manager = task_manager_for(plan)
                    with hub.forced_offline(bool(offline)):
                        results = lm_eval.simple_evaluate(
                            model=lm, tasks=[plan.name], num_fewshot=plan.num_fewshot, limit=task_limit,
                            task_manager=task_manager, bootstrap_iters=bootstrap_iters, log_samples=save_samples,
                            **seeds,
                        )
                    rows = result_rows(results, key, plan)
                    if plan.metric and not any(r["task"] == plan.name and r["metric"] == plan.metric for r in rows):
                        raise LeaderboardError(f"{plan.name}: lm-eval reported no {plan.metric} "
                                               f"(got {sorted({r['metric'] for r in rows if r['task'] == plan.name})}).")
                    extra = {"spec": str(resolved), "max_length": length, "batch_size": cell_batch, "limit": task_limit,
                             "seeds": seeds, "task": plan.name, "requested": plan.requested, "kind": plan.kind,
                             "data": mirror_data.get(plan.name)}
                    path = provenance_path(out_dir, resolved, plan.name)
                    _save_results(path, results, extra, save_samples)
                    store.append("leaderboard", rows)
                    info = {"seconds": round(time.monotonic() - start, 1), "max_length": length, "lm_eval_json": str(path),
                            "seeds": seeds}
                    if plan.name in mirror_data and "subjects" in mirror_data[plan.name]:
                        info["subjects"] = mirror_data[plan.name]["subjects"]
                    manifest.cell(cell, "done", **info)
                except (KeyboardInterrupt, ResultWriteError):  # stop the run; written rows are intact
                    raise
                except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise anything; one cell fails
                    record_failure(manifest, failed, cell, _failure_text(plan, exc, bool(offline)))
    return failed


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
