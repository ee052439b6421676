"""Labels, display order and number formatting shared by every table, figure and report.

Pure pandas and the standard library (no torch, no matplotlib).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..columns import KEY_COLUMNS
from ..method_facts import METHOD_FACTS, OPTION_WORDS, native_display
from .stats import parse_reference

# A `scoring` value that names another series, in words (rows decoded on a re-rotated cache).
SCORING_WORDS = {"paper-rerotate": "re-rotated KV cache"}
METHOD_ORDER = list(METHOD_FACTS)


# Columns that tell series apart, in the order they are shown: the run folder (notebooks add it),
# then the common key columns of every table.
SERIES_COLUMNS = ["run"] + KEY_COLUMNS

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

def plural(n: int, word: str) -> str:
    """`1 prompt`, `3 prompts`."""
    return f"{n} {word}{'' if n == 1 else 's'}"

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
    `YaRN s=2 (attention_factor=1.1)`, `YaRN s=2, local layers too` (`OPTION_WORDS`). Unknown methods
    keep their name (with s unless it is 1)."""
    name, options = split_label(method)
    if name == "native":  # the model's shipped RoPE: `native (yarn s=16)`
        return native_display(options.get("rope_type"), 1.0 if is_missing(factor) else factor)
    facts = METHOD_FACTS.get(name)
    text = facts.display if facts else name
    if not is_missing(factor):
        if (facts.uses_factor if facts else float(factor) != 1.0):
            text += f" s={format_number(factor)}"
    words = [OPTION_WORDS[(k, str(v))] for k, v in options.items() if (k, str(v)) in OPTION_WORDS]
    rest = {k: v for k, v in options.items() if (k, str(v)) not in OPTION_WORDS}
    text += "".join(f", {w}" for w in words)
    if rest:
        text += " (" + ", ".join(f"{k}={v}" for k, v in rest.items()) + ")"
    return text

def reference_display(reference: str) -> str:
    """The label of a `--reference` series (`method[:factor]`), as `method_display` writes it."""
    method, factor = parse_reference(reference)
    return method_display(method, factor)


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

def value_key(value) -> tuple:
    """Numbers in numeric order before text in text order; missing values last."""
    if is_missing(value):
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))

def ordered_groups(frame: pd.DataFrame, keys: Sequence[str],
                   sort_keys: Mapping[str, Callable] | None = None) -> list[tuple[dict, pd.DataFrame]]:
    """Groups of `frame` by the `keys` it has, in display order.

    Order: run and model as text, then the method (`method_sort_key`, which includes the factor),
    the original context, then the other keys in the given order (numbers numerically, text by text;
    `sort_keys` gives a column its own sort key, a task's order of its subtasks say).
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
        ctx = (value_key(key["original_ctx"]),) if "original_ctx" in key else ()
        rest = tuple((sort_keys or {}).get(c, value_key)(key[c]) for c in keys if c not in series)
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


def markdown_cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

def markdown_table(headers: Sequence, rows: Sequence[Sequence], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column: `l`, `r` or `c` (default: first left, rest right)."""
    headers = [markdown_cell(h) for h in headers]
    align = list(align) if align is not None else ["l"] + ["r"] * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [markdown_cell(v) for v in row] + [""] * (len(headers) - len(row))
        lines.append("| " + " | ".join(cells[: len(headers)]) + " |")
    return "\n".join(lines)

def number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

def fmt_pct(value, digits: int = 1) -> str:
    """A fraction as a percentage without the sign; — when missing."""
    value = number(value)
    return "—" if math.isnan(value) else f"{100 * value:.{digits}f}"

def fmt_points(value, digits: int = 1) -> str:
    """A difference of fractions in signed percentage points; — when missing."""
    value = number(value)
    return "—" if math.isnan(value) else f"{100 * value:+.{digits}f}"

def fmt_interval(low, high, fmt) -> str:
    """` [low, high]` in the value's format, or nothing when either end is missing."""
    if math.isnan(number(low)) or math.isnan(number(high)):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"
