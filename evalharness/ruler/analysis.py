"""The RULER tables: scores in display order, the mean over tasks, the paired per-sample difference
to a reference series, and the RULER criterion of the effective context: the mean score over the
tasks at ℓ ≥ 85 % of base's mean at ℓ_ref, the longest base length ≤ L/2."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.display import SERIES_COLUMNS, fmt_pct, format_number, method_display, ordered_groups
from ..analysis.effective_context import Criterion, RuleOption, longest_passing_length
from ..analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE_LEVEL,
    REFERENCE_METHOD,
    pair_with_reference,
    paired_accuracy_difference_interval,
    reference_rows,
)
from ..columns import KEY_COLUMNS
from ..results import read_table

RULER_FRACTION = 0.85

# ruler.csv as ruler.py writes it: one row per series × RULER task × length (score in [0, 1]).
RULER_COLUMNS = KEY_COLUMNS + ["task", "context_length", "score", "n", "stderr"]

# lm-eval's offline RULER tasks in RULER's order (retrieval, multi-hop tracing, aggregation); others after.
RULER_TASK_ORDER = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe"]

ALL_TASKS = "all"  # the `task` of pooled rows in `ruler_differences`

def ruler_task_sort_key(task: str) -> tuple:
    """The offline tasks in RULER's order, then other RULER tasks by name."""
    name = str(task)
    return (RULER_TASK_ORDER.index(name) if name in RULER_TASK_ORDER else len(RULER_TASK_ORDER), name)


TASK_ORDER = {"task": ruler_task_sort_key}  # `ordered_groups`' order of a `task` column

def load_ruler(results_dir: str | os.PathLike) -> pd.DataFrame:
    """ruler.csv of a run folder (`RULER_COLUMNS`), or an empty frame with those columns when the
    folder has none."""
    if not (Path(results_dir) / "ruler.csv").exists():
        return pd.DataFrame(columns=RULER_COLUMNS)
    return read_table(results_dir, "ruler")


def ruler_means(ruler: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The RULER mean of each series and length: m(ℓ) = (1/|K|) Σ_{k ∈ K} score_k(ℓ), K the tasks the
    series has at ℓ (its rows of ruler.csv), and its standard error √(Σ_k se_k²)/|K| (the tasks'
    samples are independent; NaN when a task has no stderr). Columns: `keys` (default the series
    columns), `context_length`, `mean_score`, `n_tasks`, `mean_stderr`."""
    keys = [c for c in (SERIES_COLUMNS if keys is None else keys) if c in ruler.columns]
    columns = keys + ["context_length", "mean_score", "n_tasks", "mean_stderr"]
    rows = []
    frame = ruler.assign(score=pd.to_numeric(ruler["score"], errors="coerce")).dropna(subset=["score"])
    for key, group in (ordered_groups(frame, keys + ["context_length"]) if not frame.empty else []):
        stderr = (pd.to_numeric(group["stderr"], errors="coerce") if "stderr" in group
                  else pd.Series(math.nan, index=group.index))
        rows.append({**key, "context_length": float(key["context_length"]),
                     "mean_score": float(group["score"].mean()), "n_tasks": int(group["task"].nunique()),
                     "mean_stderr": float(np.sqrt((stderr ** 2).sum(skipna=False))) / len(group)})
    return pd.DataFrame(rows, columns=columns)

def ruler_reference(ruler: pd.DataFrame, fraction: float = RULER_FRACTION,
                    reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """The RULER threshold of each (model, original context L), from the reference (base) series.

        ℓ_ref = max{ℓ : the reference has RULER rows at ℓ, ℓ ≤ L/2}   (L/2 itself when tested),
        θ = fraction · m_ref(ℓ_ref),

    m_ref the reference's RULER mean (`ruler_means`, over the reference's rows of that model and L).

    Returns:
        `run` (when present), `model`, `original_ctx`, `reference_length` ℓ_ref, `reference_mean`,
        `threshold` θ; NaN where the reference has no length ≤ L/2.
    """
    group_keys = [c for c in ("run", "model", "original_ctx") if c in ruler.columns]
    columns = group_keys + ["reference_length", "reference_mean", "threshold"]
    if ruler.empty:
        return pd.DataFrame(columns=columns)
    means = ruler_means(reference_rows(ruler, reference), group_keys)
    rows = []
    for key, _ in ordered_groups(ruler, group_keys):
        mine = means
        for column in group_keys:
            mine = mine[mine[column].astype(str) == str(key[column])]
        eligible = mine[mine["context_length"] <= float(key["original_ctx"]) / 2]
        if eligible.empty:
            rows.append({**key, "reference_length": math.nan, "reference_mean": math.nan,
                         "threshold": math.nan})
            continue
        at = eligible.loc[eligible["context_length"].idxmax()]
        rows.append({**key, "reference_length": float(at["context_length"]),
                     "reference_mean": float(at["mean_score"]),
                     "threshold": fraction * float(at["mean_score"])})
    return pd.DataFrame(rows, columns=columns)

def ruler_effective_context(ruler: pd.DataFrame, fraction: float = RULER_FRACTION,
                            threshold: float | None = None,
                            reference: str = REFERENCE_METHOD) -> pd.DataFrame:
    """The effective RULER context of each series.

        effective = max{ℓ ∈ T : m(ℓ) ≥ θ}   (`longest_passing_length`),

    T the lengths the series has RULER rows at, m(ℓ) its mean score over the RULER tasks at ℓ
    (`ruler_means`), θ = `threshold` when given, else fraction · m_base(ℓ_ref) of the same model and L
    (`ruler_reference`: ℓ_ref the longest base length ≤ L/2). A length counts also when a shorter one
    fails (as the passkey rule); NaN when no length passes or θ is unknown (no base RULER rows ≤ L/2).

    Returns:
        The series columns, `threshold`, `reference_length` (NaN for an absolute threshold),
        `effective_context`, `value_at_context` (m there), `n_tasks_at_context`, `shorter_failure`,
        `max_length_tested`.
    """
    keys = [c for c in SERIES_COLUMNS if c in ruler.columns]
    columns = keys + ["threshold", "reference_length", "effective_context", "value_at_context",
                      "n_tasks_at_context", "shorter_failure", "max_length_tested"]
    means = ruler_means(ruler)
    if means.empty:
        return pd.DataFrame(columns=columns)
    refs = ruler_reference(ruler, fraction, reference) if threshold is None else None
    rows = []
    for key, group in ordered_groups(means, keys):
        if refs is None:
            theta, ref_length = float(threshold), math.nan
        else:
            mine = refs
            for column in ("run", "model", "original_ctx"):
                if column in key:
                    mine = mine[mine[column].astype(str) == str(key[column])]
            theta = float(mine["threshold"].iloc[0]) if len(mine) else math.nan
            ref_length = float(mine["reference_length"].iloc[0]) if len(mine) else math.nan
        group = group.set_index("context_length").sort_index()
        effective, shorter_failure = longest_passing_length(group["mean_score"] >= theta - 1e-12)
        at = group.loc[effective] if not math.isnan(effective) else None
        rows.append({**key, "threshold": theta, "reference_length": ref_length,
                     "effective_context": effective,
                     "value_at_context": float(at["mean_score"]) if at is not None else math.nan,
                     "n_tasks_at_context": float(at["n_tasks"]) if at is not None else math.nan,
                     "shorter_failure": shorter_failure, "max_length_tested": float(group.index.max())})
    return pd.DataFrame(rows, columns=columns)

def ruler_scores(ruler: pd.DataFrame) -> pd.DataFrame:
    """ruler.csv in display order (series, then task in RULER's order, then length), numbers numeric."""
    keys = [c for c in SERIES_COLUMNS if c in ruler.columns]
    columns = keys + ["task", "context_length", "score", "n", "stderr"]
    if ruler.empty:
        return pd.DataFrame(columns=columns)
    frame = ruler.copy()
    for column in ("context_length", "score", "n", "stderr"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    parts = [group.sort_values("context_length", kind="stable")
             for _, group in ordered_groups(frame, keys + ["task"], TASK_ORDER)]
    return pd.concat(parts, ignore_index=True)[columns]

def ruler_differences(samples: pd.DataFrame, reference: str = "base", seed: int = 0,
                      n_resamples: int = BOOTSTRAP_RESAMPLES, level: float = CONFIDENCE_LEVEL) -> pd.DataFrame:
    """Per series, task and length: the RULER score difference to `reference` on the samples both have.

    Samples pair on (task, context_length, doc_id) within a run and model: lm-eval generates the
    same prompts for every method (same tokenizer, same seeds). Each task gets a row, and each
    length a pooled row (`task` = "all") over the paired samples of every task there.

    Returns:
        One row per series other than the reference, task (and "all") and length, with
        `reference`, `n` (paired samples), `difference` (mean of method − reference per-sample
        scores) and `difference_ci_low/high` (`paired_accuracy_difference_interval`, seeded).
    """
    keys = [c for c in SERIES_COLUMNS if c in samples.columns]
    columns = keys + ["task", "context_length", "reference", "n", "difference", "difference_ci_low",
                      "difference_ci_high"]
    join = [c for c in ("run", "model") if c in samples.columns] + ["task", "context_length", "doc_id"]
    paired = pair_with_reference(samples.assign(score=pd.to_numeric(samples["score"], errors="coerce")),
                                 reference, join, {"score": "ref_score"}, "sample")
    if paired is None:
        return pd.DataFrame(columns=columns)
    paired = paired.dropna(subset=["score", "ref_score"])
    if paired.empty:
        return pd.DataFrame(columns=columns)
    paired = paired.assign(doc_id=paired["doc_id"].astype(int))
    rows = []
    for key, group in ordered_groups(paired, keys + ["context_length"]):
        tasks = sorted(group["task"].unique(), key=ruler_task_sort_key)
        parts = [(task, group[group["task"] == task]) for task in tasks] + [(ALL_TASKS, group)]
        for task, part in parts:
            part = part.sort_values(["task", "doc_id"], key=lambda s: s.map(ruler_task_sort_key)
                                    if s.name == "task" else s)
            diff, low, high = paired_accuracy_difference_interval(
                part["score"].tolist(), part["ref_score"].tolist(), seed=seed, n_resamples=n_resamples, level=level)
            rows.append({**key, "task": task, "reference": reference, "n": len(part), "difference": diff,
                         "difference_ci_low": low, "difference_ci_high": high})
    return pd.DataFrame(rows, columns=columns)


def _effective_context_rows(ruler: pd.DataFrame, rules) -> pd.DataFrame:
    part = ruler_effective_context(ruler, rules.ruler_fraction, rules.ruler_threshold)
    return part.assign(criterion="ruler", data="")


def _rule_line(table: pd.DataFrame, rules) -> str:
    if rules.ruler_threshold is not None:
        return f"- RULER: the RULER mean (mean score over the tasks at ℓ) ≥ {fmt_pct(rules.ruler_threshold)} %."
    reference = method_display(REFERENCE_METHOD)
    text = (f"RULER: the RULER mean m(ℓ) (mean score over the tasks at ℓ) ≥ θ = {rules.ruler_fraction:g} · "
            f"m_{REFERENCE_METHOD}(ℓ_ref), ℓ_ref = the longest length ≤ L/2 at which {reference} "
            "has RULER scores")
    ruler = table[table["criterion"] == "ruler"]
    refs = []
    for key, group in ordered_groups(ruler, ["model", "original_ctx"]):
        first = group.iloc[0]
        where = f"{key['model']}, L = {format_number(key['original_ctx'])}"
        if pd.isna(first["threshold"]):
            refs.append(f"{where}: no {reference} RULER score at ≤ L/2, so none")
        else:
            refs.append(f"{where}: ℓ_ref = {format_number(first['reference_length'])}, "
                        f"θ = {fmt_pct(first['threshold'])} %")
    return "- " + text + (" (" + "; ".join(refs) + ")." if refs else ".")


# The RULER criterion of the effective context (one per series).
CRITERION = Criterion(
    name="ruler", label="RULER", load=load_ruler, cells=KEY_COLUMNS + ["task", "context_length"],
    evaluate=_effective_context_rows, rule_line=_rule_line,
    options=(RuleOption("ruler_fraction", RULER_FRACTION, "--ruler-fraction",
                        "RULER rule: mean score >= fraction * base's mean at the longest length <= L/2 "
                        f"(default: {RULER_FRACTION:g})", lambda v: 0 < v < math.inf, "a number > 0"),
             RuleOption("ruler_threshold", None, "--ruler-threshold",
                        "RULER rule with an absolute threshold on the mean score instead, 0-1 (default: none, "
                        "the relative rule)", lambda v: 0 < v <= 1, "in (0, 1]")),
    excludes=(("ruler_fraction", "ruler_threshold",
               "--ruler-fraction (relative to base) and --ruler-threshold (absolute) exclude each other; give one."),),
    passes="RULER mean score >= a fraction of base's (or a threshold)")
