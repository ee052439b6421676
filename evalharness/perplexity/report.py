"""The perplexity sections of report.md: per data set the perplexity table with its bootstrap
interval, the authors' aggregation, the paired ratio to each reference; the attention-temperature
table when the folder holds a sweep."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.display import (
    fmt_interval,
    format_number,
    markdown_table,
    number,
    ordered_groups,
    reference_display,
    varying,
)
from ..analysis.stats import BOOTSTRAP_RESAMPLES, REFERENCE_METHOD
from ..report import SERIES, lengths_of, row_label, series_grid, unmatched_references
from ..results import read_table
from .analysis import load_perplexity, perplexity_ratios, temperature_sweep

REFERENCE = REFERENCE_METHOD
fmt_length = format_number
# Captions of this package's figures, in the order report.md shows them.
FIGURE_CAPTIONS = {
    "perplexity": "Perplexity vs context window (dashed: original context L).",
    "perplexity_ratio": "Perplexity ratio to Base on the same documents vs context window, with the paired "
                        "95 % bootstrap interval (dashed: original context L).",
    "positions": "Mean NLL vs token position in the window, at the largest length (dashed: original context L).",
    "temperature": "Perplexity vs √(1/t) for several s (star: minimum; dotted: 0.1·ln(s)+1).",
}
TABLES = ("perplexity",)  # the tables report.md's first line names when the folder has them


BOS_PLACEMENT = {"every": "in every window", "first": "at the document start only"}

def fmt_ppl(value) -> str:
    """Perplexity with 2 decimals (3 significant digits from 1000 on); — when missing."""
    value = number(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if value < 1000 else f"{value:.3g}"

def _perplexity_section(ppl: pd.DataFrame, docs: pd.DataFrame, seed: int,
                        references: Sequence[str] = (REFERENCE,)) -> list[str]:
    lines = ["## Perplexity", ""]
    ppl = ppl.copy()
    for column in ("ppl", "ppl_paper", "ppl_ci_low", "ppl_ci_high", "n_docs"):
        if column in ppl:
            ppl[column] = pd.to_numeric(ppl[column], errors="coerce")
    show = varying(ppl, ["model", "original_ctx"])
    ratios = {reference: perplexity_ratios(docs, reference, seed=seed) if not docs.empty else pd.DataFrame()
              for reference in references}
    for key, block in ordered_groups(ppl, [c for c in ("dataset", "protocol", "window_bos", "stride")
                                           if c in ppl.columns]):
        lengths = lengths_of(block)
        grid = series_grid(block, SERIES, lengths)
        heading = f"### {key.get('dataset', '')}, {key.get('protocol', '')}"
        stride = key.get("stride")
        if key.get("protocol") == "sliding" and not pd.isna(stride):
            heading += f" (stride {fmt_length(stride)}, BOS {BOS_PLACEMENT.get(key.get('window_bos'), '?')})"
        docs_used = sorted({int(v) for v in block["n_docs"].dropna()}) if "n_docs" in block else []
        ctxs = sorted({int(v) for v in block["original_ctx"].dropna()}) if "original_ctx" in block else []
        n_text = (f"{docs_used[0]}" if len(docs_used) == 1 else f"{docs_used[0]}–{docs_used[-1]}"
                  if docs_used else "?")
        lines += [heading, "",
                  f"- Perplexity: token-weighted exp(Σ NLL / Σ tokens) over {n_text} document(s); "
                  "best per length in bold.",
                  "- Brackets: 95 % percentile bootstrap interval over documents "
                  f"({BOOTSTRAP_RESAMPLES} seeded resamples), shown when there are at least 2 documents."]
        if ctxs:
            lines.append("- Original context L = " + ", ".join(str(c) for c in ctxs) + ".")
        lines.append("")
        best = {}
        for j in range(len(lengths)):
            values = [cells[j]["ppl"] for _, cells in grid
                      if cells[j] is not None and np.isfinite(cells[j]["ppl"])]
            best[j] = min(values) if values and len(grid) > 1 else None
        rows = []
        for skey, cells in grid:
            row = [row_label(skey, show)]
            for j, r in enumerate(cells):
                if r is None:
                    row.append("—")
                    continue
                text = fmt_ppl(r["ppl"])
                if best[j] is not None and r["ppl"] == best[j]:
                    text = f"**{text}**"
                if number(r.get("n_docs")) >= 2:
                    text += fmt_interval(r.get("ppl_ci_low"), r.get("ppl_ci_high"), fmt_ppl)
                row.append(text)
            rows.append(row)
        lines += [markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]
        if "ppl_paper" in block and block["ppl_paper"].notna().any():
            lines += ["The authors' aggregation (`ppl_paper`: exp of the mean over all windows of all documents "
                      "of each window's mean NLL):", ""]
            rows = [[row_label(skey, show)] + [fmt_ppl(r["ppl_paper"]) if r is not None else "—"
                                                for r in cells] for skey, cells in grid]
            lines += [markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]
        for reference, table in ratios.items():
            lines += _ratio_table(table, key, lengths, show, reference)
    return lines + unmatched_references(ratios, "perplexity")

def _ratio_table(ratios: pd.DataFrame, block_key: dict, lengths: Sequence[float],
                 show: Sequence[str], reference: str = REFERENCE) -> list[str]:
    if ratios.empty:
        return []
    mask = np.ones(len(ratios), dtype=bool)
    for column, value in block_key.items():
        if pd.isna(value):
            mask &= ratios[column].isna().to_numpy()
        else:
            mask &= (ratios[column].astype(str) == str(value)).to_numpy()
    part = ratios[mask]
    if part.empty:
        return []
    reference = reference_display(reference)
    rows = []
    for skey, cells in series_grid(part, SERIES, lengths):
        row = [row_label(skey, show)]
        for r in cells:
            if r is None:
                row.append("—")
                continue
            text = f"{r['ratio']:.3f}"
            if r["n_docs"] >= 2:
                text += fmt_interval(r["ratio_ci_low"], r["ratio_ci_high"], lambda v: f"{v:.3f}")
            row.append(text)
        rows.append(row)
    return [f"Ratio to {reference} on the same documents:", "",
            f"- Ratio: perplexity of the method / perplexity of {reference}, both token-weighted over the "
            f"documents both have (< 1: better than {reference}).",
            "- Brackets: 95 % paired percentile bootstrap interval over those documents "
            f"({BOOTSTRAP_RESAMPLES} seeded resamples), shown when there are at least 2.", "",
            markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]

def _temperature_section(ppl: pd.DataFrame) -> list[str]:
    length, curves = temperature_sweep(ppl)
    if curves.empty or curves.groupby(["dataset", "protocol", "factor", "variant"]).size().max() < 2:
        return []
    keys = [c for c in ("run", "model", "dataset", "protocol", "factor", "variant") if c in curves.columns]
    rows = []
    for key, curve in ordered_groups(curves, keys):
        best = curve[curve["best"]].iloc[0]
        at_formula = curve[np.isclose(curve["sqrt_inv_t"], curve["formula"])]
        label = f"s={format_number(key['factor'])}"
        if key["variant"] != "yarn":
            label += " (" + key["variant"].split(":", 1)[1] + ")"
        rows.append([f"{key['dataset']}, {key['protocol']}", label, f"{best['formula']:.3f}",
                     f"{best['sqrt_inv_t']:.3g}", fmt_ppl(best["value"]),
                     fmt_ppl(at_formula["value"].iloc[0]) if len(at_formula) else "—"])
    return ["## Attention temperature", "",
            f"- Perplexity of static YaRN at {fmt_length(length)} tokens against √(1/t), the factor on cos "
            "and sin; best: the √(1/t) with the lowest perplexity among those run.",
            "- Formula: the paper's 0.1·ln(s)+1 (— when no run used it).", "",
            markdown_table(["data", "s", "formula", "best √(1/t)", "ppl at best", "ppl at formula"], rows,
                           align=["l", "l", "r", "r", "r", "r"]), ""]


def report_section(results_dir: Path, seed: int, references: Sequence[str]) -> list[str]:
    """The perplexity and attention-temperature sections (none when the folder has no perplexity rows)."""
    ppl = load_perplexity(results_dir)
    if ppl.empty:
        return []
    return (_perplexity_section(ppl, read_table(results_dir, "perplexity_docs"), seed, references)
            + _temperature_section(ppl))
