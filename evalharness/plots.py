"""Figures from result tables only (never from live models).

Every function takes a tidy frame with the columns of `results.SCHEMAS` and returns a matplotlib
`Figure`, built on the Agg canvas directly (`Figure` + `FigureCanvasAgg`, no pyplot): nothing
touches the global backend or pyplot's figure registry, so this works headless, in tests and in
notebooks alike, and figures are freed when dropped. `save_figure` writes PNG and PDF.

Artists carry a `gid` so tests and callers can find them: `series` (a data line), `original_ctx`
(the dashed vertical line at L), `minimum` / `formula` (temperature sweep), `base_reference`
(dashed base level in the leaderboard bars).

Nothing here imports torch: plotting a results folder needs pandas and matplotlib only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from . import tables
from .method_facts import yarn_mscale
from .tables import (
    format_number,
    has_temperature_sweep,
    is_missing,
    leaderboard_columns,
    load_perplexity,
    method_display,
    ordered_groups,
    passkey_accuracy,
    read_table,
    split_label,
    task_display,
    varying,
)

PPL_YLABEL = "Perplexity (lower is better)"
CTX_XLABEL = "Context window (tokens)"

# Fixed colours of the known methods (plain labels); other labels take spare colours in turn.
METHOD_COLORS = {
    "base": "black",
    "pi": "tab:blue",
    "ntk": "tab:orange",
    "ntk-by-parts": "tab:purple",
    "yarn": "tab:red",
    "dynamic-pi": "tab:cyan",
    "dynamic-ntk": "tab:olive",
    "dynamic-yarn": "tab:pink",
}
_SPARE_COLORS = ["tab:green", "tab:brown", "tab:gray", "darkgoldenrod", "teal", "navy", "crimson",
                 "darkviolet", "slategray", "sienna"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]


# ---------------------------------------------------------------------------------------------
# Series, styles and axes
# ---------------------------------------------------------------------------------------------

def _extra_keys(frame: pd.DataFrame) -> list[str]:
    """Columns that tell series apart beyond (method, factor) when they vary: run folder, model."""
    return varying(frame, ["run", "model"])


def _series_label(key: dict, extra: Sequence[str]) -> str:
    prefix = " / ".join(str(key[c]) for c in extra)
    label = method_display(key["method"], key.get("factor"))
    return f"{prefix}: {label}" if prefix else label


def _ordered_series(frame: pd.DataFrame, extra: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    return ordered_groups(frame, list(extra) + ["method", "factor"])


class _Styler:
    """Colour by method label (fixed colours for the known plain labels), marker by factor."""

    def __init__(self, frame: pd.DataFrame):
        self.factors = sorted({float(f) for f in frame["factor"].dropna()}) if "factor" in frame else []
        self.colors: dict[str, str] = {}
        self._spare = iter(_SPARE_COLORS * 10)

    def color(self, method: str) -> str:
        if method not in self.colors:
            self.colors[method] = METHOD_COLORS.get(method) or next(self._spare)
        return self.colors[method]

    def marker(self, factor) -> str:
        try:
            return _MARKERS[self.factors.index(float(factor)) % len(_MARKERS)]
        except (ValueError, TypeError):
            return "o"

    @staticmethod
    def linestyle(method: str) -> str:
        return "-." if split_label(method)[0].startswith("dynamic-") else "-"


def _length_text(value, _pos=None) -> str:
    value = float(value)
    if value >= 1024 and value % 1024 == 0:
        return f"{int(value // 1024)}k"
    if value >= 1000 and value % 1000 == 0:
        return f"{int(value // 1000)}k"
    return format_number(value)


def _plain_number(value, _pos=None) -> str:
    if value <= 0 or not math.isfinite(value):
        return ""
    return f"{value:.3g}"


def _new_figure(n_panels: int, ncols: int | None = None, panel_size=(6.0, 4.2), extra_width: float = 0.0):
    ncols = ncols or min(n_panels, 3)
    nrows = int(math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols + extra_width, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, axes[:n_panels]


def _empty_figure(message: str) -> Figure:
    fig, (ax,) = _new_figure(1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def mark_original_context(ax, original_ctx: pd.Series) -> None:
    """A dashed vertical line (gid `original_ctx`, labelled "Original context L=…") at each L."""
    for ctx in sorted({float(c) for c in original_ctx.dropna()}):
        ax.axvline(ctx, color="0.35", linestyle="--", linewidth=1.2, zorder=0.5,
                   label=f"Original context L={_length_text(ctx)}", gid="original_ctx")


def length_axis(ax, context_length: pd.Series) -> None:
    """x ticks at the tested lengths (when at most 12), written as 4k, 32k, …"""
    lengths = sorted({float(v) for v in context_length})
    if len(lengths) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FuncFormatter(_length_text))


def save_figure(fig: Figure, path_without_ext: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Writes `<path>.png` and `<path>.pdf` (folders created), without a creation date, so the same
    tables give the same files.

    Returns:
        Both paths.
    """
    base = str(path_without_ext)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{base}.{ext}")
        metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, dpi=dpi, format=ext, metadata=metadata)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Perplexity vs context (the paper's Figure 1)
# ---------------------------------------------------------------------------------------------

def _ppl_panel_title(key: dict, stride_varies: bool) -> str:
    dataset = key.get("dataset", "")
    protocol = key.get("protocol", "")
    title = f"{dataset} ({protocol}" if protocol else str(dataset)
    stride = key.get("stride")
    if protocol == "sliding" and stride is not None and not is_missing(stride) and float(stride) > 0:
        title += f", stride {format_number(stride)}"
        if key.get("window_bos") in ("every", "first"):
            title += ", BOS every window" if key["window_bos"] == "every" else ", BOS at start"
    elif stride_varies and stride is not None and not is_missing(stride):
        title += f", stride {format_number(stride)}"
    return title + (")" if protocol else "")


def plot_perplexity(frame: pd.DataFrame, value: str = "ppl", ci: bool = False,
                    ylim: tuple[float, float] | None = None, title: str | None = None) -> Figure:
    """Perplexity against context length (the paper's Figure 1).

    One line per (method, factor) (and per model / run when those vary), log y, a dashed vertical
    line at each original context L; one panel per (dataset, protocol[, window_bos][, stride]). Non-finite
    values are left out.

    Args:
        frame: perplexity.csv rows.
        value: the column to draw: `ppl` (token-weighted) or `ppl_paper`.
        ci: shade the bootstrap interval `ppl_ci_low/high` (ppl only).
        ylim: fixed y range.
        title: a figure title.
    """
    frame = frame.copy()
    if frame.empty:
        return _empty_figure("no perplexity rows")
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    frame = frame[np.isfinite(frame[value]) & (frame[value] > 0)]
    if frame.empty:
        return _empty_figure("no finite perplexity values")
    stride_varies = ("stride" in frame
                     and frame.groupby(["dataset", "protocol"])["stride"].nunique().gt(1).any())
    panel_columns = ["dataset", "protocol"] + [c for c in ("window_bos", "stride") if c in frame]
    panels = ordered_groups(frame, panel_columns)
    fig, axes = _new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = _extra_keys(frame)
    styler = _Styler(frame)
    for ax, (key, panel) in zip(axes, panels):
        for skey, group in _ordered_series(panel, extra):
            group = group.sort_values("context_length")
            x = group["context_length"].astype(float).to_numpy()
            y = group[value].astype(float).to_numpy()
            color = styler.color(skey["method"])
            ax.plot(x, y, color=color, marker=styler.marker(skey["factor"]), markersize=4,
                    linestyle=styler.linestyle(skey["method"]), linewidth=1.6,
                    label=_series_label(skey, extra), gid="series")
            if ci and value == "ppl" and {"ppl_ci_low", "ppl_ci_high"} <= set(group.columns):
                low = pd.to_numeric(group["ppl_ci_low"], errors="coerce").to_numpy(dtype=float)
                high = pd.to_numeric(group["ppl_ci_high"], errors="coerce").to_numpy(dtype=float)
                ax.fill_between(x, low, high, color=to_rgba(color, 0.15), linewidth=0, gid="ci")
        ax.set_yscale("log")
        if "original_ctx" in panel:
            mark_original_context(ax, panel["original_ctx"])
        length_axis(ax, panel["context_length"])
        ymin, ymax = ax.get_ylim()
        if ymax / ymin < 100:  # under two decades: label the minor ticks too, in plain numbers
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain_number))
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(CTX_XLABEL)
        ax.set_ylabel(PPL_YLABEL if value == "ppl" else f"{PPL_YLABEL}, {value}")
        panel_title = _ppl_panel_title(key, stride_varies)
        if "model" in panel and panel["model"].nunique() == 1 and "model" not in extra:
            panel_title = f"{panel['model'].iloc[0]}: {panel_title}"
        ax.set_title(panel_title)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Passkey heatmap
# ---------------------------------------------------------------------------------------------

def _depth_bins(depth: pd.Series, max_bins: int) -> pd.Series:
    values = depth.astype(float)
    if values.nunique() <= max_bins:
        return values
    low, high = values.min(), values.max()
    edges = np.linspace(low, high, max_bins + 1)
    index = np.clip(np.digitize(values, edges[1:-1]), 0, max_bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return pd.Series(centres[index], index=depth.index)


def _depth_text(value: float, fractions: bool) -> str:
    return f"{value:.0%}" if fractions else format_number(round(value, 3))


def plot_passkey_heatmap(frame: pd.DataFrame, max_depth_bins: int = 20,
                         annotate: bool | None = None) -> Figure:
    """Passkey accuracy (`tables.passkey_accuracy`) as a context length (x) × depth (y) heatmap.

    One panel per (method, factor) (and run / model / scoring rule when they vary), a shared
    colorbar over 0..1. More than `max_depth_bins` distinct depths (random depths) are binned.
    The panel title gives the prompts per cell (n) when every cell has the same n; otherwise each
    annotated cell shows its own n.
    """
    if frame.empty:
        return _empty_figure("no passkey rows")
    frame = frame.copy()
    frame["depth"] = _depth_bins(frame["depth"], max_depth_bins)
    acc = passkey_accuracy(frame)
    extra = varying(acc, ["run", "model", "scoring"])
    series = _ordered_series(acc, extra)
    fig, axes = _new_figure(len(series), ncols=min(len(series), 4), panel_size=(4.2, 3.6), extra_width=0.8)
    fractions = bool(acc["depth"].max() <= 1.0)
    image = None
    for ax, (skey, group) in zip(axes, series):
        correct = group.pivot_table(index="depth", columns="context_length", values="correct", aggfunc="sum")
        counts = group.pivot_table(index="depth", columns="context_length", values="n", aggfunc="sum")
        correct, counts = correct.sort_index().sort_index(axis=1), counts.sort_index().sort_index(axis=1)
        data = np.ma.masked_invalid((correct / counts).to_numpy(dtype=float))
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=colormaps["RdYlGn"].with_extremes(bad="0.85"),
                          aspect="auto", interpolation="nearest")
        ax.set_xticks(range(counts.shape[1]), [_length_text(c) for c in counts.columns],
                      rotation=45 if counts.shape[1] > 6 else 0)
        ax.set_yticks(range(counts.shape[0]), [_depth_text(d, fractions) for d in counts.index])
        ns = counts.to_numpy(dtype=float)
        uniform_n = len(set(ns[np.isfinite(ns)].tolist())) == 1
        show_numbers = annotate if annotate is not None else counts.size <= 120
        if show_numbers:
            for i in range(counts.shape[0]):
                for j in range(counts.shape[1]):
                    if not np.ma.is_masked(data[i, j]):
                        text = f"{data[i, j]:.1f}" + ("" if uniform_n else f"\nn={int(ns[i, j])}")
                        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black")
        title = _series_label(skey, extra)
        if uniform_n:
            title += f" (n={int(ns[np.isfinite(ns)][0])} per cell)"
        ax.set_title(title)
        ax.set_xlabel(CTX_XLABEL)
        ax.set_ylabel("Passkey depth" + (" (fraction of prompt)" if fractions else ""))
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("Passkey accuracy")
    colorbar.ax.set_gid("colorbar")
    return fig


# ---------------------------------------------------------------------------------------------
# Leaderboard bars
# ---------------------------------------------------------------------------------------------

def _task_text(task: str, metric: str, fewshot=None) -> str:
    text = f"{task_display(task)}\n{metric}"
    if not is_missing(fewshot):
        text += f", {format_number(fewshot)}-shot"
    return text


def plot_leaderboard(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """Leaderboard scores as grouped bars.

    One group per (task, metric), methods side by side with base first (grey, hatched) and a
    dashed base level across each group; error bars from `stderr`. Bar heights are the `value`s
    as stored.
    """
    if frame.empty:
        return _empty_figure("no leaderboard rows")
    frame = frame.copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["stderr"] = pd.to_numeric(frame.get("stderr"), errors="coerce")
    tasks = leaderboard_columns(frame)
    task_index = {tm: i for i, tm in enumerate(tasks)}
    fewshot = {}
    if "num_fewshot" in frame:
        for (t, m), g in frame.groupby(["task", "metric"]):
            shots = g["num_fewshot"].dropna().unique()
            fewshot[(t, m)] = shots[0] if len(shots) == 1 else None
    extra = _extra_keys(frame)
    series = _ordered_series(frame, extra)
    n = len(series)
    width = 0.8 / max(n, 1)
    fig, (ax,) = _new_figure(1, panel_size=(max(6.0, 1.2 + len(tasks) * (0.6 + 0.35 * n)), 4.8))
    styler = _Styler(frame)
    for i, (skey, group) in enumerate(series):
        is_base = split_label(skey["method"])[0] == "base"
        xs = [task_index[(t, m)] - 0.4 + width * (i + 0.5) for t, m in zip(group["task"], group["metric"])]
        heights = group["value"].to_numpy(dtype=float)
        errors = group["stderr"].to_numpy(dtype=float)
        style = (dict(color="0.8", hatch="//", edgecolor="0.35") if is_base
                 else dict(color=styler.color(skey["method"]), edgecolor="white"))
        yerr = errors if np.isfinite(errors).any() else None
        ax.bar(xs, heights, width=width * 0.95, yerr=yerr, capsize=2, label=_series_label(skey, extra),
               error_kw=dict(elinewidth=0.8, ecolor="0.2"), gid="bars", **style)
        if is_base:
            for (t, m), h in zip(zip(group["task"], group["metric"]), heights):
                centre = task_index[(t, m)]
                ax.hlines(h, centre - 0.45, centre + 0.45, colors="0.35", linestyles="--", linewidth=1,
                          gid="base_reference")
    ax.set_xticks(range(len(tasks)), [_task_text(t, m, fewshot.get((t, m))) for t, m in tasks])
    ax.set_ylabel("Score (higher is better)")
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    top = np.nanmax(frame["value"].to_numpy(dtype=float)) if frame["value"].notna().any() else 1.0
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize="small", frameon=False, ncols=min(n, 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.18))
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Attention temperature sweep
# ---------------------------------------------------------------------------------------------

def plot_temperature_sweep(frame: pd.DataFrame, context_length: int | None = None,
                           value: str = "ppl") -> Figure:
    """Perplexity against √(1/t) for several s (`tables.temperature_sweep`).

    One line per s (static-YaRN rows: x read from `yarn:attention_factor=X` labels, 0.1·ln(s)+1
    for plain `yarn`), a star at each line's minimum and a dotted vertical line at the formula
    value 0.1·ln(s)+1; one panel per (dataset, protocol). Uses the rows of one context length:
    `context_length`, or the only one, or the largest one every s has.
    """
    length, curves = tables.temperature_sweep(frame, context_length, value)
    if curves.empty:
        return _empty_figure("no YaRN rows to sweep" if context_length is None
                             else f"no YaRN rows at context length {context_length}")
    panels = ordered_groups(curves, ["dataset", "protocol"])
    fig, axes = _new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(6.4, 4.6))
    extra = _extra_keys(curves)
    cmap_colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                   "tab:gray", "tab:olive", "tab:cyan"]
    factor_list = sorted({float(f) for f in curves["factor"]})
    for ax, (key, panel) in zip(axes, panels):
        groups = ordered_groups(panel, extra + ["factor", "variant"])
        for n, (gkey, group) in enumerate(groups):
            s = float(gkey["factor"])
            slot = factor_list.index(s) if len(groups) == len(factor_list) else n
            color = cmap_colors[slot % len(cmap_colors)]
            x = group["sqrt_inv_t"].to_numpy(dtype=float)
            y = group["value"].to_numpy(dtype=float)
            best = int(np.flatnonzero(group["best"].to_numpy())[0])
            prefix = " / ".join(str(gkey[c]) for c in extra)
            label = f"s={format_number(s)}"
            if gkey["variant"] != "yarn":
                label += " (" + gkey["variant"].split(":", 1)[1] + ")"
            if prefix:
                label = f"{prefix}: {label}"
            ax.plot(x, y, color=color, marker="o", markersize=4, linewidth=1.6,
                    label=f"{label}: best {x[best]:.3g}, formula {yarn_mscale(s):.3g}", gid="series")
            ax.plot([x[best]], [y[best]], color=color, marker="*", markersize=14, linestyle="none",
                    markeredgecolor="black", markeredgewidth=0.6, label="_minimum", gid="minimum")
            ax.axvline(yarn_mscale(s), color=color, linestyle=":", linewidth=1.4,
                       label="_formula", gid="formula")
        ax.set_xlabel("√(1/t)  (YaRN attention factor; star: minimum, dotted: 0.1·ln(s)+1)")
        ax.set_ylabel(PPL_YLABEL)
        dataset, protocol = key.get("dataset", ""), key.get("protocol", "")
        ax.set_title(f"{dataset} ({protocol}), context {_length_text(length)}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# RULER
# ---------------------------------------------------------------------------------------------

def plot_ruler_heatmap(frame: pd.DataFrame, annotate: bool | None = None) -> Figure:
    """RULER scores (`tables.ruler_scores`) as a task (y) × context length (x) heatmap per method.

    One panel per (method, factor) (and run / model when they vary), a shared colorbar over 0..1,
    grey where a cell has no row. Each annotated cell shows its score and its samples n.
    """
    scores = tables.ruler_scores(frame)
    if scores.empty:
        return _empty_figure("no RULER rows")
    extra = _extra_keys(scores)
    series = _ordered_series(scores, extra)
    task_list = sorted(scores["task"].unique(), key=tables.ruler_task_sort_key)
    lengths = sorted({float(x) for x in scores["context_length"]})
    fig, axes = _new_figure(len(series), ncols=min(len(series), 3),
                            panel_size=(1.6 + 0.9 * len(lengths), 1.2 + 0.45 * len(task_list)), extra_width=0.8)
    image = None
    for ax, (skey, group) in zip(axes, series):
        score = group.pivot_table(index="task", columns="context_length", values="score", aggfunc="mean")
        count = group.pivot_table(index="task", columns="context_length", values="n", aggfunc="sum")
        score = score.reindex(index=task_list, columns=lengths)
        count = count.reindex(index=task_list, columns=lengths)
        data = np.ma.masked_invalid(score.to_numpy(dtype=float))
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=colormaps["RdYlGn"].with_extremes(bad="0.85"),
                          aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(lengths)), [_length_text(x) for x in lengths])
        ax.set_yticks(range(len(task_list)), task_list)
        if annotate if annotate is not None else data.size <= 150:
            ns = count.to_numpy(dtype=float)
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    if not np.ma.is_masked(data[i, j]):
                        ax.text(j, i, f"{data[i, j]:.2f}\nn={int(ns[i, j])}", ha="center", va="center",
                                fontsize=7, color="black", gid="annotation")
        ax.set_title(_series_label(skey, extra))
        ax.set_xlabel(CTX_XLABEL)
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("RULER score (string_match_all)")
    colorbar.ax.set_gid("colorbar")
    return fig


def plot_ruler_mean(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """The RULER mean (`tables.ruler_means`: unweighted mean of the task scores) against context
    length, one line per (method, factor) (and run / model when they vary), a dashed vertical line
    at each original context L (gid `original_ctx`); lines have gid `series`."""
    means = tables.ruler_means(tables.ruler_scores(frame))
    if means.empty:
        return _empty_figure("no RULER rows")
    extra = _extra_keys(means)
    styler = _Styler(means)
    fig, (ax,) = _new_figure(1, panel_size=(7.0, 4.8))
    for skey, group in _ordered_series(means, extra):
        group = group.sort_values("context_length")
        ax.plot(group["context_length"].astype(float), group["mean_score"].astype(float),
                color=styler.color(skey["method"]), marker=styler.marker(skey["factor"]), markersize=4,
                linestyle=styler.linestyle(skey["method"]), linewidth=1.6, label=_series_label(skey, extra),
                gid="series")
    mark_original_context(ax, means["original_ctx"])
    length_axis(ax, means["context_length"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(CTX_XLABEL)
    ax.set_ylabel("RULER mean score over tasks (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# A whole run folder
# ---------------------------------------------------------------------------------------------

def plot_run(results_dir: str | os.PathLike) -> list[Path]:
    """Writes every figure the folder's tables allow to `<dir>/figures/<name>.png|pdf`.

    `perplexity` (static-YaRN attention-factor variants go to `temperature` instead when a sweep
    exists), `positions` (NLL vs token position, `position_plot`), `temperature`, `passkey`,
    `leaderboard`, `ruler` (task × length heatmaps) and `ruler_mean` (RULER mean vs length). Missing
    or empty tables are skipped.

    Returns:
        The written paths.
    """
    results_dir = Path(results_dir)
    figures = results_dir / "figures"
    written: list[Path] = []

    ppl = load_perplexity(results_dir)
    if not ppl.empty:
        if has_temperature_sweep(ppl):
            written += save_figure(plot_temperature_sweep(ppl), figures / "temperature")
            swept = ppl["method"].map(
                lambda m: split_label(m)[0] == "yarn" and "attention_factor" in split_label(m)[1])
            if (~swept).any():
                ppl = ppl[~swept]
        written += save_figure(plot_perplexity(ppl), figures / "perplexity")
    positions = read_table(results_dir, "perplexity_positions")
    if not positions.empty:
        from .position_plot import plot_nll_by_position  # it builds on this module's helpers

        written += save_figure(plot_nll_by_position(positions), figures / "positions")
    passkey = read_table(results_dir, "passkey")
    if not passkey.empty:
        written += save_figure(plot_passkey_heatmap(passkey), figures / "passkey")
    leaderboard = read_table(results_dir, "leaderboard")
    if not leaderboard.empty:
        written += save_figure(plot_leaderboard(leaderboard), figures / "leaderboard")
    ruler = read_table(results_dir, "ruler")
    if not ruler.empty:
        written += save_figure(plot_ruler_heatmap(ruler), figures / "ruler")
        written += save_figure(plot_ruler_mean(ruler), figures / "ruler_mean")
    return written
