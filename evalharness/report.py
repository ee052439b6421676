"""A one-page markdown report of a run folder: `<dir>/report.md`, the skeleton the tasks fill.

Results first: each registered task package's section (its `report` module's `report_section`: the
tables the paper reports for that task, each with its rules in one sentence each, paired comparisons
with base and each `--reference`), then the effective context per series by the criteria present
(`analysis.effective_context`), the figures of `plots.plot_run` by relative path with each package's
captions, failed cells; how it ran (commands, model, environment) last, a resume that computed
nothing in one line. The report options (`--reference`, the effective-context thresholds) are
recorded in manifest.json (`record_options`), so the folder alone rebuilds its report. The helpers
the sections share (row labels, a series × length grid, reference names) live here; numbers come
from the task packages' `analysis` modules.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import registry
from .analysis.display import (
    SCORING_WORDS,
    format_number,
    is_missing,
    markdown_cell,
    markdown_table,
    method_display,
    number,
    ordered_groups,
    varying,
)
from .analysis.effective_context import (
    EffectiveContextRules,
    criteria,
    effective_context,
    load_effective_context_tables,
    rule_options,
)
from .analysis.stats import REFERENCE_METHOD
from .plots import plot_run
from .results import Manifest, atomic_write_text, read_manifest

REFERENCE = REFERENCE_METHOD
fmt_length = format_number


# ---------------------------------------------------------------------------------------------
# Markdown helpers
# ---------------------------------------------------------------------------------------------


fmt_length = format_number


def row_label(key: dict, show: Sequence[str]) -> str:
    label = method_display(key["method"], key.get("factor"))
    if key.get("scoring") in SCORING_WORDS:
        label += f", {SCORING_WORDS[key['scoring']]}"
    if "original_ctx" in show and "original_ctx" in key:
        label += f" (L={fmt_length(key['original_ctx'])})"
    prefix = [str(key[c]) for c in show if c in key and c not in ("original_ctx", "scoring")]
    return ": ".join([" / ".join(prefix), label]) if prefix else label


def series_grid(frame: pd.DataFrame, keys: Sequence[str], lengths: Sequence[float],
                order: dict | None = None) -> list[tuple[dict, list]]:
    """Per series (display order, `ordered_groups` with `order`): its row (a dict) at each length,
    None where it has none."""
    out = []
    for key, group in ordered_groups(frame, keys, order):
        by_length = {float(r["context_length"]): r for r in group.to_dict("records")}
        out.append((key, [by_length.get(x) for x in lengths]))
    return out


def lengths_of(frame: pd.DataFrame) -> list[float]:
    return sorted({float(v) for v in frame["context_length"]})


SERIES = ["model", "method", "factor", "original_ctx"]


def series_id(key: dict, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(key[c]) for c in keys)


def by_series(frame: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[str, ...], dict]:
    """The rows of a one-row-per-series frame, by `series_id`."""
    return {series_id(r, keys): r for r in frame.to_dict("records")}


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
    names = dict.fromkeys(name for module in registry.package_modules("report") for name in module.TABLES)
    tables = [t for t in names if (results_dir / f"{t}.csv").exists()]
    bits = []
    if models:
        bits.append("Model " + ", ".join(f"**{m}**" for m in models))
    if tables:
        bits.append("tables " + ", ".join(f"`{t}.csv`" for t in tables))
    return ([("; ".join(bits)) + ". How it ran (commands, environment) is at the end.", ""] if bits else [])


def unmatched_references(tables_by_reference: dict, what: str) -> list[str]:
    """One line per `--reference` that no series of the run matches (so no table was shown)."""
    missing = [r for r, table in tables_by_reference.items() if table.empty and r != REFERENCE]
    return [f"No {what} series matches --reference {r!r}." for r in missing] + ([""] if missing else [])


def _effective_context_text(row: dict | None) -> str:
    if row is None:
        return "—"
    if pd.isna(row["effective_context"]):
        return "none"
    text = fmt_length(row["effective_context"])
    if number(row["effective_context"]) >= number(row["max_length_tested"]):
        text = "≥" + text
    gap = row.get("shorter_failure")
    return text + ("†" if not is_missing(gap) and bool(gap) else "")


def effective_context_lines(table: pd.DataFrame, rules: EffectiveContextRules | None = None,
                            present_only: bool = False) -> list[str]:
    """The effective-context table (`analysis.effective_context`'s frame) in markdown with its rules:
    one row per series, one column per criterion (and per data where a criterion tells data apart),
    in registry order; `present_only`: only the criteria the table has rows of, with their rules (a
    report of one task's folder)."""
    rules = EffectiveContextRules() if rules is None else rules
    show = varying(table, ["model", "original_ctx"]) if not table.empty else []
    every = criteria()
    present = set(table["criterion"]) if present_only and not table.empty else {c.name for c in every}
    shown = [c for c in every if c.name in present]
    columns, headers = [], ["method"]
    for criterion in shown:
        data = list(dict.fromkeys(table.loc[table["criterion"] == criterion.name, "data"])) or [""]
        columns += [(criterion.name, d) for d in data]
        headers += [f"{criterion.label} ({d})" if d else criterion.label for d in data]
    rows = []
    for key, group in ordered_groups(table, SERIES):
        cells = {(r["criterion"], r["data"]): r for r in group.to_dict("records")}
        rows.append([row_label(key, show)] + [_effective_context_text(cells.get(c)) for c in columns])
    lines = ["- Effective context: the longest tested length ℓ that meets the rule, counted also when a "
             "shorter tested length fails (" + "".join(f"{c.rule_source}; " for c in every if c.rule_source)
             + "† marks such a gap"
             + "".join(c.gap_note for c in shown)
             + "); ≥: met at the longest length tested; none: no tested length meets it; —: not measured"
             + "".join(c.unmeasured_note for c in shown) + "."]
    lines += [criterion.rule_line(table, rules) for criterion in shown]
    return lines + ["", markdown_table(headers, rows), ""]


def _effective_context_section(results_dir: Path, rules: EffectiveContextRules) -> list[str]:
    table = effective_context(load_effective_context_tables([results_dir]), rules)
    if table.empty:
        return []
    return ["## Effective context", ""] + effective_context_lines(table, rules, present_only=True)


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
            lines.append(f"- `{name}`: {markdown_cell(first)[:500]}")
        lines.append("")
    return lines


def _figures_section(results_dir: Path) -> list[str]:
    folder = results_dir / "figures"
    if not folder.is_dir():
        return []
    captions = {stem: caption for module in registry.package_modules("report")
                for stem, caption in module.FIGURE_CAPTIONS.items()}
    order = list(captions)
    pngs = sorted(folder.glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order else len(order),
                                                       p.name))
    if not pngs:
        return []
    lines = ["## Figures", ""]
    for png in pngs:
        caption = captions.get(png.stem, png.stem)
        lines += [f"![{caption}](figures/{png.name})", "", f"*{caption}* (PDF: `figures/{png.stem}.pdf`)", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

REPORT_OPTIONS = "report_options"  # the manifest key of the report's recorded options


def rule_fields() -> list[str]:
    """The names of every effective-context threshold (the criteria's `RuleOption.name`s)."""
    return [option.name for option in rule_options()]


def _recorded(results_dir: str | os.PathLike) -> dict:
    path = Path(results_dir) / "manifest.json"
    return (read_manifest(path, quiet=True) if path.exists() else {}).get(REPORT_OPTIONS) or {}


def recorded_options(results_dir: str | os.PathLike) -> tuple[tuple[str, ...], EffectiveContextRules]:
    """The report options recorded in the folder's manifest (`record_options`): the references and
    the effective-context rules (defaults where none are recorded)."""
    options = _recorded(results_dir)
    rules = {k: v for k, v in (options.get("rules") or {}).items() if k in rule_fields()}
    return tuple(options.get("references") or ()), EffectiveContextRules(**rules)


def optional_figures_recorded(results_dir: str | os.PathLike) -> bool:
    """Whether the folder's manifest records `plot --optional-figures` (off when never given)."""
    return bool(_recorded(results_dir).get("optional_figures", False))


def record_options(results_dir: str | os.PathLike, references: Sequence[str] | None = None,
                   rules: dict | None = None, optional_figures: bool | None = None) -> None:
    """Records the report options a command line gave (`references`: `--reference`; `rules`: the
    effective-context options given, by `rule_fields` name; `optional_figures`:
    `--[no-]optional-figures`) in the folder's manifest, over the ones recorded before, so
    `plot DIR` alone rebuilds the same report. Nothing given: nothing written."""
    if references is None and not rules and optional_figures is None:
        return

    def change(data: dict) -> None:
        options = dict(data.get(REPORT_OPTIONS) or {})
        if references is not None:
            options["references"] = list(references)
        if optional_figures is not None:
            options["optional_figures"] = optional_figures
        if rules:
            merged = {**(options.get("rules") or {}), **rules}
            for criterion in criteria():  # a rule given drops a recorded one it excludes
                for first, second, _ in criterion.excludes:
                    if first in rules and second not in rules:
                        merged.pop(second, None)
                    elif second in rules and first not in rules:
                        merged.pop(first, None)
            options["rules"] = merged
        data[REPORT_OPTIONS] = options

    Manifest(results_dir).update(change)


def build_report(results_dir: str | os.PathLike, seed: int = 0, rules: EffectiveContextRules | None = None,
                 references: Sequence[str] | None = None) -> str:
    """The markdown text of the report (without writing figures); `seed` drives the paired
    bootstrap intervals, `rules` holds the effective-context thresholds; the tasks' paired
    comparisons are shown against Base and each of `references` (`--method` syntax).
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
    for module in registry.package_modules("report"):
        lines += module.report_section(results_dir, seed, references)
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
        plot_run(results_dir, optional=optional_figures_recorded(results_dir))
    path = results_dir / "report.md"
    atomic_write_text(path, build_report(results_dir, rules=rules, references=references))
    return path


__all__ = ["write_report", "build_report", "effective_context_lines", "record_options",
           "recorded_options", "optional_figures_recorded"]
