"""A one-page markdown report of a run folder: `<dir>/report.md`.

Results first: the tables the paper reports for the tasks the folder holds, each with its rules in
one sentence each (perplexity with its bootstrap interval over documents and the paired ratio to
base and each reference, passkey accuracy with its Wilson interval, n and the effective passkey
context, leaderboard scores ± lm-eval's standard error with their mean and the change from base,
RULER scores ± standard error with their mean and the paired difference to base), the effective
context per series by the criteria present (`tables.effective_context`), the figures of
`plots.plot_run` by relative path, failed cells; how it ran (commands, model, environment) last,
a resume that computed nothing in one line. The report options (`--reference`, the effective-
context thresholds) are recorded in manifest.json (`record_options`), so the folder alone rebuilds
its report. Every number comes from `tables.py`; markdown tables are formatted here.
"""
from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .plots import plot_run
from .results import Manifest, atomic_write_text, read_manifest
from .tables import (
    ALL_TASKS,
    BOOTSTRAP_RESAMPLES,
    PASSKEY_THRESHOLD,
    SCORING_WORDS,
    EffectiveContextRules,
    effective_context,
    format_number,
    is_missing,
    leaderboard_columns,
    leaderboard_deltas,
    leaderboard_means,
    load_effective_context_tables,
    load_perplexity,
    method_display,
    ordered_groups,
    parse_reference,
    passkey_accuracy,
    passkey_differences,
    passkey_effective_context,
    perplexity_ratios,
    read_table,
    ruler_differences,
    ruler_means,
    ruler_scores,
    task_display,
    temperature_sweep,
    varying,
    without_subtasks,
)

REFERENCE = "base"
FIGURE_CAPTIONS = {
    "perplexity": "Perplexity vs context window (dashed: original context L).",
    "positions": "Mean NLL vs token position in the window, at the largest length (dashed: original context L).",
    "temperature": "Perplexity vs √(1/t) for several s (star: minimum; dotted: 0.1·ln(s)+1).",
    "passkey": "Passkey accuracy by context length and depth.",
    "leaderboard": "Leaderboard tasks (base hatched, dashed base level).",
    "ruler": "RULER score by task and context length, per method (n: samples per cell).",
    "ruler_mean": "RULER mean score over tasks vs context length (dashed: original context L).",
}
FIGURE_ORDER = ["perplexity", "positions", "temperature", "passkey", "leaderboard", "ruler", "ruler_mean"]
BOS_PLACEMENT = {"every": "in every window", "first": "at the document start only"}


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


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_ppl(value) -> str:
    """Perplexity with 2 decimals (3 significant digits from 1000 on); — when missing."""
    value = _number(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if value < 1000 else f"{value:.3g}"


def fmt_pct(value, digits: int = 1) -> str:
    """A fraction as a percentage without the sign; — when missing."""
    value = _number(value)
    return "—" if math.isnan(value) else f"{100 * value:.{digits}f}"


def fmt_points(value, digits: int = 1) -> str:
    """A difference of fractions in signed percentage points; — when missing."""
    value = _number(value)
    return "—" if math.isnan(value) else f"{100 * value:+.{digits}f}"


def fmt_interval(low, high, fmt) -> str:
    """` [low, high]` in the value's format, or nothing when either end is missing."""
    if math.isnan(_number(low)) or math.isnan(_number(high)):
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


fmt_length = format_number


def _row_label(key: dict, show: Sequence[str]) -> str:
    label = method_display(key["method"], key.get("factor"))
    if key.get("scoring") in SCORING_WORDS:
        label += f", {SCORING_WORDS[key['scoring']]}"
    if "original_ctx" in show and "original_ctx" in key:
        label += f" (L={fmt_length(key['original_ctx'])})"
    prefix = [str(key[c]) for c in show if c in key and c not in ("original_ctx", "scoring")]
    return ": ".join([" / ".join(prefix), label]) if prefix else label


def _grid(frame: pd.DataFrame, keys: Sequence[str], lengths: Sequence[float]) -> list[tuple[dict, list]]:
    """Per series (display order): its row (a dict) at each length, None where it has none."""
    out = []
    for key, group in ordered_groups(frame, keys):
        by_length = {float(r["context_length"]): r for r in group.to_dict("records")}
        out.append((key, [by_length.get(x) for x in lengths]))
    return out


def _lengths(frame: pd.DataFrame) -> list[float]:
    return sorted({float(v) for v in frame["context_length"]})


SERIES = ["model", "method", "factor", "original_ctx"]


def _series_id(key: dict, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(key[c]) for c in keys)


def _by_series(frame: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[str, ...], dict]:
    """The rows of a one-row-per-series frame, by `_series_id`."""
    return {_series_id(r, keys): r for r in frame.to_dict("records")}


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _command_text(command) -> str:
    """A recorded command as a reader reruns it: `python run_eval.py ...` (the script by its name)."""
    if not isinstance(command, list):
        return str(command)
    words = [str(c) for c in command]
    if words and Path(words[0]).name == "run_eval.py":
        words = ["python", "run_eval.py", *words[1:]]
    return shlex.join(words)


def _cells_computed(run: dict, cells: dict) -> int | None:
    """How many cells a finished invocation computed (done or failed between its start and end);
    None when the run has no end (still running, or killed)."""
    start, end = run.get("start"), run.get("end")
    if not start or not end:
        return None
    return sum(1 for entry in cells.values()
               if not entry.get("from_tables") and start <= str(entry.get("time", "")) <= end)


def _run_section(manifest: dict) -> list[str]:
    lines = ["## Run", ""]
    runs = manifest.get("runs", [])
    if not runs:
        return lines + ["No manifest runs recorded.", ""]
    cells = manifest.get("cells", {}) or {}
    computed_by_run = [_cells_computed(run, cells) if len(runs) > 1 else None for run in runs]
    working = sum(1 for computed in computed_by_run if computed != 0)
    numbered = 0
    for run, computed in zip(runs, computed_by_run):
        if computed == 0:
            lines += [f"- {run.get('start', '?')}: `{_command_text(run.get('command'))}` computed nothing "
                      "(every cell was already done).", ""]
            continue
        numbered += 1
        if working > 1:
            lines += [f"### Invocation {numbered}", ""]
        command = run.get("command")
        if command:
            lines += ["```", _command_text(command), "```", ""]
        status = run.get("status") or ("running or interrupted" if not run.get("end") else "finished")
        lines.append(f"- Started {run.get('start', '?')}, ended {run.get('end') or '—'} ({status})"
                     + (f"; {computed} cell(s) computed" if computed else ""))
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
            shown = ", ".join(f"{d[0]} ({d[1]} tokens)" if isinstance(d, (list, tuple)) and len(d) == 2
                              else str(d) for d in docs[:10])
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


def _models_line(manifest: dict, results_dir: Path) -> list[str]:
    """The report's first line under the title: model(s) and task tables of the folder."""
    models = list(dict.fromkeys((run.get("model_info") or {}).get("name") for run in manifest.get("runs", [])
                                if (run.get("model_info") or {}).get("name")))
    tables = [t for t in ("perplexity", "passkey", "leaderboard", "ruler") if (results_dir / f"{t}.csv").exists()]
    bits = []
    if models:
        bits.append("Model " + ", ".join(f"**{m}**" for m in models))
    if tables:
        bits.append("tables " + ", ".join(f"`{t}.csv`" for t in tables))
    return ([("; ".join(bits)) + ". How it ran (commands, environment) is at the end.", ""] if bits else [])


def _reference_display(reference: str) -> str:
    method, factor = parse_reference(reference)
    return method_display(method, factor)


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
        lengths = _lengths(block)
        grid = _grid(block, SERIES, lengths)
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
            row = [_row_label(skey, show)]
            for j, r in enumerate(cells):
                if r is None:
                    row.append("—")
                    continue
                text = fmt_ppl(r["ppl"])
                if best[j] is not None and r["ppl"] == best[j]:
                    text = f"**{text}**"
                if _number(r.get("n_docs")) >= 2:
                    text += fmt_interval(r.get("ppl_ci_low"), r.get("ppl_ci_high"), fmt_ppl)
                row.append(text)
            rows.append(row)
        lines += [markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]
        if "ppl_paper" in block and block["ppl_paper"].notna().any():
            lines += ["The authors' aggregation (`ppl_paper`: exp of the mean over all windows of all documents "
                      "of each window's mean NLL):", ""]
            rows = [[_row_label(skey, show)] + [fmt_ppl(r["ppl_paper"]) if r is not None else "—"
                                                for r in cells] for skey, cells in grid]
            lines += [markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]
        for reference, table in ratios.items():
            lines += _ratio_table(table, key, lengths, show, reference)
    return lines + _unmatched_references(ratios, "perplexity")


def _unmatched_references(tables_by_reference: dict, what: str) -> list[str]:
    """One line per `--reference` that no series of the run matches (so no table was shown)."""
    missing = [r for r, table in tables_by_reference.items() if table.empty and r != REFERENCE]
    return [f"No {what} series matches --reference {r!r}." for r in missing] + ([""] if missing else [])


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
    reference = _reference_display(reference)
    rows = []
    for skey, cells in _grid(part, SERIES, lengths):
        row = [_row_label(skey, show)]
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


def _scoring_text(passkey: pd.DataFrame) -> str:
    rules = sorted({str(v) for v in passkey["scoring"].dropna()}) if "scoring" in passkey else []
    return f" (scoring: {', '.join(rules)})" if rules else ""


def _passkey_section(passkey: pd.DataFrame, seed: int, references: Sequence[str] = (REFERENCE,)) -> list[str]:
    by_length = passkey_accuracy(passkey, by=("context_length",))
    overall = passkey_accuracy(passkey, by=())
    context = passkey_effective_context(passkey)
    keys = [c for c in by_length.columns if c in ("model", "method", "factor", "original_ctx", "scoring")]
    show = varying(by_length, ["model", "original_ctx", "scoring"])
    lengths = _lengths(by_length)
    ns = set(by_length["n"].astype(int))
    uniform_n = len(ns) == 1

    def accuracy_text(r) -> str:
        text = fmt_pct(r["accuracy"]) + fmt_interval(r["ci_low"], r["ci_high"], fmt_pct)
        return text if uniform_n else f"{text} (n={int(r['n'])})"

    overall, context = _by_series(overall, keys), _by_series(context, keys)
    rows = []
    for skey, cells in _grid(by_length, keys, lengths):
        total = overall[_series_id(skey, keys)]
        effective = context[_series_id(skey, keys)]["effective_context"]
        all_lengths = (fmt_pct(total["accuracy"]) + fmt_interval(total["ci_low"], total["ci_high"], fmt_pct)
                       + f" (n={int(total['n'])})")
        rows.append([_row_label(skey, show)] + [accuracy_text(r) if r is not None else "—" for r in cells]
                    + ["none" if pd.isna(effective) else fmt_length(effective), all_lengths])
    n_text = f"n = {ns.pop()} prompts per cell" if uniform_n else "n prompts per cell as shown"
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
    return lines + _unmatched_references(differences, "passkey")


def _passkey_difference_table(differences: pd.DataFrame, reference: str, keys: Sequence[str],
                              lengths: Sequence[float], show: Sequence[str]) -> list[str]:
    if differences.empty:
        return []
    reference = _reference_display(reference)
    rows = []
    def text(r) -> str:
        if r is None:
            return "—"
        interval = fmt_interval(r["difference_ci_low"], r["difference_ci_high"], fmt_points)
        return fmt_points(r["difference"]) + (interval if r["n"] >= 2 else "")

    for skey, cells in _grid(differences, keys, lengths):
        rows.append([_row_label(skey, show)] + [text(r) for r in cells])
    return [f"Difference to {reference} on the same prompts:", "",
            f"- Difference: accuracy of the method − accuracy of {reference}, in percentage points, "
            "over the prompts both have (same length, depth, trial and seed).",
            "- Brackets: 95 % paired percentile bootstrap interval over those prompts "
            f"({BOOTSTRAP_RESAMPLES} seeded resamples).", "",
            markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]


def _leaderboard_section(leaderboard: pd.DataFrame) -> list[str]:
    frame = without_subtasks(leaderboard).copy()
    for column in ("value", "stderr", "n_samples", "num_fewshot"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    columns = leaderboard_columns(frame)
    keys = [c for c in SERIES if c in frame.columns]
    means = _by_series(leaderboard_means(frame), keys)
    deltas = leaderboard_deltas(frame, REFERENCE)
    show = varying(frame, ["model", "original_ctx"])

    def header(task: str, metric: str) -> str:
        part = frame[(frame["task"] == task) & (frame["metric"] == metric)]
        bits = [metric]
        shots = set(part["num_fewshot"].dropna()) if "num_fewshot" in part else set()
        if len(shots) == 1:
            bits.append(f"{format_number(shots.pop())}-shot")
        samples = set(part["n_samples"].dropna()) if "n_samples" in part else set()
        if len(samples) == 1:
            bits.append(f"n={format_number(samples.pop())}")
        return f"{task_display(task)} ({', '.join(bits)})"

    rows, incomplete = [], False
    for skey, group in ordered_groups(frame, keys):
        cells = {(r["task"], r["metric"]): r for r in group.to_dict("records")}
        row = [_row_label(skey, show)]
        for column in columns:
            r = cells.get(column)
            if r is None:
                row.append("—")
                incomplete = True
                continue
            text = fmt_pct(r["value"])
            if not pd.isna(r.get("stderr")):
                text += f" ± {fmt_pct(r['stderr'])}"
            row.append(text)
        row.append(fmt_pct(means[_series_id(skey, keys)]["mean"]))
        rows.append(row)
    lines = ["## Leaderboard", "",
             "- Scores (%) as lm-eval reports them ± lm-eval's standard error; n = samples per task "
             "(a run with `--limit` scores the first n items of each task: a subset, not the full task).",
             "- Mean: the unweighted mean over the tasks a method has of one number per task, the "
             "paper's Table-3 metric (ARC-c and HellaSwag acc_norm, MMLU acc_macro, TruthfulQA MC2 acc; "
             "other tasks acc_norm, else acc)" + (" (— = missing)." if incomplete else "."),
             "", markdown_table(["method"] + [header(t, m) for t, m in columns] + ["mean"], rows), ""]
    if not deltas.empty:
        reference = method_display(REFERENCE)
        rows = []
        for skey, group in ordered_groups(deltas, SERIES):
            cells = {(r["task"], r["metric"]): r["delta"] for r in group.to_dict("records")}
            rows.append([_row_label(skey, show)] + [fmt_points(cells.get(c)) for c in columns])
        lines += [f"- Change from {reference}: score − {reference}'s score on the same task, "
                  "in percentage points.",
                  "", markdown_table(["method"] + [header(t, m) for t, m in columns], rows), ""]
    return lines


def _effective_context_text(row: dict | None) -> str:
    if row is None:
        return "—"
    if pd.isna(row["effective_context"]):
        return "none"
    text = fmt_length(row["effective_context"])
    if _number(row["effective_context"]) >= _number(row["max_length_tested"]):
        text = "≥" + text
    gap = row.get("shorter_failure")
    return text + ("†" if not is_missing(gap) and bool(gap) else "")


def _ruler_rule_text(table: pd.DataFrame, rules: EffectiveContextRules) -> str:
    if rules.ruler_threshold is not None:
        return f"RULER: the RULER mean (mean score over the tasks at ℓ) ≥ {fmt_pct(rules.ruler_threshold)} %."
    text = (f"RULER: the RULER mean m(ℓ) (mean score over the tasks at ℓ) ≥ θ = {rules.ruler_fraction:g} · "
            f"m_{REFERENCE}(ℓ_ref), ℓ_ref = the longest length ≤ L/2 at which {method_display(REFERENCE)} "
            "has RULER scores")
    ruler = table[table["criterion"] == "ruler"]
    refs = []
    for key, group in ordered_groups(ruler, ["model", "original_ctx"]):
        first = group.iloc[0]
        where = f"{key['model']}, L = {fmt_length(key['original_ctx'])}"
        if pd.isna(first["threshold"]):
            refs.append(f"{where}: no {method_display(REFERENCE)} RULER score at ≤ L/2, so none")
        else:
            refs.append(f"{where}: ℓ_ref = {fmt_length(first['reference_length'])}, "
                        f"θ = {fmt_pct(first['threshold'])} %")
    return text + (" (" + "; ".join(refs) + ")." if refs else ".")


def effective_context_lines(table: pd.DataFrame, rules: EffectiveContextRules = EffectiveContextRules(),
                            present_only: bool = False) -> list[str]:
    """The effective-context table (`tables.effective_context`'s frame) in markdown with its rules:
    one row per series, one column per perplexity data, then passkey and RULER; `present_only`:
    only the criteria the table has rows of, with their rules (a report of one task's folder)."""
    show = varying(table, ["model", "original_ctx"]) if not table.empty else []
    present = set(table["criterion"]) if present_only and not table.empty else {"perplexity", "passkey", "ruler"}
    columns = []
    if "perplexity" in present:
        columns += [("perplexity", d) for d in dict.fromkeys(table.loc[table["criterion"] == "perplexity", "data"])
                    ] or [("perplexity", "")]
    if "passkey" in present:
        columns += [("passkey", d) for d in dict.fromkeys(table.loc[table["criterion"] == "passkey", "data"])
                    ] or [("passkey", "")]
    if "ruler" in present:
        columns.append(("ruler", ""))
    headers = ["method"] + [f"perplexity ({d})" if c == "perplexity" and d else
                            "RULER" if c == "ruler" else f"{c} ({d})" if d else c for c, d in columns]
    rows = []
    for key, group in ordered_groups(table, SERIES):
        cells = {(r["criterion"], r["data"]): r for r in group.to_dict("records")}
        rows.append([_row_label(key, show)] + [_effective_context_text(cells.get(c)) for c in columns])
    no_reference = " (perplexity: also when no length ≤ L was run, which leaves no reference)" \
        if "perplexity" in present else ""
    lines = ["- Effective context: the longest tested length ℓ that meets the rule, counted also when a "
             "shorter tested length fails (the paper's passkey definition; † marks such a gap"
             + (", for perplexity between the best length and ℓ" if "perplexity" in present else "")
             + "); ≥: met at the longest length tested; none: no tested length meets it; —: not measured"
             + no_reference + "."]
    if "perplexity" in present:
        lines.append(f"- Perplexity: ppl(ℓ) ≤ (1 + {rules.ppl_tolerance:g}) · min_{{ℓ' ≤ L}} ppl(ℓ'), "
                     "token-weighted perplexity on that data, L = the series' original context.")
    if "passkey" in present:
        lines.append(f"- Passkey: accuracy ≥ {fmt_pct(rules.passkey_threshold, 0)} % over depths and trials.")
    if "ruler" in present:
        lines.append("- " + _ruler_rule_text(table, rules))
    return lines + ["", markdown_table(headers, rows), ""]


def _effective_context_section(results_dir: Path, rules: EffectiveContextRules) -> list[str]:
    tables = load_effective_context_tables([results_dir])
    table = effective_context(tables["perplexity"], tables["passkey"], tables["ruler"], rules)
    if table.empty:
        return []
    return ["## Effective context", ""] + effective_context_lines(table, rules, present_only=True)


def _ruler_section(ruler: pd.DataFrame, samples: pd.DataFrame, seed: int,
                   references: Sequence[str] = (REFERENCE,)) -> list[str]:
    scores = ruler_scores(ruler)
    keys = [c for c in SERIES if c in scores.columns]
    show = varying(scores, ["model", "original_ctx"])
    lengths = _lengths(scores)
    means = ruler_means(scores)
    ns = set(scores["n"].dropna().astype(int))
    uniform_n = len(ns) == 1

    def score_text(r) -> str:
        if r is None:
            return "—"
        text = fmt_pct(r["score"])
        if not pd.isna(r["stderr"]):
            text += f" ± {fmt_pct(r['stderr'])}"
        return text if uniform_n else f"{text} (n={int(r['n'])})"

    mean_rows = [[_row_label(k, show)] + ["—" if r is None else f"{fmt_pct(r['mean_score'])} ({int(r['n_tasks'])})"
                                         for r in cells] for k, cells in _grid(means, keys, lengths)]
    task_rows = [[_row_label(k, show), k["task"]] + [score_text(r) for r in cells]
                 for k, cells in _grid(scores, keys + ["task"], lengths)]
    n_text = f"n = {ns.pop()} samples per cell" if uniform_n else "n samples per cell as shown"
    lines = ["## RULER", "",
             "- Score (%): the mean over a cell's samples of the task's own per-sample metric (RULER's "
             f"string_match_all, lm-eval's RULER tasks with the model's tokenizer) ± its standard error; {n_text}.",
             "- Mean: the unweighted mean of the task scores at that length (tasks counted in brackets).", "",
             markdown_table(["method"] + [fmt_length(x) for x in lengths], mean_rows), "",
             markdown_table(["method", "task"] + [fmt_length(x) for x in lengths], task_rows,
                            align=["l", "l"] + ["r"] * len(lengths)), ""]
    differences = {reference: ruler_differences(samples, reference, seed=seed) if not samples.empty
                   else pd.DataFrame() for reference in references}
    for reference, table in differences.items():
        lines += _ruler_difference_table(table, reference, keys, lengths, show)
    return lines + (_unmatched_references(differences, "RULER") if not samples.empty else [])


def _ruler_difference_table(differences: pd.DataFrame, reference: str, keys: Sequence[str],
                            lengths: Sequence[float], show: Sequence[str]) -> list[str]:
    if differences.empty:
        return []
    pooled = differences[differences["task"] == ALL_TASKS]
    reference = _reference_display(reference)

    def text(r) -> str:
        if r is None:
            return "—"
        interval = fmt_interval(r["difference_ci_low"], r["difference_ci_high"], fmt_points)
        return fmt_points(r["difference"]) + (interval if r["n"] >= 2 else "") + f" (n={int(r['n'])})"

    rows = [[_row_label(k, show)] + [text(r) for r in cells] for k, cells in _grid(pooled, keys, lengths)]
    return [
        f"Difference to {reference} on the same samples:", "",
        f"- Difference: the method's per-sample score − {reference}'s on the same RULER prompt (lm-eval "
        "generates the same prompts for every method), averaged over the paired samples of all tasks at "
        "that length, in percentage points; per task in `tables.ruler_differences`.",
        "- Brackets: 95 % paired percentile bootstrap interval over those samples "
        f"({BOOTSTRAP_RESAMPLES} seeded resamples).", "",
        markdown_table(["method"] + [fmt_length(x) for x in lengths], rows), ""]


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

REPORT_OPTIONS = "report_options"  # the manifest key of the report's recorded options
RULE_FIELDS = ("ppl_tolerance", "passkey_threshold", "ruler_fraction", "ruler_threshold")


def recorded_options(results_dir: str | os.PathLike) -> tuple[tuple[str, ...], EffectiveContextRules]:
    """The report options recorded in the folder's manifest (`record_options`): the references and
    the effective-context rules (defaults where none are recorded)."""
    path = Path(results_dir) / "manifest.json"
    options = (read_manifest(path, quiet=True) if path.exists() else {}).get(REPORT_OPTIONS) or {}
    rules = {k: v for k, v in (options.get("rules") or {}).items() if k in RULE_FIELDS}
    return tuple(options.get("references") or ()), EffectiveContextRules(**rules)


def record_options(results_dir: str | os.PathLike, references: Sequence[str] | None = None,
                   rules: dict | None = None) -> None:
    """Records the report options a command line gave (`references`: `--reference`; `rules`: the
    effective-context options given, by `RULE_FIELDS` name) in the folder's manifest, over the ones
    recorded before, so `plot DIR` alone rebuilds the same report. Nothing given: nothing written."""
    if references is None and not rules:
        return

    def change(data: dict) -> None:
        options = dict(data.get(REPORT_OPTIONS) or {})
        if references is not None:
            options["references"] = list(references)
        if rules:
            merged = {**(options.get("rules") or {}), **rules}
            if "ruler_threshold" in rules:  # the absolute RULER rule and the fraction of base exclude each other
                merged.pop("ruler_fraction", None)
            elif "ruler_fraction" in rules:
                merged.pop("ruler_threshold", None)
            options["rules"] = merged
        data[REPORT_OPTIONS] = options

    Manifest(results_dir).update(change)


def build_report(results_dir: str | os.PathLike, seed: int = 0, rules: EffectiveContextRules | None = None,
                 references: Sequence[str] | None = None) -> str:
    """The markdown text of the report (without writing figures); `seed` drives the paired
    bootstrap intervals, `rules` holds the effective-context thresholds; perplexity ratios, passkey
    and RULER differences are shown against Base and each of `references` (`--method` syntax).
    `rules` / `references` None: the ones recorded in the folder (`recorded_options`).

    Results first (each task's tables with their rules, the effective context, figures, failed
    cells), how it ran (commands, model, environment) last."""
    recorded_references, recorded_rules = recorded_options(results_dir)
    references = recorded_references if references is None else references
    rules = recorded_rules if rules is None else rules
    references = tuple(dict.fromkeys((REFERENCE, *references)))
    results_dir = Path(results_dir)
    manifest_path = results_dir / "manifest.json"
    manifest = read_manifest(manifest_path) if manifest_path.exists() else {}
    lines = [f"# Report: {results_dir.name}", ""] + _models_line(manifest, results_dir)
    ppl = load_perplexity(results_dir)
    if not ppl.empty:
        lines += _perplexity_section(ppl, read_table(results_dir, "perplexity_docs"), seed, references)
        lines += _temperature_section(ppl)
    passkey = read_table(results_dir, "passkey")
    if not passkey.empty:
        lines += _passkey_section(passkey, seed, references)
    leaderboard = read_table(results_dir, "leaderboard")
    if not leaderboard.empty:
        lines += _leaderboard_section(leaderboard)
    ruler = read_table(results_dir, "ruler")
    if not ruler.empty:
        lines += _ruler_section(ruler, read_table(results_dir, "ruler_samples"), seed, references)
    lines += _effective_context_section(results_dir, rules)
    lines += _figures_section(results_dir)
    lines += _cells_section(manifest)
    lines += _run_section(manifest)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: str | os.PathLike, figures: bool = True, rules: EffectiveContextRules | None = None,
                 references: Sequence[str] | None = None) -> Path:
    """Writes `<dir>/report.md`; with `figures=True` the figures of `plot_run` first, so the
    report embeds current ones. `rules` / `references` None: the folder's recorded ones. Returns
    the report's path."""
    results_dir = Path(results_dir)
    if figures:
        plot_run(results_dir)
    path = results_dir / "report.md"
    atomic_write_text(path, build_report(results_dir, rules=rules, references=references))
    return path


__all__ = ["write_report", "build_report", "markdown_table", "effective_context_lines", "record_options",
           "recorded_options"]
