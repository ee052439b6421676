"""The paper's leaderboard protocol (YaRN paper, Table 3): which lm-eval tasks, how many shots,
which metric is the headline (all three from the task file `tasks/yarn-paper/leaderboard.yaml`),
and the lm-eval context length of a scaled model.

MMLU's headline is the UNWEIGHTED mean of its subject accuracies (`acc_macro`); lm-eval's own group
number is weighted by subject size and is kept as `acc_weighted`. Seeds are lm-eval's own defaults
(those of its CLI and of the Open LLM leaderboard: python `random` 0; numpy, torch and the few-shot
sampler 1234) unless the user gives one seed for all four.
"""
from __future__ import annotations

import inspect

from .. import taskfiles
from ..errors import CellFailure, EvalHarnessError

PAPER_TASK_FILE = "yarn-paper/leaderboard"


def paper_tasks() -> dict[str, tuple[int, str]]:
    """lm-eval task name → (num_fewshot, metric of the paper's table), from the `paper` field of the
    task file `PAPER_TASK_FILE`, in its order."""
    return {str(task): (int(spec["shots"]), str(spec["metric"]))
            for task, spec in taskfiles.load(PAPER_TASK_FILE).paper.items()}


PAPER_TASKS: dict[str, tuple[int, str]] = paper_tasks()

# Tasks whose headline number is the unweighted mean over their leaf tasks (subjects).
MACRO_GROUPS = ("mmlu", "mmlu_local")


class LeaderboardError(EvalHarnessError, ValueError):
    """A leaderboard task cannot run (missing local data, unknown task, dataset offline)."""


class LeaderboardTaskFailure(CellFailure):
    """An lm-eval task failed in one cell (missing data, offline dataset, lm-eval error)."""


SEED_ARGUMENTS = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")


def lm_eval_seeds(seed: int | None = None) -> dict[str, int]:
    """The four seed arguments of `lm_eval.simple_evaluate`: `seed` for all four, or (None) the
    defaults of the installed lm-eval's own signature (0, 1234, 1234, 1234 since lm-eval 0.4.2)."""
    if seed is not None:
        return dict.fromkeys(SEED_ARGUMENTS, int(seed))
    from lm_eval import evaluator  # lazy: ≈ 1.1 s, only when a leaderboard or RULER cell runs

    parameters = inspect.signature(evaluator.simple_evaluate).parameters
    return {name: parameters[name].default for name in SEED_ARGUMENTS}


def default_max_length(spec) -> int:
    """lm-eval's max_length for a resolved spec: factor × L for static methods (the extended
    context), L for base and dynamic methods."""
    if spec.method == "base" or spec.is_dynamic:
        return int(spec.original_ctx)
    return int(round(spec.factor * spec.original_ctx))

