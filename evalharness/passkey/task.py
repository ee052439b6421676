"""The passkey task as the command line sees it: options (depths, trials), their checks, cells and
the summary (accuracy by method × length with the passkey context)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..analysis.display import SCORING_WORDS, labelled
from ..errors import UsageError
from ..options import bounded_count
from ..task import TaskDefinition
from . import figures
from .analysis import PASSKEY_THRESHOLD, passkey_accuracy, passkey_effective_context
from .engine import PasskeyCells, PasskeyError, build_prompt


@dataclass(frozen=True)
class PasskeyOptions:
    """Needle depths (evenly spaced in [0, 1]) and trials (keys) per (length, depth)."""

    depths: int = 10
    trials: int = 1


def with_scoring(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels that name the scoring rule too when a passkey table mixes rules (e.g. paper and
    paper-rerotate rows of one method)."""
    if "scoring" not in frame or frame["scoring"].nunique() < 2:
        return frame
    return frame.assign(spec=[f"{spec}, {SCORING_WORDS[scoring]}" if scoring in SCORING_WORDS else spec
                              for spec, scoring in zip(frame["spec"], frame["scoring"])])


class Passkey(TaskDefinition):
    name = "passkey"
    own_forward = True
    example = "--model M --method base,dynamic-yarn --tasks passkey --lengths 2k,4k,8k --depths 5"

    def add_arguments(self, parser):
        g = parser.add_argument_group("passkey (--lengths are the prompt lengths)")
        g.add_argument("--depths", type=bounded_count("--depths", 1, 1000), default=10,
                       help="needle depths, evenly spaced in [0, 1] (default: %(default)s)")
        g.add_argument("--trials", type=bounded_count("--trials", 1, 1000), default=1,
                       help="trials (keys) per (length, depth) (default: %(default)s)")

    def options(self, args):
        return PasskeyOptions(depths=args.depths, trials=args.trials)

    def check_loaded(self, options, common, tokenizer):
        """The shortest passkey prompt must hold the fixed text (intro, needle, question)."""
        try:
            build_prompt(tokenizer, min(common.lengths), 0.5, seed=common.seed)
        except PasskeyError as exc:
            raise UsageError(f"passkey --lengths: {exc}") from None

    def cells(self, options, inputs, session):
        common = inputs.common
        return PasskeyCells(session.model_name, session.tokenizer, inputs.specs, common.lengths, options.depths,
                            options.trials, common.seed, common.dynamic_cache, common.prefill_chunk)

    def summary(self, store):
        rows = store.read("passkey")
        if rows.empty:
            return None
        summary = with_scoring(labelled(passkey_accuracy(rows, by=("context_length",))))
        pivot = summary.pivot_table(index="spec", columns="context_length", values="accuracy", sort=False)
        pivot = pivot.round(3).rename(columns=lambda c: int(float(c)))
        context = with_scoring(labelled(passkey_effective_context(rows))).set_index("spec")["effective_context"]
        pivot["passkey context"] = [("none" if pd.isna(context.get(spec)) else str(int(context.get(spec))))
                                    for spec in pivot.index]
        return (f"\npasskey accuracy (fraction of prompts; passkey context = largest length with ≥ "
                f"{PASSKEY_THRESHOLD:.0%}, none: no length reaches it)\n" + pivot.to_string())

    def figures(self, results_dir, figures_dir):
        return figures.figures(results_dir, figures_dir)


TASK = Passkey()
