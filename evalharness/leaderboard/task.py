"""The leaderboard task as the command line sees it: options (lm-eval tasks, local data, limits,
max length), their checks, cells and the summary (the paper's metric per method × task)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..analysis.display import labelled
from ..errors import UsageError
from ..options import bounded_count, comma_items, positive_count
from ..task import TaskDefinition
from . import figures
from .mirrors import MIRRORS
from .planning import check_task_names
from .protocol import PAPER_TASKS
from .run import LeaderboardCells

DEFAULT_TASKS = "arc_challenge,hellaswag,mmlu,truthfulqa_mc2"


def parse_limit(text: str) -> int | dict[str, int]:
    """`--limit`: one count for every task (`100`) or one per task (`arc_challenge=100,mmlu=2`)."""
    def count(value: str) -> int:
        return positive_count(value, f"--limit {text!r}: {value!r} is not a count ≥ 1 "
                                     "(give N or TASK=N,TASK=N).")
    if "=" not in text:
        return count(text)
    limits = {}
    for part in text.split(","):
        task, _, value = part.partition("=")
        if not task.strip():
            raise argparse.ArgumentTypeError(f"--limit {text!r}: {part!r} names no task (give TASK=N).")
        if task.strip() in limits:
            raise argparse.ArgumentTypeError(f"--limit {text!r} names {task.strip()} twice; give each task once.")
        limits[task.strip()] = count(value.strip())
    return limits


@dataclass(frozen=True)
class LeaderboardOptions:
    """lm-eval task names (or YAML paths), the folder of local copies, examples per task and
    lm-eval's max_length (None: `protocol.default_max_length` of each method)."""

    tasks: tuple[str, ...] = tuple(DEFAULT_TASKS.split(","))
    data: str | None = None
    limit: int | dict[str, int] | None = None
    max_length: int | None = None


class Leaderboard(TaskDefinition):
    name = "leaderboard"
    lengths_matter = False
    resume_options = ("limit", "max_length")  # the items a cell scores, their truncation

    def add_arguments(self, parser):
        g = parser.add_argument_group("leaderboard (lm-eval)")
        g.add_argument("--leaderboard-tasks", default=DEFAULT_TASKS,
                       help="lm-eval task names, shipped offline mirrors (tasks/lm-eval/), or task YAML paths "
                            "(default: %(default)s)")
        g.add_argument("--leaderboard-data", default=None,
                       help="folder with local copies (DIR/arc_challenge, hellaswag, mmlu, truthfulqa): run the "
                            "offline mirrors on them (default: the tasks' hub datasets)")
        g.add_argument("--limit", type=parse_limit, default=None,
                       help="examples per lm-eval task (MMLU: per subject): N, or per task, e.g. "
                            "arc_challenge=100,mmlu=2 (default: every example)")
        g.add_argument("--max-length", type=bounded_count("--max-length"), default=None,
                       help="lm-eval max_length (default: factor × original context for static methods, else L)")

    def options(self, args):
        return LeaderboardOptions(tasks=tuple(comma_items(args.leaderboard_tasks, "--leaderboard-tasks")),
                                  data=args.leaderboard_data, limit=args.limit, max_length=args.max_length)

    def check(self, options, common):
        if options.data is not None and not Path(options.data).is_dir():
            raise UsageError(f"--leaderboard-data {options.data!r} is not a folder; give the folder that holds "
                             "the local copies (DIR/arc_challenge, hellaswag, mmlu, truthfulqa).")
        if options.data is not None and not any((Path(options.data) / m.data_subdir).is_dir()
                                                for m in MIRRORS.values()):
            raise UsageError(f"--leaderboard-data {options.data!r} holds none of the data folders "
                             f"({', '.join(sorted({m.data_subdir for m in MIRRORS.values()}))}); give the folder "
                             "that holds the local copies, or leave it out to use the hub.")
        check_task_names(list(options.tasks), options.data)
        if isinstance(options.limit, dict):
            unknown = sorted(set(options.limit) - set(options.tasks))
            if unknown:
                raise UsageError(f"--limit names {', '.join(unknown)}, which is not in --leaderboard-tasks "
                                 f"({','.join(options.tasks)}).")

    def cells(self, options, inputs, session):
        common = inputs.common
        return LeaderboardCells(session.model_name, session.tokenizer, inputs.specs, list(options.tasks),
                                session.out_dir, limit=options.limit, batch_size=common.batch_size,
                                max_length=options.max_length, seed=common.seed if common.seed_given else None,
                                show_progress=session.show_progress, data_dir=options.data,
                                save_samples=common.save_samples)

    def summary(self, store):
        board = store.read("leaderboard")
        if board.empty:
            return None
        headline = {(task, metric) for task, (_, metric) in PAPER_TASKS.items()}
        board = board[[(t.removesuffix("_local"), m) in headline for t, m in zip(board.task, board.metric)]]
        if board.empty:
            return None
        pivot = labelled(board).pivot_table(index="spec", columns="task", values="value", sort=False)
        return "\nleaderboard (paper metrics)\n" + pivot.round(4).to_string()

    def figures(self, results_dir, figures_dir):
        return figures.figures(results_dir, figures_dir)


TASK = Leaderboard()
