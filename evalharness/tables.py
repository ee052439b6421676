"""Summaries of result tables: the one place that aggregates results.

Pure pandas, numpy and the standard library (no torch, no matplotlib): `plots.py` draws these
frames, `report.py` prints them, notebooks and the CLI summary show them. Tables are read
through `results.ResultStore.read`.

Each rule has one definition here:

- Perplexity of a group of documents: token-weighted exp(Σ NLL / Σ tokens); its 95 % interval is a
  seeded percentile bootstrap over documents (`bootstrap_ppl_interval`).
- Passkey accuracy: the fraction of prompts whose key was retrieved, with `n` prompts and a Wilson
  95 % score interval (`wilson_interval`).
- Effective passkey context: the longest tested length whose accuracy is ≥ `PASSKEY_THRESHOLD`
  (80 %); NaN (shown as "none") when no length reaches it.
- Effective context by criterion (`effective_context`): the longest tested length ℓ that passes,
  also after a failing shorter one (`longest_passing_length`, the passkey definition). Perplexity:
  ppl(ℓ) ≤ (1 + τ)·min_{ℓ' ≤ L} ppl(ℓ'), τ = 0.10; passkey: accuracy ≥ 80 %; RULER: the mean score
  over the tasks at ℓ ≥ 85 % of base's mean at ℓ_ref, the longest base length ≤ L/2
  (`EffectiveContextRules` holds the thresholds).
- Paired comparisons (methods run on the same documents / prompts): percentile bootstrap over the
  shared documents of the perplexity ratio method / reference, and over the shared prompts of the
  accuracy difference method − reference (`paired_ppl_ratio_interval`,
  `paired_accuracy_difference_interval`).
- Leaderboard: values as lm-eval reports them, the unweighted mean over the tasks a method has,
  deltas against a reference method.

Every resampling takes a seed; the same inputs and seed give the same interval.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from .method_facts import METHOD_FACTS, native_display, yarn_mscale
from .results import KEY_COLUMNS, SCHEMAS, ResultStore

PASSKEY_THRESHOLD = 0.8
# A passkey `scoring` value that names another series, in words (rows decoded on a re-rotated cache).
SCORING_WORDS = {"paper-rerotate": "re-rotated KV cache"}
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000

TASK_NAMES = {
    "arc_challenge": "ARC-c",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA",
}
TASK_ORDER = list(TASK_NAMES)
METHOD_ORDER = list(METHOD_FACTS)

# Columns that tell series apart, in the order they are shown: the run folder (notebooks add it),
# then the common key columns of every table.
SERIES_COLUMNS = ["run"] + KEY_COLUMNS
# Columns that identify one passkey prompt across methods (pairs for the paired comparison).
PROMPT_COLUMNS = ["context_length", "depth", "trial", "seed", "scoring"]
# Columns that identify one document's perplexity cell across methods.
DOCUMENT_COLUMNS = ["dataset", "protocol", "stride", "context_length", "doc_id"]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_table(results_dir: str | os.PathLike, table: str) -> pd.DataFrame:
    """Reads `<dir>/<table>.csv` through `ResultStore.read`.

    Returns:
        The table, or an empty frame with the schema's columns when the file is missing or
        unreadable (summaries and figures never fail a run).
    """
    try:
        return ResultStore(results_dir).read(table)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return pd.DataFrame(columns=SCHEMAS.get(table, []))


def load_perplexity(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Returns perplexity.csv, or the aggregate of perplexity_docs.csv when only that exists or
    when perplexity.csv predates `ppl_paper` (an older folder)."""
    frame = read_table(results_dir, "perplexity")
    if frame.empty or "ppl_paper" not in frame.columns:
        docs = read_table(results_dir, "perplexity_docs")
        if not docs.empty:
            frame = aggregate_perplexity(docs)
    return frame


# ---------------------------------------------------------------------------------------------
# Labels and display order
# ---------------------------------------------------------------------------------------------

def split_label(label: str) -> tuple[str, dict[str, str]]:
    """Splits a `method` column value into name and options.

    `yarn:attention_factor=1.1:truncate=false` → ("yarn", {"attention_factor": "1.1", ...}).
    """
    parts = [p.strip() for p in str(label).split(":")]
    options = {}
    for item in parts[1:]:
        key, sep, value = item.partition("=")
        if sep:
            options[key.strip()] = value.strip()
    return parts[0], options


def format_number(value) -> str:
    """`2.0` → `2`, `2.5` → `2.5`."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def is_missing(value) -> bool:
    """True for None and NaN (numbers or numeric text); False for anything else."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def method_display(method: str, factor=None) -> str:
    """The label of a (method, factor) series: `YaRN s=2`, `Dynamic-YaRN`, `Base`,
    `YaRN s=2 (attention_factor=1.1)`. Unknown methods keep their name (with s unless it is 1)."""
    name, options = split_label(method)
    if name == "native":  # the model's shipped RoPE: `native (yarn s=16)`
        return native_display(options.get("rope_type"), 1.0 if is_missing(factor) else factor)
    facts = METHOD_FACTS.get(name)
    text = facts.display if facts else name
    if not is_missing(factor):
        if (facts.uses_factor if facts else float(factor) != 1.0):
            text += f" s={format_number(factor)}"
    if options:
        text += " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    return text


def method_sort_key(method: str, factor=None) -> tuple:
    """Registry order (base, PI, NTK, NTK-by-parts, YaRN, dynamic variants), unknown methods last;
    then by factor; plain labels before labels with options."""
    name, options = split_label(method)
    rank = METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER)
    f = 0.0 if is_missing(factor) else float(factor)
    return (rank, name, f, len(options), str(method))


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` in the registry's method order with a `spec` column holding each series' display label."""
    order = sorted(range(len(frame)), key=lambda i: method_sort_key(frame["method"].iloc[i], frame["factor"].iloc[i]))
    frame = frame.iloc[order]
    return frame.assign(spec=[method_display(m, f) for m, f in zip(frame["method"], frame["factor"])])


def task_sort_key(task: str) -> tuple:
    """The paper's Table 3 order (ARC-c, HellaSwag, MMLU, TruthfulQA; offline `_local` mirrors
    with their task), other tasks after it."""
    name = str(task).removesuffix("_local")
    return (TASK_ORDER.index(name) if name in TASK_ORDER else len(TASK_ORDER), str(task))


def task_display(task: str) -> str:
    """`arc_challenge` → `ARC-c`, `arc_challenge_local` → `ARC-c (local)`; others unchanged."""
    name = str(task)
    local = name.endswith("_local") and name.removesuffix("_local") in TASK_NAMES
    name = name.removesuffix("_local") if local else name
    return TASK_NAMES.get(name, name) + (" (local)" if local else "")


def _value_key(value) -> tuple:
    """Numbers in numeric order before text in text order; missing values last."""
    if is_missing(value):
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def ordered_groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Groups of `frame` by the `keys` it has, in display order.

    Order: run and model as text, then the method (`method_sort_key`, which includes the factor),
    the original context, then the other keys in the given order (numbers numerically; a `task` in
    RULER's task order, `ruler_task_sort_key`, other tasks by name).
    """
    keys = [c for c in keys if c in frame.columns]
    if not keys:
        return [({}, frame)]
    groups = []
    for values, group in frame.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        groups.append((dict(zip(keys, values)), group))
    series = ("run", "model", "method", "factor", "original_ctx")

    def order(item):
        key = item[0]
        leading = tuple(str(key[c]) for c in ("run", "model") if c in key)
        method = method_sort_key(key["method"], key.get("factor")) if "method" in key else ()
        ctx = (_value_key(key["original_ctx"]),) if "original_ctx" in key else ()
        rest = tuple(ruler_task_sort_key(key[c]) if c == "task" else _value_key(key[c])
                     for c in keys if c not in series)
        return leading + method + ctx + rest

    return sorted(groups, key=order)


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns of `frame` (among `columns`) that take more than one value."""
    return [c for c in columns if c in frame.columns and frame[c].nunique(dropna=False) > 1]


def pivot_by_length(frame: pd.DataFrame, value: str, keys: Sequence[str] = SERIES_COLUMNS) -> pd.DataFrame:
    """`value` with one row per series (`keys`, display order) and one column per context length.

    Rows with the same series and length are averaged (there is one per cell in a result table).
    """
    keys = [c for c in keys if c in frame.columns]
    lengths = sorted({float(v) for v in frame["context_length"]})
    rows, index = [], []
    for key, group in ordered_groups(frame, keys):
        values = pd.to_numeric(group[value], errors="coerce")
        values = values.groupby(group["context_length"].astype(float)).mean()
        rows.append([values.get(x, np.nan) for x in lengths])
        index.append(tuple(key[c] for c in keys))
    names = keys if keys else ["series"]
    out = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=names) if index else None,
                       columns=[int(x) if x.is_integer() else x for x in lengths], dtype=float)
    out.columns.name = "context_length"
    return out


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def _resampled_indices(n: int, n_resamples: int, seed: int) -> Iterator[list[int]]:
    """`n_resamples` draws of n indices in [0, n) with replacement, from `random.Random(seed)`."""
    rng = random.Random(seed)
    for _ in range(n_resamples):
        yield [rng.randrange(n) for _ in range(n)]


def _percentile_interval(values: list[float], level: float) -> tuple[float, float]:
    """The (1−level)/2 and (1+level)/2 order statistics of the resampled values (index floor /
    ceil of q·(B−1), no interpolation)."""
    values = sorted(values)
    tail = (1 - level) / 2
    low = values[int(math.floor(tail * (len(values) - 1)))]
    high = values[int(math.ceil((1 - tail) * (len(values) - 1)))]
    return low, high


def bootstrap_ppl_interval(nll_sums: Sequence[float], tokens: Sequence[int], seed: int,
                           n_resamples: int = BOOTSTRAP_RESAMPLES,
                           level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap over documents of the token-weighted perplexity.

    Resamples documents with replacement (seeded) and recomputes exp(Σ nll / Σ tokens) for each
    resample. One document gives the degenerate interval (ppl, ppl).
    """
    n = len(nll_sums)
    if n == 1:
        value = math.exp(nll_sums[0] / tokens[0])
        return value, value
    values = [math.exp(sum(nll_sums[i] for i in picks) / sum(tokens[i] for i in picks))
              for picks in _resampled_indices(n, n_resamples, seed)]
    return _percentile_interval(values, level)


def wilson_interval(successes: int, n: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion p̂ = k/n (Wilson 1927).

    (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z the (1+level)/2 normal quantile
    (1.96 for 95 %). (NaN, NaN) when n = 0.
    """
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not ±1 ulp
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def paired_ppl_ratio_interval(nll_sums: Sequence[float], tokens: Sequence[int],
                              reference_nll_sums: Sequence[float], reference_tokens: Sequence[int],
                              seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                              level: float = CONFIDENCE_LEVEL) -> tuple[float, float, float]:
    """Perplexity ratio method / reference on the same documents, with a paired bootstrap CI.

    Position i of each sequence is the same document. Each resample draws document indices with
    replacement (seeded, as `bootstrap_ppl_interval`) and takes the ratio of the two token-weighted
    perplexities exp(Σ nll / Σ tokens) over the same drawn documents, so the documents' shared
    difficulty cancels. Returns (ratio, low, high); one document gives (ratio, ratio, ratio).
    """
    n = len(nll_sums)
    if not n == len(tokens) == len(reference_nll_sums) == len(reference_tokens):
        raise ValueError(f"paired sequences differ in length: {n}, {len(tokens)}, "
                         f"{len(reference_nll_sums)}, {len(reference_tokens)}.")
    if n == 0:
        return math.nan, math.nan, math.nan

    def ratio(picks) -> float:
        mine = sum(nll_sums[i] for i in picks) / sum(tokens[i] for i in picks)
        theirs = sum(reference_nll_sums[i] for i in picks) / sum(reference_tokens[i] for i in picks)
        return math.exp(mine - theirs)

    value = ratio(range(n))
    if n == 1:
        return value, value, value
    low, high = _percentile_interval([ratio(p) for p in _resampled_indices(n, n_resamples, seed)], level)
    return value, low, high


def paired_accuracy_difference_interval(correct: Sequence[float], reference_correct: Sequence[float],
                                        seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                                        level: float = CONFIDENCE_LEVEL) -> tuple[float, float, float]:
    """Accuracy difference method − reference on the same prompts, with a paired bootstrap CI.

    Position i of both sequences is the same prompt (1 = key retrieved, 0 = not). Each resample
    draws prompt indices with replacement (seeded) and takes mean(method) − mean(reference) over
    the drawn prompts. Returns (difference, low, high); one prompt gives a degenerate interval.
    """
    n = len(correct)
    if n != len(reference_correct):
        raise ValueError(f"paired sequences differ in length: {n} and {len(reference_correct)}.")
    if n == 0:
        return math.nan, math.nan, math.nan
    diffs = [float(a) - float(b) for a, b in zip(correct, reference_correct)]
    value = sum(diffs) / n
    if n == 1:
        return value, value, value
    resampled = [sum(diffs[i] for i in picks) / n for picks in _resampled_indices(n, n_resamples, seed)]
    low, high = _percentile_interval(resampled, level)
    return value, low, high


def longest_passing_length(passes: pd.Series) -> tuple[float, bool]:
    """The effective-context rule shared by every criterion: the longest tested length that passes.

    With T the tested lengths (the index of `passes`) and pass(ℓ) the criterion at ℓ:
    effective = max{ℓ ∈ T : pass(ℓ)}, NaN when no length passes. A length that passes after a failing
    shorter one counts (the paper's passkey definition).

    Returns:
        (effective, shorter_failure): shorter_failure is True when some ℓ ∈ T below the effective
        length fails (the criterion does not hold at every length up to it).
    """
    passes = passes.astype(bool)
    passing = [float(x) for x, ok in passes.items() if ok]
    if not passing:
        return math.nan, False
    effective = max(passing)
    return effective, any(float(x) < effective and not ok for x, ok in passes.items())


# ---------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------

def aggregate_perplexity(docs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """perplexity.csv from perplexity_docs.csv.

    Per (key, dataset, protocol, window_bos, length, stride): token-weighted `ppl` = exp(Σ nll /
    Σ tokens); `ppl_paper` = the authors' number, exp(mean over all windows of all documents of each
    window's mean NLL) = exp(Σ window_nll_sum / Σ n_windows) (YaRN `eval/perplexity.py`: the mean of
    every window's loss); `ppl_ci_low/high` from `bootstrap_ppl_interval` (documents sorted by id,
    `seed`).
    """
    group_columns = KEY_COLUMNS + ["dataset", "protocol", "window_bos", "context_length", "stride"]
    rows = []
    if docs.empty:
        return pd.DataFrame(columns=SCHEMAS["perplexity"])
    docs = docs.copy()
    docs["original_ctx"] = docs["original_ctx"].astype("int64")
    for key, group in docs.groupby(group_columns, sort=True, dropna=False):
        group = group.sort_values("doc_id")
        nll = group["nll_sum"].astype(float).tolist()
        tokens = group["scored_tokens"].astype(int).tolist()
        windows = group["n_windows"].astype(int).tolist()
        low, high = bootstrap_ppl_interval(nll, tokens, seed)
        row = dict(zip(group_columns, key))
        row.update(
            n_docs=len(group),
            scored_tokens=sum(tokens),
            n_windows=sum(windows),
            ppl=math.exp(sum(nll) / sum(tokens)),
            ppl_paper=math.exp(sum(group["window_nll_sum"].astype(float).tolist()) / sum(windows)),
            ppl_ci_low=low,
            ppl_ci_high=high,
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


def aggregate_positions(docs: pd.DataFrame) -> pd.DataFrame:
    """perplexity_positions.csv from perplexity_positions_docs.csv: per (key, dataset, protocol,
    window_bos, length, stride, bucket width, bucket) the documents' token counts and NLL sums added
    up, and mean_nll = nll_sum / tokens."""
    group_columns = KEY_COLUMNS + ["dataset", "protocol", "window_bos", "context_length", "stride",
                                   "bucket_width", "position_start", "position_end"]
    if docs.empty:
        return pd.DataFrame(columns=SCHEMAS["perplexity_positions"])
    docs = docs.copy()
    docs["original_ctx"] = docs["original_ctx"].astype("int64")
    frame = (docs.groupby(group_columns, sort=True, dropna=False)
             .agg(n_docs=("doc_id", "nunique"), tokens=("tokens", "sum"), nll_sum=("nll_sum", "sum"))
             .reset_index())
    frame["mean_nll"] = frame["nll_sum"] / frame["tokens"]
    return frame[SCHEMAS["perplexity_positions"]]


def parse_reference(text: str) -> tuple[str, float | None]:
    """A reference series as `method[:factor][:key=value...]` (the `--method` syntax) →
    (the `method` column value, factor or None). `yarn:2:attention_factor=1.1` →
    ("yarn:attention_factor=1.1", 2.0); `base` → ("base", None)."""
    parts = [p.strip() for p in str(text).split(":")]
    factor = None
    if len(parts) > 1 and "=" not in parts[1]:
        try:
            factor = float(parts[1])
        except ValueError:
            raise ValueError(f"reference {text!r}: {parts[1]!r} is not a factor; "
                             "write method[:factor][:key=value], e.g. yarn:2.") from None
        del parts[1]
    return ":".join(parts), factor


def reference_rows(frame: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The rows of `frame` that belong to the series `reference` (`parse_reference` syntax)."""
    label, factor = parse_reference(reference)
    chosen = frame[frame["method"].astype(str) == label]
    if factor is not None:
        chosen = chosen[np.isclose(chosen["factor"].astype(float), factor)]
    return chosen


def pair_with_reference(frame: pd.DataFrame, reference: str, join: Sequence[str], values: dict[str, str],
                        unit: str, how: str = "inner") -> pd.DataFrame | None:
    """The one pairing of every table's comparison with a reference series: the rows of every
    series other than `reference`, each joined on `join` (the unit both measured: a document, a
    prompt, a task, a sample) with the reference's columns `values` renamed (column → new name).
    None when the frame or the reference has no rows; ValueError when `reference` matches more than
    one series per unit."""
    ref = reference_rows(frame, reference)
    if frame.empty or ref.empty:
        return None
    ref_values = ref[list(join) + list(values)].rename(columns=values)
    if ref_values.duplicated(list(join)).any():
        raise ValueError(f"reference {reference!r} matches more than one series per {unit}; "
                         "name its factor or options (e.g. yarn:2).")
    ref_ids = set(map(tuple, ref[KEY_COLUMNS].astype(str).to_numpy()))
    others = frame[[tuple(r) not in ref_ids for r in frame[KEY_COLUMNS].astype(str).to_numpy()]]
    return others.merge(ref_values, on=list(join), how=how)


def perplexity_ratios(docs: pd.DataFrame, reference: str = "base", seed: int = 0,
                      n_resamples: int = BOOTSTRAP_RESAMPLES,
                      level: float = CONFIDENCE_LEVEL) -> pd.DataFrame:
    """Per series and length: perplexity ratio to `reference` on the documents both have.

    Args:
        docs: perplexity_docs rows (one per method × document × length).
        reference: the series to divide by, `method[:factor]` (see `parse_reference`).

    Returns:
        One row per (run, model, method, factor, original_ctx, dataset, protocol, stride,
        context_length) other than the reference, with `reference`, `n_docs` (documents in both),
        `ratio` and `ratio_ci_low/high` (`paired_ppl_ratio_interval`). Empty when the reference
        has no rows.
    """
    bos = ["window_bos"] if "window_bos" in docs.columns else []  # runs of each BOS placement apart
    columns = [c for c in SERIES_COLUMNS if c in docs.columns] + ["dataset", "protocol", *bos, "stride",
                                                                   "context_length", "reference", "n_docs",
                                                                   "ratio", "ratio_ci_low", "ratio_ci_high"]
    join = [c for c in ("run", "model") if c in docs.columns] + DOCUMENT_COLUMNS + bos
    paired = pair_with_reference(docs, reference, join, {"nll_sum": "ref_nll", "scored_tokens": "ref_tokens"},
                                 "document")
    if paired is None:
        return pd.DataFrame(columns=columns)
    rows = []
    group_keys = [c for c in SERIES_COLUMNS if c in paired.columns] + ["dataset", "protocol", *bos, "stride",
                                                                        "context_length"]
    for key, group in ordered_groups(paired, group_keys):
        group = group.sort_values("doc_id")
        ratio, low, high = paired_ppl_ratio_interval(
            group["nll_sum"].astype(float).tolist(), group["scored_tokens"].astype(int).tolist(),
            group["ref_nll"].astype(float).tolist(), group["ref_tokens"].astype(int).tolist(),
            seed=seed, n_resamples=n_resamples, level=level)
        rows.append({**key, "reference": reference, "n_docs": len(group), "ratio": ratio,
                     "ratio_ci_low": low, "ratio_ci_high": high})
    return pd.DataFrame(rows, columns=columns)


def temperature_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The static-YaRN rows of a perplexity frame, with their attention factor.

    Adds `sqrt_inv_t` (the label's attention_factor, or 0.1·ln(s)+1 when absent) and `variant`
    (the label without the attention factor).
    """
    empty = dict(sqrt_inv_t=pd.Series(dtype=float), variant=pd.Series(dtype=str))
    if frame.empty:
        return frame.assign(**empty)
    rows = []
    for index, row in frame.iterrows():
        name, options = split_label(row["method"])
        if name != "yarn":
            continue
        raw = options.pop("attention_factor", options.pop("mscale", None))
        try:
            x = float(raw) if raw is not None else yarn_mscale(float(row["factor"]))
        except ValueError:
            continue
        rows.append((index, x, name + "".join(f":{k}={v}" for k, v in options.items())))
    if not rows:
        return frame.iloc[0:0].assign(**empty)
    index, xs, variants = zip(*rows)
    return frame.loc[list(index)].assign(sqrt_inv_t=list(xs), variant=list(variants))


def has_temperature_sweep(frame: pd.DataFrame) -> bool:
    """True when some s has static-YaRN rows at ≥ 2 attention factors (something to sweep)."""
    rows = temperature_rows(frame)
    if rows.empty:
        return False
    return bool(rows.groupby(["factor", "variant"])["sqrt_inv_t"].nunique().ge(2).any())


def sweep_length(rows: pd.DataFrame) -> float:
    """The context length a temperature sweep is shown at: the only one, else the largest one
    every factor has, else the largest."""
    lengths = sorted({float(v) for v in rows["context_length"]})
    if len(lengths) == 1:
        return lengths[0]
    shared = None
    for _, group in rows.groupby("factor"):
        mine = {float(v) for v in group["context_length"]}
        shared = mine if shared is None else shared & mine
    return max(shared) if shared else lengths[-1]


def temperature_sweep(frame: pd.DataFrame, context_length: float | None = None,
                      value: str = "ppl") -> tuple[float, pd.DataFrame]:
    """The attention-temperature curves of a perplexity frame at one context length.

    Args:
        frame: perplexity rows; the static-YaRN ones are used (`temperature_rows`).
        context_length: the length to show; default `sweep_length` of the rows.
        value: the perplexity column.

    Returns:
        (the length, one row per curve point): run / model when present, `dataset`, `protocol`,
        `factor`, `variant`, `sqrt_inv_t`, `value` (the mean over rows with the same point),
        `formula` = 0.1·ln(s)+1 and `best` (the curve's minimum). Curves in display order, points
        by √(1/t). Non-finite values are left out.
    """
    keys = [c for c in ("run", "model") if c in frame.columns] + ["dataset", "protocol", "factor", "variant"]
    columns = keys + ["sqrt_inv_t", "value", "formula", "best"]
    rows = temperature_rows(frame)
    if not rows.empty:
        rows = rows.assign(value=pd.to_numeric(rows[value], errors="coerce"))
        rows = rows[np.isfinite(rows["value"])]
    if rows.empty:
        return (math.nan if context_length is None else float(context_length)), pd.DataFrame(columns=columns)
    length = sweep_length(rows) if context_length is None else float(context_length)
    rows = rows[rows["context_length"].astype(float) == length]
    curves = []
    for key, group in ordered_groups(rows, keys):
        points = group.groupby("sqrt_inv_t", as_index=False)["value"].mean().sort_values("sqrt_inv_t")
        points = points.assign(**key, formula=yarn_mscale(float(key["factor"])), best=False)
        points.loc[points["value"].idxmin(), "best"] = True
        curves.append(points)
    if not curves:
        return length, pd.DataFrame(columns=columns)
    return length, pd.concat(curves, ignore_index=True)[columns]


# ---------------------------------------------------------------------------------------------
# Passkey
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------------------------

def without_subtasks(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The rows of group-level tasks only: a task named `<other task in the table>_<suffix>` (an MMLU
    subject beside `mmlu_local`) is a subtask, kept in the CSV but left out of summaries."""
    tasks = set(leaderboard["task"].astype(str))
    subtask = [any(t != g and t.startswith(g + "_") for g in tasks) for t in leaderboard["task"].astype(str)]
    return leaderboard[[not s for s in subtask]]


def leaderboard_columns(leaderboard: pd.DataFrame) -> list[tuple[str, str]]:
    """The (task, metric) pairs of a leaderboard table in the paper's order."""
    return sorted({(t, m) for t, m in zip(leaderboard["task"], leaderboard["metric"])},
                  key=lambda tm: task_sort_key(tm[0]) + (tm[1],))


# Metric of a task's headline number when lm-eval reports several and the task is not one of the
# paper's (whose headline metrics are `leaderboard.protocol.PAPER_TASKS`'): the first one it has.
HEADLINE_PREFERENCE = ("acc_norm", "acc", "exact_match")


def headline_metric(task: str, metrics) -> str:
    """The one metric of `task` that its leaderboard mean counts: the paper's Table-3 metric for its
    four tasks (`_local` mirrors included: ARC-c and HellaSwag acc_norm, MMLU acc_macro, TruthfulQA
    MC2 acc), else the task's only metric, else the first of `HEADLINE_PREFERENCE` it has, else its
    first metric in sorted order."""
    from .leaderboard.protocol import PAPER_TASKS

    metrics = sorted({str(m) for m in metrics})
    paper = PAPER_TASKS.get(str(task).removesuffix("_local"))
    if paper and paper[1] in metrics:
        return paper[1]
    if len(metrics) == 1:
        return metrics[0]
    return next((m for m in HEADLINE_PREFERENCE if m in metrics), metrics[0])


def leaderboard_headline(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The rows of each series' headline numbers: group-level tasks only (`without_subtasks`), and
    of each task the one metric `headline_metric` picks (the paper's four numbers for its tasks)."""
    frame = without_subtasks(leaderboard)
    if frame.empty:
        return frame
    keys = [c for c in SERIES_COLUMNS if c in frame.columns]
    keep = pd.Series(False, index=frame.index)
    for _, group in ordered_groups(frame, keys):
        for task, rows_of_task in group.groupby("task", sort=False):
            metric = headline_metric(task, rows_of_task["metric"])
            keep[rows_of_task.index[rows_of_task["metric"] == metric]] = True
    return frame[keep]


def leaderboard_means(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Per series: `mean` = the unweighted mean over its tasks of each task's headline metric
    (`headline_metric`: one number per task, so a task reporting acc and acc_norm, or MMLU's
    acc_macro and acc_weighted, counts once) and `n_tasks` (how many tasks), in display order."""
    keys = [c for c in SERIES_COLUMNS if c in leaderboard.columns]
    rows = []
    for key, group in ordered_groups(leaderboard, keys):
        values = []
        for task, rows_of_task in group.groupby("task", sort=False):
            metric = headline_metric(task, rows_of_task["metric"])
            value = pd.to_numeric(rows_of_task.loc[rows_of_task["metric"] == metric, "value"], errors="coerce")
            values.extend(value.dropna().tolist())
        mean = float(np.mean(values)) if values else math.nan
        rows.append({**key, "mean": mean, "n_tasks": len(values)})
    return pd.DataFrame(rows, columns=keys + ["mean", "n_tasks"])


def leaderboard_deltas(leaderboard: pd.DataFrame, reference: str = "base") -> pd.DataFrame:
    """Per series other than `reference` and (task, metric): `delta` = value − the reference's
    value on the same task and metric (same run and model); NaN where the reference lacks it."""
    keys = [c for c in SERIES_COLUMNS if c in leaderboard.columns]
    columns = keys + ["task", "metric", "value", "reference", "reference_value", "delta"]
    join = [c for c in ("run", "model") if c in leaderboard.columns] + ["task", "metric"]
    out = pair_with_reference(leaderboard.assign(value=pd.to_numeric(leaderboard["value"], errors="coerce")),
                              reference, join, {"value": "reference_value"}, "task", how="left")
    if out is None:
        return pd.DataFrame(columns=columns)
    out["reference"] = reference
    out["delta"] = out["value"] - out["reference_value"]
    return out[columns].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Effective context
# ---------------------------------------------------------------------------------------------

PPL_TOLERANCE = 0.10
RULER_FRACTION = 0.85
REFERENCE_METHOD = "base"
# ruler.csv as ruler.py writes it: one row per series × RULER task × length (score in [0, 1]).
RULER_COLUMNS = KEY_COLUMNS + ["task", "context_length", "score", "n", "stderr"]
# Columns of perplexity.csv that tell perplexity data apart: one effective context per series and data.
PERPLEXITY_DATA_COLUMNS = ["dataset", "protocol", "window_bos", "stride"]
# The cells of the tables the effective context reads; a cell found in several run folders is taken
# from the first folder given.
EFFECTIVE_CONTEXT_CELLS = {
    "perplexity": KEY_COLUMNS + PERPLEXITY_DATA_COLUMNS + ["context_length"],
    "passkey": KEY_COLUMNS + PROMPT_COLUMNS,
    "ruler": KEY_COLUMNS + ["task", "context_length"],
}
CRITERIA = ("perplexity", "passkey", "ruler")
EFFECTIVE_CONTEXT_COLUMNS = KEY_COLUMNS + ["criterion", "data", "threshold", "reference_length",
                                           "effective_context", "value_at_context", "shorter_failure",
                                           "max_length_tested"]


@dataclass(frozen=True)
class EffectiveContextRules:
    """The thresholds of the three effective-context criteria (the command-line options).

    Attributes:
        ppl_tolerance: τ in ppl(ℓ) ≤ (1 + τ) · min_{ℓ' ≤ L} ppl(ℓ') (`--ppl-tolerance`).
        passkey_threshold: the minimum passkey accuracy (`--passkey-threshold`).
        ruler_fraction: f in m(ℓ) ≥ f · m_base(ℓ_ref) (`--ruler-fraction`).
        ruler_threshold: an absolute threshold on the RULER mean instead of f · m_base(ℓ_ref)
            (`--ruler-threshold`; None: the fraction of base).
    """

    ppl_tolerance: float = PPL_TOLERANCE
    passkey_threshold: float = PASSKEY_THRESHOLD
    ruler_fraction: float = RULER_FRACTION
    ruler_threshold: float | None = None


def load_ruler(results_dir: str | os.PathLike) -> pd.DataFrame:
    """ruler.csv of a run folder (`RULER_COLUMNS`), or an empty frame with those columns when the
    folder has none."""
    if not (Path(results_dir) / "ruler.csv").exists():
        return pd.DataFrame(columns=RULER_COLUMNS)
    if "ruler" in SCHEMAS:
        return read_table(results_dir, "ruler")
    return pd.read_csv(Path(results_dir) / "ruler.csv")  # before results.py knows the table


def load_effective_context_tables(folders: Sequence[str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """The perplexity (aggregated), passkey and RULER tables of several run folders, each the
    concatenation over the folders; a cell (`EFFECTIVE_CONTEXT_CELLS`) found in more than one folder
    is taken from the first folder given. Series of different folders are the same series when their
    model, method, factor and original_ctx are equal."""
    readers = {"perplexity": load_perplexity, "passkey": lambda d: read_table(d, "passkey"),
               "ruler": load_ruler}
    out = {}
    for table, read in readers.items():
        frames = [frame for frame in (read(folder) for folder in folders) if not frame.empty]
        if not frames:
            out[table] = read(folders[0]) if folders else pd.DataFrame()
            continue
        frame = pd.concat(frames, ignore_index=True)
        cells = [c for c in EFFECTIVE_CONTEXT_CELLS[table] if c in frame.columns]
        out[table] = frame[~frame[cells].astype(str).duplicated(keep="first")].reset_index(drop=True)
    return out


def perplexity_data_label(key: dict) -> str:
    """The perplexity data of a row: `coq-stdlib, truncated`; `govreport, sliding (stride 256)`,
    with `, BOS first` when the sliding windows have BOS only at the document start."""
    text = f"{key.get('dataset', '?')}, {key.get('protocol', '?')}"
    if key.get("protocol") == "sliding":
        bos = key.get("window_bos")
        bos = "" if is_missing(bos) or bos == "every" else f", BOS {bos}"
        stride = key.get("stride")
        text += f" (stride {format_number(stride)}{bos})" if not is_missing(stride) else ""
    return text


def perplexity_effective_context(ppl: pd.DataFrame, tolerance: float = PPL_TOLERANCE,
                                 value: str = "ppl") -> pd.DataFrame:
    """The effective perplexity context of each series on each perplexity data.

    With T the tested lengths, L the series' original_ctx and ppl(ℓ) its `value` at ℓ (token-weighted
    by default):

        best = min{ppl(ℓ') : ℓ' ∈ T, ℓ' ≤ L, ppl(ℓ') finite},  θ = (1 + tolerance) · best,
        effective = max{ℓ ∈ T : ppl(ℓ) ≤ θ}   (`longest_passing_length`).

    A length counts also when a shorter one fails (as the passkey rule); a non-finite ppl fails. A
    series without a finite ppl at some length ≤ L has no reference, so no row (not measurable: a
    sliding run at 2·L only, say); otherwise best passes itself, so the result is never NaN, and
    lengths below the best one cannot change it: they are left out of `shorter_failure` (perplexity
    of a shorter window is usually higher, each token having less context, so they often fail).

    Returns:
        The series and data columns (`PERPLEXITY_DATA_COLUMNS`), `best_length`, `best`, `threshold`
        θ, `effective_context`, `value_at_context`, `shorter_failure` (a length between best_length
        and the effective context fails), `max_length_tested`.
    """
    keys = [c for c in SERIES_COLUMNS if c in ppl.columns] + [c for c in PERPLEXITY_DATA_COLUMNS
                                                               if c in ppl.columns]
    columns = keys + ["best_length", "best", "threshold", "effective_context", "value_at_context",
                      "shorter_failure", "max_length_tested"]
    rows = []
    for key, group in (ordered_groups(ppl, keys) if not ppl.empty else []):
        values = pd.to_numeric(group[value], errors="coerce").astype(float)
        values = values.groupby(group["context_length"].astype(float)).mean().sort_index()
        within = values[(values.index <= float(key["original_ctx"])) & np.isfinite(values.to_numpy())]
        if within.empty:
            continue
        best_length, best = float(within.idxmin()), float(within.min())
        threshold = (1 + tolerance) * best
        effective, shorter_failure = longest_passing_length(values[values.index >= best_length]
                                                            <= threshold * (1 + 1e-12))
        rows.append({**key, "best_length": best_length, "best": best, "threshold": threshold,
                     "effective_context": effective, "value_at_context": float(values[effective]),
                     "shorter_failure": shorter_failure, "max_length_tested": float(values.index.max())})
    return pd.DataFrame(rows, columns=columns)


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


def effective_context(perplexity: pd.DataFrame, passkey: pd.DataFrame, ruler: pd.DataFrame,
                      rules: EffectiveContextRules = EffectiveContextRules()) -> pd.DataFrame:
    """The effective context of every series by every criterion it was measured on (tidy).

    One row per series × criterion: `perplexity` (one row per perplexity data,
    `perplexity_effective_context` with `rules.ppl_tolerance`), `passkey`
    (`passkey_effective_context` with `rules.passkey_threshold`), `ruler` (`ruler_effective_context`
    with `rules.ruler_fraction` or `rules.ruler_threshold`). A criterion without rows for a series
    (not measured) has no row; a measured criterion that no length passes has effective_context NaN.

    Returns:
        `EFFECTIVE_CONTEXT_COLUMNS` (with `run` first when the inputs have it): `data` names the
        perplexity data (`perplexity_data_label`) or the passkey scoring rule when several are mixed,
        else ""; `threshold` is θ of the rule (perplexity: (1 + τ)·best; passkey: the accuracy;
        RULER: the mean score); `reference_length` is where the reference value was taken
        (perplexity: the length of best; RULER: ℓ_ref; passkey: NaN).
    """
    parts = []
    if not perplexity.empty:
        part = perplexity_effective_context(perplexity, rules.ppl_tolerance)
        parts.append(part.assign(criterion="perplexity", data=[perplexity_data_label(r) for r in
                                                               part.to_dict("records")],
                                 reference_length=part["best_length"]))
    if not passkey.empty:
        part = passkey_effective_context(passkey, rules.passkey_threshold)
        data = part["scoring"].map(lambda s: f"scoring {s}") if "scoring" in part.columns else ""
        parts.append(part.assign(criterion="passkey", data=data, threshold=rules.passkey_threshold,
                                 reference_length=math.nan, value_at_context=part["accuracy_at_context"]))
    if not ruler.empty:
        part = ruler_effective_context(ruler, rules.ruler_fraction, rules.ruler_threshold)
        parts.append(part.assign(criterion="ruler", data=""))
    run = ["run"] if any("run" in p.columns for p in parts) else []
    columns = run + EFFECTIVE_CONTEXT_COLUMNS
    parts = [p.reindex(columns=columns) for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(parts, ignore_index=True)
    ordered = ordered_groups(frame, run + KEY_COLUMNS)
    return pd.concat([group for _, group in ordered], ignore_index=True)[columns]


# ---------------------------------------------------------------------------------------------
# RULER
# ---------------------------------------------------------------------------------------------

# lm-eval's offline RULER tasks in RULER's order (retrieval, multi-hop tracing, aggregation); others after.
RULER_TASK_ORDER = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe"]
ALL_TASKS = "all"  # the `task` of pooled rows in `ruler_differences`


def ruler_task_sort_key(task: str) -> tuple:
    """The offline tasks in RULER's order, then other RULER tasks by name."""
    name = str(task)
    return (RULER_TASK_ORDER.index(name) if name in RULER_TASK_ORDER else len(RULER_TASK_ORDER), name)


def ruler_scores(ruler: pd.DataFrame) -> pd.DataFrame:
    """ruler.csv in display order (series, then task in RULER's order, then length), numbers numeric."""
    keys = [c for c in SERIES_COLUMNS if c in ruler.columns]
    columns = keys + ["task", "context_length", "score", "n", "stderr"]
    if ruler.empty:
        return pd.DataFrame(columns=columns)
    frame = ruler.copy()
    for column in ("context_length", "score", "n", "stderr"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    parts = [group.sort_values("context_length", kind="stable") for _, group in ordered_groups(frame, keys + ["task"])]
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
