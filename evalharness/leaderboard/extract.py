"""lm-eval results → tidy leaderboard rows (every numeric metric; MMLU's macro mean), and the
provenance JSON (and optional per-sample log) written next to the tables."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

import lm_eval
import numpy as np

from ..results import atomic_write_text
from .planning import TaskPlan
from .protocol import MACRO_GROUPS, LeaderboardTaskFailure


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float(value) if isinstance(value, np.generic) else None
    return float(value)


def leaf_tasks(results: dict, name: str) -> list[str]:
    """The leaf tasks under a group (itself when it is a task), depth first."""
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    leaves = []
    for child in children:
        leaves += leaf_tasks(results, child)
    return leaves


def _n_samples(results: dict, name: str) -> int | None:
    counts = results.get("n-samples", {})
    total = 0
    for leaf in leaf_tasks(results, name):
        entry = counts.get(leaf)
        if entry is None:
            return None
        total += int(entry.get("effective", entry.get("original", 0)))
    return total


def macro_mean(results: dict, group: str, metric: str = "acc") -> dict:
    """Unweighted mean of `metric` over the group's leaf tasks (the paper's MMLU number), its
    standard error (independent subjects: √Σse²/k), the size-weighted mean recomputed from the
    same rows, and the subject accuracies."""
    per_subject, stderrs, sizes = {}, [], []
    for leaf in leaf_tasks(results, group):
        entry = results["results"].get(leaf, {})
        value = _number(entry.get(f"{metric},none"))
        if value is None:
            continue
        per_subject[leaf] = value
        se = _number(entry.get(f"{metric}_stderr,none"))
        stderrs.append(se if se is not None else math.nan)
        sizes.append(_n_samples(results, leaf) or 0)
    if not per_subject:
        raise LeaderboardTaskFailure(f"{group}: lm-eval reported no per-subject {metric}.")
    k = len(per_subject)
    values = list(per_subject.values())
    weighted = sum(v * n for v, n in zip(values, sizes)) / sum(sizes) if sum(sizes) else math.nan
    return {"macro": sum(values) / k, "stderr": math.sqrt(sum(se * se for se in stderrs)) / k,
            "weighted": weighted, "subjects": per_subject, "n_samples": sum(sizes)}


def result_rows(results: dict, key: dict, plan: TaskPlan) -> list[dict]:
    """Tidy leaderboard rows from one simple_evaluate result: every numeric metric of every task
    and group (`metric` for lm-eval's `none` filter, `metric,filter` otherwise); for MMLU groups
    `acc_macro` (the paper's number) and the group's own number renamed `acc_weighted`."""
    rows = []
    n_shot = results.get("n-shot", {})
    macro_group = plan.name in MACRO_GROUPS
    groups = set(results.get("group_subtasks", {}))
    for name, entry in results["results"].items():
        for metric_key, value in entry.items():
            if "," not in metric_key or "_stderr," in metric_key:
                continue
            number = _number(value)
            if number is None:
                continue
            metric, filter_name = metric_key.split(",", 1)
            stderr = _number(entry.get(f"{metric}_stderr,{filter_name}"))
            label = metric if filter_name == "none" else f"{metric},{filter_name}"
            if macro_group and name in groups and label == "acc":
                label = "acc_weighted"
            shots = n_shot.get(name, plan.num_fewshot)
            rows.append(dict(key, task=name, metric=label, value=number,
                             stderr=stderr if stderr is not None else math.nan,
                             num_fewshot=int(shots) if shots is not None else plan.num_fewshot,
                             n_samples=_n_samples(results, name)))
    if macro_group and plan.name in results["results"]:
        macro = macro_mean(results, plan.name)
        rows.append(dict(key, task=plan.name, metric="acc_macro", value=macro["macro"], stderr=macro["stderr"],
                         num_fewshot=plan.num_fewshot if plan.num_fewshot is not None else n_shot.get(plan.name),
                         n_samples=macro["n_samples"]))
    return rows


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def provenance_path(out_dir: str | os.PathLike, spec, task: str) -> Path:
    """out_dir/lm_eval/<method>_<factor>_<task>.json"""
    return Path(out_dir) / "lm_eval" / f"{_safe(spec.label)}_{spec.factor:g}_{_safe(task)}.json"


def in_run_folder(out_dir: str | os.PathLike, path: Path) -> str:
    """`path` relative to the run folder (`lm_eval/<file>.json`), as the manifest records it: the
    folder can move or be committed without naming the machine it ran on."""
    return Path(path).relative_to(Path(out_dir)).as_posix()


def relative_paths(value, aliases: Mapping[str, str] | None = None, site_packages: str | None = None,
                   cwd: str | None = None, home: str | None = None):
    """`value` (lm-eval's results: nested dicts and lists) with every absolute path made readable and
    machine-free: a path under a folder of `aliases` (a temporary copy) under that folder's alias
    (e.g. `tasks/lm-eval`, the shipped folder the copy came from), an installed package's file
    relative to site-packages (`lm_eval/tasks/...`), one under the working directory relative to it,
    one elsewhere under the home folder as `~/...`, any other relative to the working directory."""
    site_packages = site_packages or str(Path(lm_eval.__file__).resolve().parent.parent)
    cwd = cwd or os.getcwd()
    home = home or os.path.expanduser("~")
    if isinstance(value, dict):
        return {key: relative_paths(item, aliases, site_packages, cwd, home) for key, item in value.items()}
    if isinstance(value, list):
        return [relative_paths(item, aliases, site_packages, cwd, home) for item in value]
    if not (isinstance(value, str) and os.path.isabs(value) and "\n" not in value):
        return value
    for folder, alias in sorted((aliases or {}).items(), key=lambda item: -len(item[0])):
        if value == folder or value.startswith(folder.rstrip(os.sep) + os.sep):
            return Path(alias, os.path.relpath(value, folder)).as_posix()
    for base in (site_packages, cwd):
        if value.startswith(base.rstrip(os.sep) + os.sep):
            return os.path.relpath(value, base)
    if home not in ("", os.sep) and value.startswith(home.rstrip(os.sep) + os.sep):
        return "~/" + os.path.relpath(value, home)
    return os.path.relpath(value, cwd)


def save_results(path: Path, results: dict, extra: dict, save_samples: bool,
                 aliases: Mapping[str, str] | None = None) -> None:
    from lm_eval.utils import handle_non_serializable  # lazy: ≈ 0.4 s, only when a result is saved

    samples = results.pop("samples", None)
    body = relative_paths(dict(results, evalharness=extra), aliases)
    atomic_write_text(path, json.dumps(body, indent=2, default=handle_non_serializable) + "\n")
    if save_samples and samples:
        lines = []
        for task, items in samples.items():
            for item in items:
                lines.append(json.dumps(dict(item, task=task), default=handle_non_serializable))
        atomic_write_text(path.with_name(path.stem + "_samples.jsonl"), "\n".join(lines) + "\n")

