"""The passkey tables: accuracy with its Wilson interval, the effective passkey context, and the
paired accuracy difference to a reference series.

- Accuracy: the fraction of prompts whose key was retrieved, with `n` prompts and a Wilson 95 % score
  interval (`analysis.stats.wilson_interval`).
- Effective passkey context: the longest tested length whose accuracy is ≥ `PASSKEY_THRESHOLD`
  (80 %); NaN (shown as "none") when no length reaches it.
- Paired difference: percentile bootstrap over the shared prompts of accuracy method − reference.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.display import SCORING_WORDS, SERIES_COLUMNS, fmt_pct, ordered_groups, varying
from ..analysis.effective_context import Criterion, RuleOption, longest_passing_length
from ..analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE_LEVEL,
    pair_with_reference,
    paired_accuracy_difference_interval,
    wilson_interval,
)
from ..columns import KEY_COLUMNS
from ..results import read_table

PASSKEY_THRESHOLD = 0.8
# Columns that identify one passkey prompt across methods (pairs for the paired comparison).
PROMPT_COLUMNS = ["context_length", "depth", "trial", "seed", "scoring"]


def as_correct(values: pd.Series) -> pd.Series:
    """`correct` as 1.0 / 0.0 from booleans, numbers or their text ("True", "false", "1");
    NaN for anything else."""
    text = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}

    def one(value) -> float:
        if isinstance(value, (bool, np.bool_, int, float, np.number)):
            return float(value)
        return text.get(str(value).strip().lower(), np.nan)

    return values.map(one).astype(float)

def _passkey_series_columns(frame: pd.DataFrame) -> list[str]:
    """Series columns of a passkey table; `scoring` too when the table mixes scoring rules."""
    return [c for c in SERIES_COLUMNS if c in frame.columns] + varying(frame, ["scoring"])

def passkey_accuracy(passkey: pd.DataFrame, by: Sequence[str] = ("context_length", "depth"),
                     level: float = CONFIDENCE_LEVEL) -> pd.DataFrame:
    """Passkey accuracy per series and `by` (use `by=()` for one number per series).

    Returns:
        The series columns, `by`, `n` (prompts), `correct` (prompts whose key was retrieved),
        `accuracy` = correct / n and its Wilson interval `ci_low`, `ci_high`; in display order.
    """
    columns = _passkey_series_columns(passkey) + list(by) + ["n", "correct", "accuracy", "ci_low", "ci_high"]
    if passkey.empty:
        return pd.DataFrame(columns=columns)
    frame = passkey.assign(correct=as_correct(passkey["correct"])).dropna(subset=["correct"])
    rows = []
    for key, group in ordered_groups(frame, _passkey_series_columns(passkey)):
        parts = group.groupby(list(by), sort=True, dropna=False) if by else [((), group)]
        for values, part in parts:
            values = values if isinstance(values, tuple) else (values,)
            n, k = len(part), int(part["correct"].sum())
            low, high = wilson_interval(k, n, level)
            rows.append({**key, **dict(zip(by, values)), "n": n, "correct": k, "accuracy": k / n,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=columns)

def passkey_effective_context(passkey: pd.DataFrame, threshold: float = PASSKEY_THRESHOLD) -> pd.DataFrame:
    """The effective passkey context of each series.

    The longest tested length whose accuracy (over all depths and trials) is ≥ `threshold`, also
    when a shorter length fails (the paper's definition); NaN when no length reaches it
    (`longest_passing_length`).

    Returns:
        The series columns, `effective_context`, `accuracy_at_context`, `n_at_context` (NaN when
        none), `shorter_failure` (a tested length below the effective context misses the threshold)
        and `max_length_tested`.
    """
    by_length = passkey_accuracy(passkey, by=("context_length",))
    keys = _passkey_series_columns(passkey)
    columns = keys + ["effective_context", "accuracy_at_context", "n_at_context", "shorter_failure",
                      "max_length_tested"]
    rows = []
    for key, group in ordered_groups(by_length, keys):
        group = group.assign(context_length=group["context_length"].astype(float)).set_index("context_length")
        passes = group["accuracy"] >= threshold - 1e-12
        effective, shorter_failure = longest_passing_length(passes)
        best = group.loc[effective] if not math.isnan(effective) else None
        rows.append({**key, "effective_context": effective,
                     "accuracy_at_context": float(best["accuracy"]) if best is not None else math.nan,
                     "n_at_context": float(best["n"]) if best is not None else math.nan,
                     "shorter_failure": shorter_failure,
                     "max_length_tested": float(group.index.max())})
    return pd.DataFrame(rows, columns=columns)

def passkey_differences(passkey: pd.DataFrame, reference: str = "base", seed: int = 0,
                        n_resamples: int = BOOTSTRAP_RESAMPLES,
                        level: float = CONFIDENCE_LEVEL) -> pd.DataFrame:
    """Per series and length: accuracy difference to `reference` on the prompts both have.

    Prompts pair on (context_length, depth, trial, seed, scoring rule) within a run and model; the
    rule of `paper-rerotate` rows is `paper` (the same prompts and rule, only a dynamic method's
    decoding differs), so they pair with a static reference's `paper` rows.

    Returns:
        One row per series other than the reference and length, with `reference`, `n` (paired
        prompts), `difference` and `difference_ci_low/high` (`paired_accuracy_difference_interval`).
    """
    keys = _passkey_series_columns(passkey)
    columns = keys + ["context_length", "reference", "n", "difference", "difference_ci_low",
                      "difference_ci_high"]
    if "scoring" in passkey.columns:
        passkey = passkey.assign(rule=passkey["scoring"].astype(str).str.removesuffix("-rerotate"))
    join = [c for c in ("run", "model") if c in passkey.columns] + [
        "rule" if c == "scoring" else c for c in PROMPT_COLUMNS if c in passkey.columns]
    paired = pair_with_reference(passkey.assign(correct=as_correct(passkey["correct"])), reference, join,
                                 {"correct": "ref_correct"}, "prompt")
    if paired is None:
        return pd.DataFrame(columns=columns)
    paired = paired.dropna(subset=["correct", "ref_correct"])
    rows = []
    for key, group in ordered_groups(paired, keys + ["context_length"]):
        group = group.sort_values([c for c in PROMPT_COLUMNS if c in group.columns])
        diff, low, high = paired_accuracy_difference_interval(
            group["correct"].tolist(), group["ref_correct"].tolist(), seed=seed, n_resamples=n_resamples,
            level=level)
        rows.append({**key, "reference": reference, "n": len(group), "difference": diff,
                     "difference_ci_low": low, "difference_ci_high": high})
    return pd.DataFrame(rows, columns=columns)


def load_passkey(results_dir) -> pd.DataFrame:
    """passkey.csv of a run folder (empty with its columns when the folder has none)."""
    return read_table(results_dir, "passkey")


def _effective_context_rows(passkey: pd.DataFrame, rules) -> pd.DataFrame:
    part = passkey_effective_context(passkey, rules.passkey_threshold)
    # the paper's rule is the passkey criterion as such; another rule is named in words
    data = part["scoring"].map(lambda s: "" if s == "paper" else SCORING_WORDS.get(s, f"scoring {s}")) \
        if "scoring" in part.columns else ""
    return part.assign(criterion="passkey", data=data, threshold=rules.passkey_threshold,
                       reference_length=math.nan, value_at_context=part["accuracy_at_context"])


def _rule_line(table: pd.DataFrame, rules) -> str:
    return f"- Passkey: accuracy ≥ {fmt_pct(rules.passkey_threshold, 0)} % over depths and trials."


# The passkey criterion of the effective context (one per series, and scoring rule when mixed).
CRITERION = Criterion(
    name="passkey", label="passkey", load=load_passkey, cells=KEY_COLUMNS + PROMPT_COLUMNS,
    evaluate=_effective_context_rows, rule_line=_rule_line,
    options=(RuleOption("passkey_threshold", PASSKEY_THRESHOLD, "--passkey-threshold",
                        f"passkey rule: accuracy >= threshold (default: {PASSKEY_THRESHOLD:g})",
                        lambda v: 0 < v <= 1, "in (0, 1]"),),
    passes="passkey accuracy >= a threshold", rule_source="the paper's passkey definition")
