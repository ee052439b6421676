"""The figures' common look and the loop that draws a run folder's figures.

Every figure is built from result tables only (never from live models) on the Agg canvas directly
(`Figure` + `FigureCanvasAgg`, no pyplot): nothing touches the global backend or pyplot's figure
registry, so this works headless, in tests and in notebooks alike, and figures are freed when
dropped. `save_figure` writes PNG and PDF without a creation date (same tables, same bytes).

Every figure draws a (method, factor) series in one look (`series_style`: colour and marker per
method, dashed for dynamic methods, a shade per factor) and names it in words (`series_label`:
`YaRN s=4`, `Dynamic-YaRN, re-rotated KV cache`); titles name the model and the data set
(`with_model`); a length axis has markers at the measured lengths only, no line across a length a
series lacks (`line_with_gaps`, `length_series`), the uncertainty the tables hold as error bars
(`error_bars`), and L marked (`mark_original_context`: a dashed line inside the measured range, an
arrow at the edge outside it, never a stretched axis); 0..1 scores as annotated heatmaps
(`heatmap`). Artists carry a `gid` so tests and callers can find them: `series` (a data line), `ci`
(error bars), `original_ctx` (L), `annotation` (heatmap cell text), `minimum` / `formula`, `bars`,
`base_reference`. Each task package's `figures` module draws its own figures with these helpers;
`plot_run` asks every registered package for them.

Nothing here imports torch: plotting a results folder needs pandas and matplotlib only.
"""
from __future__ import annotations

import hashlib
import math
import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from matplotlib.transforms import blended_transform_factory

from . import registry
from .analysis.display import (
    SCORING_WORDS,
    format_number,
    is_missing,
    method_display,
    ordered_groups,
    split_label,
    varying,
)
from .method_facts import METHOD_FACTS

CTX_XLABEL = "Context window (tokens)"

# One look per method in every figure: a fixed colour and marker per method name, a dashed line
# for the dynamic methods, and the factor s as a fixed shade of the method's colour (s=4 is the
# colour itself, smaller s darker, larger s lighter), so `YaRN s=4` looks the same everywhere.
METHOD_COLORS = {
    "base": "black",
    "pi": "tab:blue",
    "ntk": "tab:orange",
    "ntk-by-parts": "tab:purple",
    "yarn": "tab:red",
    "dynamic-pi": "tab:cyan",
    "dynamic-ntk": "tab:olive",
    "dynamic-yarn": "tab:pink",
    "native": "tab:green",
}
METHOD_MARKERS = {
    "base": "o",
    "pi": "s",
    "ntk": "^",
    "ntk-by-parts": "v",
    "yarn": "D",
    "dynamic-pi": "s",
    "dynamic-ntk": "^",
    "dynamic-yarn": "D",
    "native": "P",
}
_SPARE_COLORS = ["tab:brown", "tab:gray", "darkgoldenrod", "teal", "navy", "crimson", "darkviolet",
                 "slategray", "sienna", "darkcyan"]
_SPARE_MARKERS = ["X", "<", ">", "h", "p", "*"]
HEATMAP_FONT = 9  # annotation size in points: legible at the saved 150 dpi


# ---------------------------------------------------------------------------------------------
# Series, styles and axes
# ---------------------------------------------------------------------------------------------

def extra_keys(frame: pd.DataFrame) -> list[str]:
    """Columns that tell series apart beyond (method, factor) when they vary: run folder, model."""
    return varying(frame, ["run", "model"])


def series_label(key: dict, extra: Sequence[str] = ()) -> str:
    """A series' label in words: `YaRN s=4`, `Dynamic-YaRN, re-rotated KV cache`, prefixed by the
    values of `extra` columns (run, model) when those vary."""
    label = method_display(key["method"], key.get("factor"))
    scoring = key.get("scoring")
    if scoring in SCORING_WORDS:
        label += f", {SCORING_WORDS[scoring]}"
    prefix = " / ".join(str(key[c]) for c in extra if c != "scoring")
    return f"{prefix}: {label}" if prefix else label


def ordered_series(frame: pd.DataFrame, extra: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    return ordered_groups(frame, list(extra) + ["method", "factor"])


def _stable_index(text: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % n


def series_style(method: str, factor=None) -> dict:
    """The look of a (method, factor) series in every figure: `color`, `marker`, `linestyle`
    (dashed for dynamic methods; a method with options, e.g. `yarn:layers=all`, keeps the method's
    colour with another marker and a dotted line). A fixed function of its arguments."""
    name, options = split_label(str(method))
    color = METHOD_COLORS.get(name) or _SPARE_COLORS[_stable_index(name, len(_SPARE_COLORS))]
    marker = METHOD_MARKERS.get(name) or _SPARE_MARKERS[_stable_index(name, len(_SPARE_MARKERS))]
    if options:  # a variant of the method (e.g. layers=all, attention_factor=…): its colour, another marker, dotted
        variant = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
        others = [m for m in _SPARE_MARKERS if m != marker]
        marker = others[_stable_index(variant, len(others))]
    facts = METHOD_FACTS.get(name)
    if facts is not None and facts.uses_factor and not is_missing(factor) and float(factor) > 0:
        shade = float(np.clip(0.3 * (math.log2(float(factor)) - 2), -0.45, 0.6))
        rgb = np.array(to_rgba(color)[:3])
        rgb = rgb + (1 - rgb) * shade if shade > 0 else rgb * (1 + shade)
        color = to_hex(rgb)
    dynamic = facts.dynamic if facts is not None else name.startswith("dynamic")
    return {"color": color, "marker": marker, "linestyle": ("-." if dynamic else ":") if options else
            ("--" if dynamic else "-")}


def length_text(value, _pos=None) -> str:
    """A token count as axes and titles write it: 4096 → `4k`, 1000 → `1k`, 300 → `300`."""
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


def new_figure(n_panels: int, ncols: int | None = None, panel_size=(6.0, 4.2), extra_width: float = 0.0,
               max_width: float | None = None):
    """A constrained-layout figure on the Agg canvas with `n_panels` axes (unused grid cells removed);
    `max_width` (inches) bounds the figure's width."""
    ncols = ncols or min(n_panels, 3)
    nrows = int(math.ceil(n_panels / ncols))
    width = panel_size[0] * ncols + extra_width
    if max_width is not None:
        width = min(width, max_width)
    fig = Figure(figsize=(width, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, axes[:n_panels]


def empty_figure(message: str) -> Figure:
    """A figure that says why there is nothing to draw."""
    fig, (ax,) = new_figure(1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _single(frame: pd.DataFrame, column: str) -> str | None:
    """The one value of `column` in `frame`, as text, or None when it is absent or varies."""
    if column not in frame or frame[column].nunique() != 1:
        return None
    return str(frame[column].iloc[0])


def with_model(title: str, frame: pd.DataFrame) -> str:
    model = _single(frame, "model")
    return f"{model}: {title}" if model else title


def line_with_gaps(x: Sequence[float], y: Sequence[float], grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a line that breaks where a length of `grid` between its first and last measured
    length is missing: a NaN point there, so no segment spans an unmeasured length."""
    measured = dict(zip((float(v) for v in x), (float(v) for v in y)))
    if not measured:
        return np.array([]), np.array([])
    low, high = min(measured), max(measured)
    xs = [g for g in sorted({float(g) for g in grid} | set(measured)) if low <= g <= high]
    return np.array(xs), np.array([measured.get(g, math.nan) for g in xs])


# ---------------------------------------------------------------------------------------------
# Original context L and length axes
# ---------------------------------------------------------------------------------------------

def mark_original_context(ax, original_ctx: pd.Series, lengths: Sequence[float] | None = None) -> None:
    """Marks each original context L on a length axis (gid `original_ctx`, label "Original context
    L=…"): a dashed vertical line where L lies within the measured `lengths` (with their padding),
    else an arrow at the axis edge pointing towards L, so the axis is never stretched to reach it.
    With `lengths` given, the x limits are set to the measured range plus 5 % padding."""
    contexts = sorted({float(c) for c in original_ctx.dropna()})
    if lengths is not None and len(lengths):
        low, high = min(lengths), max(lengths)
        pad = 0.05 * (high - low) if high > low else 0.1 * high
        ax.set_xlim(low - pad, high + pad)
    low, high = ax.get_xlim()
    for ctx in contexts:
        label = f"Original context L={length_text(ctx)}"
        if lengths is None or low <= ctx <= high:
            ax.axvline(ctx, color="0.35", linestyle="--", linewidth=1.2, zorder=0.5, label=label,
                       gid="original_ctx")
            continue
        right = ctx > high
        transform = blended_transform_factory(ax.transAxes, ax.transAxes)
        text = f"L={length_text(ctx)} →" if right else f"← L={length_text(ctx)}"
        ax.annotate(text, xy=(1.0 if right else 0.0, 0.02), xycoords=transform,
                    ha="right" if right else "left", va="bottom", fontsize="small", color="0.25",
                    gid="original_ctx", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6", lw=0.6))


def position_ticks(ax, length: float) -> None:
    """x ticks at multiples of a power of two (at most 9 from 0 to `length`), written as 4k, 8k, …"""
    step = 2 ** max(0, math.ceil(math.log2(max(float(length), 1.0) / 8)))
    ax.xaxis.set_major_locator(FixedLocator(np.arange(0, float(length) + 1, step)))
    ax.xaxis.set_major_formatter(FuncFormatter(length_text))


def length_axis(ax, context_length: pd.Series) -> None:
    """x ticks at the tested lengths (when at most 12), written as 4k, 32k, …"""
    lengths = sorted({float(v) for v in context_length})
    if len(lengths) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FuncFormatter(length_text))


def fit_titles(fig: Figure) -> None:
    """Wraps each panel title wider than its panel onto more lines (`wrap_at_commas`), so no title
    is cut at the figure's edge or runs into its neighbour's."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # the constrained layout places the panels
    for ax in fig.axes:
        title = ax.title
        text = title.get_text()
        width = title.get_window_extent(renderer).width
        if text and "\n" not in text and width > ax.bbox.width:
            title.set_text(wrap_at_commas(text, max(20, int(len(text) * ax.bbox.width / width))))


def wrap_at_commas(text: str, width: int) -> str:
    """`text` on lines of at most `width` characters, broken after a comma where it can be, else at
    a space."""
    lines: list[str] = []
    for part in text.split(", "):
        if lines and len(lines[-1]) + 2 + len(part) < width:  # room for the comma that may follow
            lines[-1] += ", " + part
        else:
            if lines:
                lines[-1] += ","
            lines.extend(textwrap.wrap(part, width) or [part])
    return "\n".join(lines)


def save_figure(fig: Figure, path_without_ext: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Writes `<path>.png` and `<path>.pdf` (folders created), without a creation date, so the same
    tables give the same files.

    Returns:
        Both paths.
    """
    base = str(path_without_ext)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    fit_titles(fig)
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{base}.{ext}")
        metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, dpi=dpi, format=ext, metadata=metadata)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Series against context length
# ---------------------------------------------------------------------------------------------


def _interval(group: pd.DataFrame, low: str, high: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite (low, high) columns of `group`, or None when the table has no such interval."""
    if not {low, high} <= set(group.columns):
        return None
    lows = pd.to_numeric(group[low], errors="coerce").to_numpy(dtype=float)
    highs = pd.to_numeric(group[high], errors="coerce").to_numpy(dtype=float)
    if "n_docs" in group:  # a bootstrap over one document is no interval (the report shows none either)
        single = pd.to_numeric(group["n_docs"], errors="coerce").to_numpy(dtype=float) < 2
        lows, highs = np.where(single, np.nan, lows), np.where(single, np.nan, highs)
    return (lows, highs) if np.isfinite(lows).any() and np.isfinite(highs).any() else None


def error_bars(ax, x, y, interval, color, horizontal: bool = False) -> None:
    """Error bars (gid `ci`) from y to an interval (low, high) around it; missing ends left out."""
    if interval is None:
        return
    low, high = interval
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(low) & np.isfinite(high) & np.isfinite(y)
    if not keep.any():
        return
    x, y = np.asarray(x, dtype=float)[keep], y[keep]
    err = np.vstack([np.clip(y - low[keep], 0, None), np.clip(high[keep] - y, 0, None)])
    kwargs = dict(fmt="none", ecolor=to_rgba(color, 0.6), elinewidth=1.1, capsize=3, label="_ci")
    container = ax.errorbar(y, x, xerr=err, **kwargs) if horizontal else ax.errorbar(x, y, yerr=err, **kwargs)
    for artist in (*container.lines[1], *container.lines[2]):
        artist.set_gid("ci")


def length_series(ax, group: pd.DataFrame, value: str, grid: Sequence[float], label: str, style: dict,
                   interval: tuple[str, str] | None) -> None:
    """One series against context length: markers at its measured lengths, a line between
    neighbouring measured lengths only, error bars for `interval` where the table has one."""
    group = group.sort_values("context_length")
    x = group["context_length"].astype(float).to_numpy()
    y = group[value].astype(float).to_numpy()
    xs, ys = line_with_gaps(x, y, grid)
    ax.plot(xs, ys, color=style["color"], marker=style["marker"], markersize=5,
            linestyle=style["linestyle"], linewidth=1.6, label=label, gid="series")
    if interval is not None:
        error_bars(ax, x, y, _interval(group, *interval), style["color"])


def legend(ax, **kwargs) -> None:
    """The legend every figure uses: small type on a translucent white box, so a line or the L
    marker that passes behind it fades under its text but stays visible (no data is hidden)."""
    ax.legend(fontsize="small", frameon=True, framealpha=0.6, facecolor="white", edgecolor="none", **kwargs)


def band(ax, x, low, high, color) -> None:
    """A shaded interval around a line (gid `interval`), drawn only where both ends are finite."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    ax.fill_between(np.asarray(x, dtype=float), low, high, where=np.isfinite(low) & np.isfinite(high),
                    color=color, alpha=0.1, linewidth=0, gid="interval")


def dot_interval_panel(ax, series: list[tuple[str, dict, pd.DataFrame]], value: str,
                        interval: tuple[str, str] | None) -> None:
    """One length only: a dot per series at its value with its interval, series side by side."""
    for i, (label, style, group) in enumerate(series):
        y = group[value].astype(float).to_numpy()[:1]
        ax.plot([i], y, color=style["color"], marker=style["marker"], markersize=7, linestyle="none",
                label=label, gid="series")
        if interval is not None:
            error_bars(ax, [i], y, _interval(group.iloc[:1], *interval), style["color"])
    ax.set_xticks(range(len(series)), [label for label, _, _ in series],
                  rotation=30 if len(series) > 6 else 0, ha="right" if len(series) > 6 else "center")
    ax.set_xlim(-0.6, len(series) - 0.4)
    ax.margins(y=0.12)


def context_note(ax, length: float, original_ctx: pd.Series) -> None:
    """Where a one-length panel lies against L: an annotation (gid `original_ctx`)."""
    contexts = sorted({float(c) for c in original_ctx.dropna()})
    if not contexts:
        return
    text = "; ".join(f"{length_text(length)} = {format_number(round(length / c, 2))}·L (L={length_text(c)})"
                     for c in contexts)
    ax.annotate(text, xy=(0.98, 0.97), xycoords="axes fraction", ha="right", va="top", fontsize="small",
                color="0.25", gid="original_ctx", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.6", lw=0.6))


def log_y(ax) -> None:
    ax.set_yscale("log")
    ymin, ymax = ax.get_ylim()
    if ymax / ymin < 100:  # under two decades: label the minor ticks too, in plain numbers
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain_number))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))


def has_interval(frame: pd.DataFrame, interval: tuple[str, str]) -> bool:
    return _interval(frame, *interval) is not None


# ---------------------------------------------------------------------------------------------
# 0..1 heatmaps (length columns)
# ---------------------------------------------------------------------------------------------


def _text_color(value: float, cmap) -> str:
    """Black or white, whichever reads better on the colour of `value`."""
    r, g, b, _ = cmap(float(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _mark_context_columns(ax, lengths: Sequence[float], original_ctx: pd.Series) -> None:
    """L on a heatmap's length axis (gid `original_ctx`): a dashed line between the last column
    ≤ L and the first beyond it, or an arrow at the edge when every column lies on one side."""
    for ctx in sorted({float(c) for c in original_ctx.dropna()}):
        inside = sum(1 for x in lengths if x <= ctx)
        text = f"L={length_text(ctx)}"
        if 0 < inside < len(lengths):
            ax.axvline(inside - 0.5, color="black", linestyle="--", linewidth=1.6, gid="original_ctx",
                       label=f"Original context {text}")
            ax.annotate(text, xy=(inside - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -3),
                        textcoords="offset points", ha="center", va="top", fontsize="small",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.6))
        else:
            right = inside == len(lengths)
            ax.annotate(f"{text} →" if right else f"← {text}", xy=(1.0 if right else 0.0, 1.0),
                        xycoords="axes fraction", xytext=(-3 if right else 3, -3), textcoords="offset points",
                        ha="right" if right else "left", va="top", fontsize="small", gid="original_ctx",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.6))


def heatmap(ax, values: pd.DataFrame, counts: pd.DataFrame, uniform_n: bool, annotate: bool,
             original_ctx: pd.Series, digits: int = 2):
    """A 0..1 heatmap of `values` (rows × length columns), grey where missing, each cell annotated
    with its value (and n when n varies; gid `annotation`), L marked."""
    cmap = colormaps["RdYlGn"].with_extremes(bad="0.85")
    data = np.ma.masked_invalid(values.to_numpy(dtype=float))
    image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto", interpolation="nearest")
    lengths = [float(c) for c in values.columns]
    ax.set_xticks(range(len(lengths)), [length_text(c) for c in lengths],
                  rotation=45 if len(lengths) > 8 else 0)
    if annotate:
        ns = counts.to_numpy(dtype=float)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.ma.is_masked(data[i, j]):
                    text = f"{data[i, j]:.{digits}f}" + ("" if uniform_n else f"\nn={int(ns[i, j])}")
                    ax.text(j, i, text, ha="center", va="center", fontsize=HEATMAP_FONT,
                            color=_text_color(data[i, j], cmap), gid="annotation")
    _mark_context_columns(ax, lengths, original_ctx)
    ax.set_xlabel(CTX_XLABEL)
    return image


def common_n(counts: Sequence[pd.DataFrame]) -> int | None:
    """The one count every cell of `counts` shares (shown once in the title), or None when they differ."""
    values = {int(v) for c in counts for v in c.to_numpy(dtype=float).ravel() if np.isfinite(v)}
    return values.pop() if len(values) == 1 else None


# ---------------------------------------------------------------------------------------------
# A whole run folder
# ---------------------------------------------------------------------------------------------

def plot_run(results_dir: str | os.PathLike, optional: bool = False) -> list[Path]:
    """Writes every figure the folder's tables allow to `<dir>/figures/<name>.png|pdf`.

    Each registered task package draws its own (its `figures` module's `figures`), in registry
    order; missing or empty tables are skipped. With `optional`, also the figures a package
    offers beside them (its `optional_figures`, named in its `OPTIONAL_FIGURES`); without, those
    files are removed so the folder shows what its tables and options give.

    Returns:
        The written paths.
    """
    results_dir = Path(results_dir)
    figures_dir = results_dir / "figures"
    written: list[Path] = []
    for module in registry.package_modules("figures"):
        written += module.figures(results_dir, figures_dir)
        if optional and hasattr(module, "optional_figures"):
            written += module.optional_figures(results_dir, figures_dir)
        elif not optional:
            for stem in getattr(module, "OPTIONAL_FIGURES", ()):
                for ext in ("png", "pdf"):
                    (figures_dir / f"{stem}.{ext}").unlink(missing_ok=True)
    return written
