"""The RULER task as the command line sees it: options (lm-eval RULER tasks, samples), their
checks, cells and the summary (mean score over tasks by method × length)."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.display import labelled
from ..errors import UsageError
from ..options import bounded_count
from ..results import read_manifest
from ..task import TaskDefinition
from . import figures
from .analysis import ruler_means
from .engine import MAX_GEN_TOKENS, RulerCells, check_dynamic_cache, check_lengths, resolve_tasks


@dataclass(frozen=True)
class RulerOptions:
    """lm-eval RULER tasks (`ruler`: the offline ones) and samples per (method, task, length) cell."""

    tasks: str = "ruler"
    samples: int = 10


class Ruler(TaskDefinition):
    name = "ruler"
    resume_options = ("ruler_samples",)  # the samples a (task, length) cell scores
    example = "--model M --method base,yarn --tasks ruler --ruler-tasks niah_single_1,fwe --lengths 4k,8k"

    def add_arguments(self, parser):
        g = parser.add_argument_group("ruler (lm-eval)")
        g.add_argument("--ruler-tasks", default="ruler",
                       help="ruler (the offline tasks) or a comma list of lm-eval RULER task names, e.g. "
                            "niah_single_1,vt (default: %(default)s)")
        g.add_argument("--ruler-samples", type=bounded_count("--ruler-samples"), default=10,
                       help="samples per (method, task, length) cell (default: %(default)s)")

    def options(self, args):
        return RulerOptions(tasks=args.ruler_tasks, samples=args.ruler_samples)

    def check(self, options, common):
        resolve_tasks(options.tasks)
        if min(common.lengths) <= MAX_GEN_TOKENS:
            raise UsageError(f"RULER length {min(common.lengths)} is not longer than the {MAX_GEN_TOKENS} tokens "
                             "every RULER task generates; give --lengths that leave room for the prompt (≥ 1k).")

    def check_loaded(self, options, common, tokenizer):
        check_lengths(resolve_tasks(options.tasks), tokenizer, common.lengths)

    def cells(self, options, inputs, session):
        common = inputs.common
        check_dynamic_cache(read_manifest(session.out_dir / "manifest.json", quiet=True), common.dynamic_cache,
                            inputs.specs)
        return RulerCells(session.model_name, session.tokenizer, inputs.specs, resolve_tasks(options.tasks),
                          common.lengths, session.out_dir, samples=options.samples,
                          seed=common.seed if common.seed_given else None, batch_size=common.batch_size,
                          show_progress=session.show_progress, save_samples=common.save_samples,
                          dynamic_cache=common.dynamic_cache, prefill_chunk=common.prefill_chunk)

    def summary(self, store):
        ruler = store.read("ruler")
        if ruler.empty:
            return None
        pivot = labelled(ruler_means(ruler)).pivot_table(index="spec", columns="context_length", values="mean_score",
                                                         sort=False)
        return "\nRULER mean score over tasks (report.md: per task, ± stderr, paired differences)\n" + \
            pivot.round(3).to_string()

    def figures(self, results_dir, figures_dir):
        return figures.figures(results_dir, figures_dir)


TASK = Ruler()
