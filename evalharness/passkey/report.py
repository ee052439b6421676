"""The passkey section of report.md: accuracy per length with its Wilson interval, the effective
passkey context, and the paired difference to each reference."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis.display import (
    fmt_interval,
    fmt_pct,
    fmt_points,
    format_number,
    markdown_table,
    plural,
    reference_display,
    varying,
)
from ..analysis.stats import BOOTSTRAP_RESAMPLES, REFERENCE_METHOD
from ..report import by_series, lengths_of, row_label, series_grid, series_id, unmatched_references
from ..results import read_table
from .analysis import PASSKEY_THRESHOLD, passkey_accuracy, passkey_differences, passkey_effective_context

REFERENCE = REFERENCE_METHOD
fmt_length = format_number
FIGURE_CAPTIONS = {"passkey": "Passkey accuracy by context length and depth."}
TABLES = ("passkey",)


def _scoring_text(passkey: pd.DataFrame) -> str:
    rules = sorted({str(v) for v in passkey["scoring"].dropna()}) if "scoring" in passkey else []
    return f" (scoring: {', '.join(rules)})" if rules else ""

def _passkey_section(passkey: pd.DataFrame, seed: int, references: Sequence[str] = (REFERENCE,)) -> list[str]:
    by_length = passkey_accuracy(passkey, by=("context_length",))
    overall = passkey_accuracy(passkey, by=())
    context = passkey_effective_context(passkey)
    keys = [c for c in by_length.columns if c in ("model", "method", "factor", "original_ctx", "scoring")]
    show = varying(by_length, ["model", "original_ctx", "scoring"])
    lengths = lengths_of(by_length)
    ns = set(by_length["n"].astype(int))
    uniform_n = len(ns) == 1

    def accuracy_text(r) -> str:
        text = fmt_pct(r["accuracy"]) + fmt_interval(r["ci_low"], r["ci_high"], fmt_pct)
        return text if uniform_n else f"{text} (n={int(r['n'])})"

    overall, context = by_series(overall, keys), by_series(context, keys)
    rows = []
    for skey, cells in series_grid(by_length, keys, lengths):
        total = overall[series_id(skey, keys)]
        effective = context[series_id(skey, keys)]["effective_context"]
        all_lengths = (fmt_pct(total["accuracy"]) + fmt_interval(total["ci_low"], total["ci_high"], fmt_pct)
                       + f" (n={int(total['n'])})")
        rows.append([row_label(skey, show)] + [accuracy_text(r) if r is not None else "—" for r in cells]
                    + ["none" if pd.isna(effective) else fmt_length(effective), all_lengths])
    n_text = f"n = {plural(ns.pop(), 'prompt')} per cell" if uniform_n else "n prompts per cell as shown"
    lines = ["## Passkey retrieval", "",
             f"- Accuracy (%): the fraction of prompts whose key was retrieved{_scoring_text(passkey)}, over "
             f"depths and trials; {n_text}.",
             "- Brackets: Wilson 95 % score interval of that fraction.",
             f"- Effective context: the longest tested length with accuracy ≥ {PASSKEY_THRESHOLD:.0%} "
             "(none: no length reaches it).", "",
             markdown_table(["method"] + [fmt_length(x) for x in lengths]
                            + ["effective context", "all lengths"], rows), ""]
    differences = {reference: passkey_differences(passkey, reference, seed=seed) for reference in references}
    for reference, table in differences.items():
        lines += _passkey_difference_table(table, reference, keys, lengths, show)
    return lines + unmatched_references(differences, "passkey")

def _passkey_difference_table(differences: pd.DataFrame, reference: str, keys: Sequence[str],
                              lengths: Sequence[float], show: Sequence[str]) -> list[str]:
    if differences.empty:
        return []
    reference = reference_display(reference)
    rows = []
    def text(r) -> str:
        if r is None:
            return "—"
        interval = fmt_interval(r["difference_ci_low"], r["difference_ci_high"], fmt_points)
        return fmt_points(r["difference"]) + (interval if r["n"] >= 2 else "")

    for skey, cells in series_grid(differences, keys, lengths):
        rows.append([row_label(skey, show)] + [text(r) for r in cells])
    return [f"Difference to {reference} on the same prompts:", "",
            f"- Difference: accuracy of the method − accuracy of {reference}, in percentage points, "
            "over the prompts both have (same length, depth, trial and seed).",
            "- Brackets: 95 % paired percentile bootstrap interval over those prompts "
            f"({BOOTSTRAP_RESAMPLES} seeded resamples).", "",
            markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]


def report_section(results_dir: Path, seed: int, references: Sequence[str]) -> list[str]:
    """The passkey section (none when the folder has no passkey rows)."""
    passkey = read_table(results_dir, "passkey")
    return [] if passkey.empty else _passkey_section(passkey, seed, references)
