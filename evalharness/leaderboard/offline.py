"""The one sentence for a hub task whose dataset is not available (offline, or not on the Hub): which
dataset, and how to get it or run its offline mirror. Detection lives in `evalharness.hub`."""
from __future__ import annotations

import re

from .mirrors import LOCAL_MIRROR_OF, MIRRORS
from .planning import TaskPlan, builtin_task_manager


def _hub_dataset_of(plan: TaskPlan, exc: BaseException) -> str:
    """`'path'` or `'path' (config)` of the dataset a hub task needed."""
    entry = None
    try:
        entry = builtin_task_manager().task_index.get(plan.name)
    except Exception:  # noqa: BLE001
        pass
    cfg = (entry.cfg or {}) if entry is not None else {}
    path = cfg.get("dataset_path")
    if not path:
        match = re.search(r"'([\w.\-]+/[\w.\-]+)'", str(exc))
        path = match.group(1) if match else None
    if not path:
        return "its dataset"
    name = cfg.get("dataset_name")
    return f"'{path}'" + (f" ({name})" if name else "")


def offline_message(plan: TaskPlan, exc: BaseException, offline: bool) -> str:
    """One sentence: which dataset is missing and the two ways to get it."""
    dataset = _hub_dataset_of(plan, exc)
    mirror = LOCAL_MIRROR_OF.get(plan.name)
    local = (f"or give --leaderboard-data DIR with a local copy in DIR/{MIRRORS[mirror].data_subdir}/ to run the "
             f"offline mirror {mirror} (tasks/lm-eval/README.md)" if mirror else
             "or run a task YAML that reads a local copy (dataset_path: json with data_files, tasks/lm-eval/README.md)")
    if offline:
        return (f"{plan.name}: dataset {dataset} is not in the local Hugging Face cache and the Hub is offline or "
                f"unreachable, so download it once with network access (any online run of this task fills the "
                f"cache) {local}.")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{plan.name}: dataset {dataset} could not be loaded from the Hub ({type(exc).__name__}: {first}); {local}."

