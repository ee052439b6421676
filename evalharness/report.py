"""A one-page markdown report of a run folder: `<dir>/report.md`.

What ran (command, model, versions from manifest.json), the tables the paper reports (perplexity
by context length, passkey accuracy and passkey context, leaderboard scores with their mean),
failed cells, and the figures of `plots.plot_run` embedded by relative path. Built from the
folder's files only; markdown tables are formatted here (no `tabulate` needed).
"""
from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .plots import (
    load_perplexity,
    method_display,
    method_sort_key,
    passkey_accuracy,
    plot_run,
    read_table,
    task_sort_key,
)
from .results import atomic_write_text

PASSKEY_THRESHOLD = 0.8
FIGURE_CAPTIONS = {
    "perplexity": "Perplexity vs context window (dashed: original context L).",
    "temperature": "Perplexity vs √(1/t) for several s (star: minimum; dotted: 0.1·ln(s)+1).",
    "passkey": "Passkey accuracy by context length and depth.",
    "leaderboard": "Leaderboard tasks (base hatched, dashed base level).",
}
FIGURE_ORDER = ["perplexity", "temperature", "passkey", "leaderboard"]


# ---------------------------------------------------------------------------------------------
# Markdown helpers
# ---------------------------------------------------------------------------------------------

def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(headers: Sequence, rows: Sequence[Sequence], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column: `l`, `r` or `c` (default: first left, rest right)."""
    headers = [_cell(h) for h in headers]
    align = list(align) if align is not None else ["l"] + ["r"] * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [_cell(v) for v in row] + [""] * (len(headers) - len(row))
        lines.append("| " + " | ".join(cells[: len(headers)]) + " |")
    return "\n".join(lines)


def fmt_ppl(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if value < 1000 else f"{value:.3g}"


def fmt_pct(value, digits: int = 1) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(value) else f"{100 * value:.{digits}f}"


def fmt_length(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _series_keys(frame: pd.DataFrame) -> list[str]:
    return [c for c in ("model", "method", "factor", "original_ctx") if c in frame.columns]


def _row_label(key: dict, show_model: bool, show_ctx: bool) -> str:
    label = method_display(key["method"], key.get("factor"))
    if show_ctx and "original_ctx" in key:
        label += f" (L={fmt_length(key['original_ctx'])})"
    if show_model:
        label = f"{key['model']}: {label}"
    return label


def _sorted_series(frame: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    keys = _series_keys(frame)
    out = []
    for values, group in frame.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(keys, values)), group))
    out.sort(key=lambda kg: (str(kg[0].get("model", "")),) + method_sort_key(kg[0]["method"], kg[0].get("factor"))
             + (float(kg[0].get("original_ctx", 0) or 0),))
    return out


def _varies(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and frame[column].nunique(dropna=False) > 1


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _run_section(manifest: dict) -> list[str]:
    lines = ["## Run", ""]
    runs = manifest.get("runs", [])
    if not runs:
        return lines + ["No manifest runs recorded.", ""]
    for i, run in enumerate(runs, 1):
        if len(runs) > 1:
            lines += [f"### Invocation {i}", ""]
        command = run.get("command")
        if command:
            text = shlex.join(str(c) for c in command) if isinstance(command, list) else str(command)
            lines += ["```", f"python {text}" if text.startswith("run_eval.py") else text, "```", ""]
        status = run.get("status") or ("running or interrupted" if not run.get("end") else "finished")
        lines.append(f"- Started {run.get('start', '?')}, ended {run.get('end') or '—'} ({status})")
        info = run.get("model_info") or {}
        if info:
            bits = [f"{k}={info[k]}" for k in ("architecture", "native_ctx", "rope_theta", "rotary_dim",
                                                "num_layers", "vocab_size", "dtype", "device") if k in info]
            lines.append(f"- Model **{info.get('name', '?')}**: " + ", ".join(bits))
        specs = run.get("specs")
        if specs:
            lines.append("- Methods: " + ", ".join(f"`{s}`" for s in specs))
        docs = run.get("documents")
        if docs:
            shown = ", ".join(f"{d[0]} ({d[1]} tokens)" if isinstance(d, (list, tuple)) and len(d) == 2 else str(d)
                              for d in docs[:10])
            more = f" and {len(docs) - 10} more" if len(docs) > 10 else ""
            lines.append(f"- Documents ({len(docs)}): {shown}{more}")
        env = run.get("environment") or {}
        if env:
            keys = ["python", "torch", "transformers", "datasets", "lm_eval", "evalharness", "device_name",
                    "cpu_threads", "platform", "git_sha"]
            bits = [f"{k} {env[k]}" for k in keys if env.get(k) is not None]
            lines.append("- Environment: " + ", ".join(bits))
        lines.append("")
    return lines


def _perplexity_section(ppl: pd.DataFrame) -> list[str]:
    lines = ["## Perplexity", ""]
    ppl = ppl.copy()
    for column in ("ppl", "ppl_window_mean", "ppl_ci_low", "ppl_ci_high"):
        if column in ppl:
            ppl[column] = pd.to_numeric(ppl[column], errors="coerce")
    show_model, show_ctx = _varies(ppl, "model"), _varies(ppl, "original_ctx")
    group_columns = [c for c in ("dataset", "protocol", "stride") if c in ppl.columns]
    for values, block in ppl.groupby(group_columns, sort=True, dropna=False):
        key = dict(zip(group_columns, values if isinstance(values, tuple) else (values,)))
        lengths = sorted({float(v) for v in block["context_length"]})
        series = _sorted_series(block)
        heading = f"### {key.get('dataset', '')}, {key.get('protocol', '')}"
        stride = key.get("stride")
        if key.get("protocol") == "sliding" and stride is not None and not pd.isna(stride):
            heading += f" (stride {fmt_length(stride)})"
        lines += [heading, ""]
        docs = sorted({int(v) for v in block["n_docs"].dropna()}) if "n_docs" in block else []
        ctxs = sorted({int(v) for v in block["original_ctx"].dropna()}) if "original_ctx" in block else []
        note = ("Token-weighted perplexity exp(Σ nll / Σ tokens) over "
                + (f"{docs[0]}" if len(docs) == 1 else f"{docs[0]}–{docs[-1]}" if docs else "?")
                + " document(s); best per length in bold.")
        if ctxs:
            note += " Original context L = " + ", ".join(str(c) for c in ctxs) + "."
        lines += [note, ""]

        def table(column: str, fmt, bold: bool) -> str:
            headers = ["method"] + [fmt_length(x) for x in lengths]
            grid = []
            for skey, group in series:
                by_length = {float(r["context_length"]): r for r in group.to_dict("records")}
                grid.append((skey, [by_length.get(x) for x in lengths]))
            best = {}
            if bold:
                for j, _ in enumerate(lengths):
                    vals = [r[column] for _, cells in grid for r in [cells[j]] if r is not None
                            and np.isfinite(r[column])]
                    best[j] = min(vals) if vals else None
            rows = []
            for skey, cells in grid:
                out = [_row_label(skey, show_model, show_ctx)]
                for j, r in enumerate(cells):
                    text = fmt(r) if r is not None else "—"
                    if bold and r is not None and best.get(j) is not None and r[column] == best[j] and len(grid) > 1:
                        text = f"**{text}**"
                    out.append(text)
                rows.append(out)
            return markdown_table(headers, rows)

        lines += [table("ppl", lambda r: fmt_ppl(r["ppl"]), bold=True), ""]
        if "ppl_window_mean" in block:
            lines += ["The authors' averaging (`ppl_window_mean`: mean over documents of exp(mean of the "
                      "window mean losses)):", ""]
            lines += [table("ppl_window_mean", lambda r: fmt_ppl(r["ppl_window_mean"]), bold=False), ""]
        if {"ppl_ci_low", "ppl_ci_high"} <= set(block.columns):
            lines += ["95% bootstrap interval of the token-weighted perplexity (resampling documents):", ""]
            lines += [table("ppl", lambda r: f"{fmt_ppl(r['ppl_ci_low'])}–{fmt_ppl(r['ppl_ci_high'])}",
                            bold=False), ""]
    return lines


def passkey_summary(passkey: pd.DataFrame, threshold: float = PASSKEY_THRESHOLD) -> pd.DataFrame:
    """Per series: accuracy per context length (mean of `correct` over depths and trials), the
    passkey context (largest length with accuracy ≥ threshold, NaN if none) and the accuracy over
    all trials at lengths ≤ that context. Columns: key columns, `context_length`, `accuracy`,
    `trials`, `passkey_context`, `passkey_accuracy`."""
    acc = passkey_accuracy(passkey, by=("context_length",))
    keys = [c for c in ("model", "method", "factor", "original_ctx") if c in acc.columns]
    frames = []
    for _, group in acc.groupby(keys, dropna=False, sort=False):
        passing = group.loc[group["accuracy"] >= threshold - 1e-12, "context_length"]
        context = float(passing.max()) if len(passing) else float("nan")
        within = group[group["context_length"] <= context]
        weighted = (float((within["accuracy"] * within["trials"]).sum() / within["trials"].sum())
                    if len(within) else float("nan"))
        frames.append(group.assign(passkey_context=context, passkey_accuracy=weighted))
    return pd.concat(frames, ignore_index=True) if frames else acc


def _passkey_section(passkey: pd.DataFrame) -> list[str]:
    summary = passkey_summary(passkey)
    lengths = sorted({float(v) for v in summary["context_length"]})
    show_model, show_ctx = _varies(summary, "model"), _varies(summary, "original_ctx")
    headers = ["method"] + [fmt_length(x) for x in lengths] + ["passkey context", "accuracy ≤ context"]
    rows = []
    for skey, group in _sorted_series(summary):
        by_length = dict(zip(group["context_length"].astype(float), group["accuracy"]))
        context = group["passkey_context"].iloc[0]
        rows.append([_row_label(skey, show_model, show_ctx)] + [fmt_pct(by_length.get(x)) for x in lengths]
                    + ["none" if pd.isna(context) else fmt_length(context), fmt_pct(group["passkey_accuracy"].iloc[0])])
    trials = passkey.groupby(["context_length"]).size()
    return ["## Passkey retrieval", "",
            f"Accuracy (%) per context length, over depths and trials ({int(trials.min())}–{int(trials.max())} "
            "prompts per length and method). Passkey context = the largest length with accuracy ≥ "
            f"{int(PASSKEY_THRESHOLD * 100)}%; last column: accuracy over all prompts up to it.", "",
            markdown_table(headers, rows), ""]


def leaderboard_summary(leaderboard: pd.DataFrame) -> tuple[list[tuple[str, str]], list[tuple[dict, dict, float]]]:
    """(task, metric) columns in paper order; per series the {(task, metric): row} and the
    unweighted mean of the values over the tasks it has."""
    frame = leaderboard.copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    columns = sorted({(t, m) for t, m in zip(frame["task"], frame["metric"])},
                     key=lambda tm: task_sort_key(tm[0]) + (tm[1],))
    out = []
    for skey, group in _sorted_series(frame):
        cells = {(r["task"], r["metric"]): r for r in group.to_dict("records")}
        values = [cells[c]["value"] for c in columns if c in cells and not pd.isna(cells[c]["value"])]
        out.append((skey, cells, float(np.mean(values)) if values else float("nan")))
    return columns, out


def _leaderboard_section(leaderboard: pd.DataFrame) -> list[str]:
    columns, series = leaderboard_summary(leaderboard)
    show_model, show_ctx = _varies(leaderboard, "model"), _varies(leaderboard, "original_ctx")
    headers = ["method"] + [f"{t} ({m})" for t, m in columns] + ["mean"]
    rows = []
    incomplete = False
    for skey, cells, mean in series:
        row = [_row_label(skey, show_model, show_ctx)]
        for column in columns:
            r = cells.get(column)
            if r is None:
                row.append("—")
                incomplete = True
                continue
            text = fmt_pct(r["value"])
            stderr = pd.to_numeric(pd.Series([r.get("stderr")]), errors="coerce").iloc[0]
            if not pd.isna(stderr):
                text += f" ± {fmt_pct(stderr)}"
            row.append(text)
        row.append(fmt_pct(mean))
        rows.append(row)
    note = "Scores (%) ± stderr; mean = unweighted mean over the tasks"
    note += " a method has (— = missing)." if incomplete else "."
    return ["## Leaderboard", "", note, "", markdown_table(headers, rows), ""]


def _cells_section(manifest: dict) -> list[str]:
    cells = manifest.get("cells", {}) or {}
    if not cells:
        return []
    counts: dict[str, int] = {}
    for entry in cells.values():
        counts[entry.get("status", "?")] = counts.get(entry.get("status", "?"), 0) + 1
    lines = ["## Cells", "", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ".", ""]
    failed = {k: v for k, v in cells.items() if v.get("status") == "failed"}
    if failed:
        lines += ["Failed cells:", ""]
        for name, entry in sorted(failed.items()):
            error = str(entry.get("error") or "").strip()
            first = error.splitlines()[-1] if error else "(no error text)"
            lines.append(f"- `{name}`: {_cell(first)[:500]}")
        lines.append("")
    return lines


def _figures_section(results_dir: Path) -> list[str]:
    folder = results_dir / "figures"
    if not folder.is_dir():
        return []
    pngs = sorted(folder.glob("*.png"), key=lambda p: (FIGURE_ORDER.index(p.stem) if p.stem in FIGURE_ORDER
                                                       else len(FIGURE_ORDER), p.name))
    if not pngs:
        return []
    lines = ["## Figures", ""]
    for png in pngs:
        caption = FIGURE_CAPTIONS.get(png.stem, png.stem)
        lines += [f"![{caption}](figures/{png.name})", "", f"*{caption}* (PDF: `figures/{png.stem}.pdf`)", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def build_report(results_dir: str | os.PathLike) -> str:
    """The markdown text of the report (without writing figures)."""
    results_dir = Path(results_dir)
    manifest_path = results_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    lines = [f"# Report: {results_dir.name}", ""]
    lines += _run_section(manifest)
    ppl = load_perplexity(results_dir)
    if not ppl.empty:
        lines += _perplexity_section(ppl)
    passkey = read_table(results_dir, "passkey")
    if not passkey.empty:
        lines += _passkey_section(passkey)
    leaderboard = read_table(results_dir, "leaderboard")
    if not leaderboard.empty:
        lines += _leaderboard_section(leaderboard)
    lines += _cells_section(manifest)
    lines += _figures_section(results_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: str | os.PathLike, figures: bool = True) -> Path:
    """Write `<dir>/report.md` (and, with `figures=True`, the figures of `plot_run` first so the
    report embeds current ones). Returns the report's path."""
    results_dir = Path(results_dir)
    if figures:
        plot_run(results_dir)
    path = results_dir / "report.md"
    atomic_write_text(path, build_report(results_dir))
    return path


__all__ = ["write_report", "build_report", "markdown_table", "passkey_summary", "leaderboard_summary"]
