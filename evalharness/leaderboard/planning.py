"""Task resolution: requested names → `TaskPlan`s (lm-eval hub task, shipped mirror, or a user's
task YAML), checked against lm-eval's task index before any model is loaded."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .mirrors import LOCAL_MIRROR_OF, MIRRORS
from .protocol import PAPER_TASKS, LeaderboardError


@dataclass
class TaskPlan:
    """How one requested task runs: lm-eval name, where lm-eval finds it, the paper protocol."""

    requested: str
    name: str  # lm-eval task/group name, also the `task` column
    kind: str  # "hub" (lm-eval's built-in tasks), "mirror" (tasks/lm-eval/), "yaml" (a user's YAML)
    num_fewshot: int | None = None
    metric: str | None = None  # the headline metric (None: every metric lm-eval reports)
    yaml_dir: Path | None = None
    error: str | None = None
    info: dict = field(default_factory=dict)


def plan_tasks(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[TaskPlan]:
    """Resolve requested names. A paper task runs as its local mirror when data_dir has that
    dataset's folder (DIR/arc_challenge/, DIR/hellaswag/, DIR/mmlu/, DIR/truthfulqa/), else as
    lm-eval's hub task. Names of shipped mirrors run from tasks/lm-eval/; `.yaml`/`.yml` paths load through
    lm-eval's TaskManager with their folder as include_path; anything else is an lm-eval task or
    group name."""
    plans = []
    for requested in tasks:
        requested = str(requested).strip()
        if not requested:
            continue
        if requested.endswith((".yaml", ".yml")):
            plans.append(_yaml_plan(requested))
            continue
        name = requested
        mirror = LOCAL_MIRROR_OF.get(requested)
        if mirror and data_dir is not None and (Path(data_dir).expanduser() / MIRRORS[mirror].data_subdir).is_dir():
            name = mirror
        if name in MIRRORS:
            paper = MIRRORS[name].paper
            shots, metric = PAPER_TASKS[paper] if paper else (None, None)
            plans.append(TaskPlan(requested, name, "mirror", shots, metric))
        else:
            shots, metric = PAPER_TASKS.get(name, (None, None))
            plans.append(TaskPlan(requested, name, "hub", shots, metric))
    return plans


def check_task_names(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[TaskPlan]:
    """Plans for the requested tasks, or LeaderboardError naming every task lm-eval does not know
    and every YAML that cannot be read (checked before any model is loaded)."""
    plans = plan_tasks(tasks, data_dir)
    problems = [p.error for p in plans if p.error]
    hub = [p for p in plans if p.kind == "hub"]
    if hub:
        known = set(builtin_task_manager().all_tasks)
        unknown = [p.requested for p in hub if p.name not in known]
        if unknown:
            problems.append(f"unknown lm-eval task {', '.join(map(repr, unknown))} (see `lm_eval --tasks list`; "
                            f"shipped offline mirrors: {', '.join(sorted(MIRRORS))}; or give a task YAML path).")
    if not plans:
        problems.append("--leaderboard-tasks names no task.")
    if problems:
        raise LeaderboardError(" ".join(problems))
    return plans


def _yaml_plan(path_text: str) -> TaskPlan:
    from lm_eval.tasks._yaml_loader import load_yaml  # lazy: ≈ 1.0 s; only for a task given as a YAML path

    path = Path(path_text).expanduser()
    if not path.is_file():
        return TaskPlan(path_text, path.stem, "yaml", error=f"task YAML {path_text} does not exist.")
    try:
        config = load_yaml(path, resolve_func=False)  # read only: `!function` tags stay unresolved
    except Exception as exc:  # noqa: BLE001
        return TaskPlan(path_text, path.stem, "yaml", error=f"cannot read task YAML {path_text} "
                                                            f"({type(exc).__name__}: {exc}).")
    name = config.get("group") or config.get("task")
    if not isinstance(name, str):
        return TaskPlan(path_text, path.stem, "yaml", error=f"task YAML {path_text} names no `task` or `group`.")
    shots, metric = PAPER_TASKS.get(name, (None, None))
    plan = TaskPlan(path_text, name, "yaml", shots, metric, yaml_dir=path.resolve().parent)
    plan.info["is_group"] = "group" in config
    return plan


@functools.lru_cache(maxsize=1)
def builtin_task_manager():
    """lm-eval's index of its ~15k built-in tasks (several seconds to build: built once)."""
    from lm_eval.tasks import TaskManager  # lazy: ≈ 1.7 s to import, only for leaderboard runs

    return TaskManager()


def folder_task_manager(folder: str, with_builtins: bool):
    """lm-eval's TaskManager over one folder of YAMLs (read when the task loads, never executed
    here); with lm-eval's built-in tasks too when the YAML is a group that may name them."""
    from lm_eval.tasks import TaskManager  # lazy: as in `builtin_task_manager`

    return TaskManager(include_path=folder, include_defaults=with_builtins)

