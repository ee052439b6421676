"""The perplexity tables: perplexity.csv and perplexity_positions.csv from their per-document tables,
the paired ratio to a reference series, the attention-temperature curves, and the perplexity
criterion of the effective context.

- Perplexity of a group of documents: token-weighted exp(Σ NLL / Σ tokens); its 95 % interval is a
  seeded percentile bootstrap over documents (`bootstrap_ppl_interval`).
- Paired ratio: percentile bootstrap over the shared documents of the perplexity ratio method /
  reference (`paired_ppl_ratio_interval`).
- Effective context: ppl(ℓ) ≤ (1 + τ)·min_{ℓ' ≤ L} ppl(ℓ'), τ = 0.10 (`perplexity_effective_context`).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.display import SERIES_COLUMNS, format_number, is_missing, ordered_groups, split_label
from ..analysis.effective_context import Criterion, RuleOption, longest_passing_length
from ..analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE_LEVEL,
    pair_with_reference,
    percentile_interval,
    resampled_indices,
)
from ..columns import KEY_COLUMNS
from ..method_facts import yarn_mscale
from ..results import read_table
from .schema import SCHEMAS

# Columns that identify one document's perplexity cell across methods.
DOCUMENT_COLUMNS = ["dataset", "protocol", "stride", "context_length", "doc_id"]


PPL_TOLERANCE = 0.10

# Columns of perplexity.csv that tell perplexity data apart: one effective context per series and data.
PERPLEXITY_DATA_COLUMNS = ["dataset", "protocol", "window_bos", "stride"]

def load_perplexity(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Returns perplexity.csv, or the aggregate of perplexity_docs.csv when only that exists or
    when perplexity.csv predates `ppl_paper` (an older folder)."""
    frame = read_table(results_dir, "perplexity")
    if frame.empty or "ppl_paper" not in frame.columns:
        docs = read_table(results_dir, "perplexity_docs")
        if not docs.empty:
            frame = aggregate_perplexity(docs)
    return frame

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
              for picks in resampled_indices(n, n_resamples, seed)]
    return percentile_interval(values, level)

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
    low, high = percentile_interval([ratio(p) for p in resampled_indices(n, n_resamples, seed)], level)
    return value, low, high

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

def positions_intervals(docs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The 95 % interval of each perplexity_positions.csv row's `mean_nll`, from its per-document
    table: log of `bootstrap_ppl_interval` over the bucket's documents (sorted by id, `seed`), as
    mean_nll = log ppl; the row's key columns plus `mean_nll_ci_low/high`."""
    group_columns = KEY_COLUMNS + ["dataset", "protocol", "window_bos", "context_length", "stride",
                                   "bucket_width", "position_start", "position_end"]
    rows = []
    for key, group in docs.groupby(group_columns, sort=True, dropna=False):
        group = group[group["tokens"].astype(int) > 0].sort_values("doc_id")  # a bucket a document never reached
        if group.empty:
            continue
        low, high = bootstrap_ppl_interval(group["nll_sum"].astype(float).tolist(),
                                           group["tokens"].astype(int).tolist(), seed)
        rows.append(dict(zip(group_columns, key), mean_nll_ci_low=math.log(low), mean_nll_ci_high=math.log(high)))
    return pd.DataFrame(rows, columns=group_columns + ["mean_nll_ci_low", "mean_nll_ci_high"])


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


def _effective_context_rows(ppl: pd.DataFrame, rules) -> pd.DataFrame:
    part = perplexity_effective_context(ppl, rules.ppl_tolerance)
    return part.assign(criterion="perplexity", data=[perplexity_data_label(r) for r in part.to_dict("records")],
                       reference_length=part["best_length"])


def _rule_line(table: pd.DataFrame, rules) -> str:
    return (f"- Perplexity: ppl(ℓ) ≤ (1 + {rules.ppl_tolerance:g}) · min_{{ℓ' ≤ L}} ppl(ℓ'), "
            "token-weighted perplexity on that data, L = the series' original context.")


# The perplexity criterion of the effective context (one per series and perplexity data).
CRITERION = Criterion(
    name="perplexity", label="perplexity", load=load_perplexity,
    cells=KEY_COLUMNS + PERPLEXITY_DATA_COLUMNS + ["context_length"],
    evaluate=_effective_context_rows, rule_line=_rule_line,
    options=(RuleOption("ppl_tolerance", PPL_TOLERANCE, "--ppl-tolerance",
                        "perplexity rule: ppl(l) <= (1 + tolerance) * best ppl at lengths <= L "
                        f"(default: {PPL_TOLERANCE:g})", lambda v: 0 <= v < math.inf, "a number >= 0 (0.10 = 10 %)"),),
    gap_note=", for perplexity between the best length and ℓ",
    unmeasured_note=" (perplexity: also when no length ≤ L was run, which leaves no reference)",
    passes="perplexity within a tolerance of its best at <= L")
