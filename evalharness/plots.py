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
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from .results import SCHEMAS, ResultStore, aggregate_perplexity

PPL_YLABEL = "Perplexity (lower is better)"
CTX_XLABEL = "Context window (tokens)"

# Display names and the fixed order/colour of known methods (labels as written by ScalingSpec.label).
METHOD_NAMES = {
    "base": "Base",
    "pi": "PI",
    "ntk": "NTK",
    "ntk-by-parts": "NTK-by-parts",
    "yarn": "YaRN",
    "dynamic-pi": "Dynamic-PI",
    "dynamic-ntk": "Dynamic-NTK",
    "dynamic-yarn": "Dynamic-YaRN",
}
METHOD_ORDER = list(METHOD_NAMES)
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
# Methods whose result rows carry factor 1 because they do not read it (ScalingSpec normalises).
FACTORLESS = {"base", "dynamic-pi", "dynamic-ntk", "dynamic-yarn"}
_SPARE_COLORS = ["tab:green", "tab:brown", "tab:gray", "darkgoldenrod", "teal", "navy", "crimson",
                 "darkviolet", "slategray", "sienna"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]

TASK_NAMES = {
    "arc_challenge": "ARC-c",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "truthfulqa_mc2": "TruthfulQA",
}
TASK_ORDER = list(TASK_NAMES)


# ---------------------------------------------------------------------------------------------
# Labels and ordering
# ---------------------------------------------------------------------------------------------

def split_label(label: str) -> tuple[str, dict[str, str]]:
    """`yarn:attention_factor=1.1:truncate=false` → ("yarn", {"attention_factor": "1.1", ...})."""
    parts = [p.strip() for p in str(label).split(":")]
    options = {}
    for item in parts[1:]:
        key, sep, value = item.partition("=")
        if sep:
            options[key.strip()] = value.strip()
    return parts[0], options


def _num(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def method_display(method: str, factor=None) -> str:
    """Legend text for a (method label, factor): `YaRN s=2`, `Dynamic-YaRN`, `Base`,
    `YaRN s=2 (attention_factor=1.1)`. Unknown methods keep their name."""
    name, options = split_label(method)
    if name == "native":  # the model's shipped RoPE: `native (yarn s=16)`
        from .methods import native_display

        return native_display(options.get("rope_type"), factor if factor is not None and not _isnan(factor) else 1)
    text = METHOD_NAMES.get(name, name)
    if factor is not None and not _isnan(factor):
        if name not in FACTORLESS and not (name not in METHOD_NAMES and float(factor) == 1.0):
            text += f" s={_num(factor)}"
    if options:
        text += " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    return text


def _isnan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def method_sort_key(method: str, factor=None) -> tuple:
    """Base first, then PI, NTK, NTK-by-parts, YaRN, dynamic variants, unknown methods; by factor;
    plain labels before labels with options."""
    name, options = split_label(method)
    rank = METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER)
    f = float(factor) if factor is not None and not _isnan(factor) else 0.0
    return (rank, name, f, len(options), str(method))


def _extra_keys(frame: pd.DataFrame) -> list[str]:
    """Columns that tell series apart beyond (method, factor) when they vary: run folder, model."""
    return [c for c in ("run", "model") if c in frame.columns and frame[c].nunique(dropna=False) > 1]


def _series_label(key: dict, extra: Sequence[str]) -> str:
    prefix = " / ".join(str(key[c]) for c in extra)
    label = method_display(key["method"], key.get("factor"))
    return f"{prefix}: {label}" if prefix else label


def _ordered_series(frame: pd.DataFrame, extra: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    keys = list(extra) + ["method", "factor"]
    groups = []
    for values, group in frame.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        groups.append((dict(zip(keys, values)), group))
    groups.sort(key=lambda kg: (tuple(str(kg[0][c]) for c in extra),)
                + method_sort_key(kg[0]["method"], kg[0]["factor"]))
    return groups


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
    return _num(value)


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


def _panels(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Groups of a frame by the given columns (absent columns ignored), in sorted order."""
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return [({}, frame)]
    out = []
    for values, group in frame.groupby(columns, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(columns, values)), group))
    return out


def _empty_figure(message: str) -> Figure:
    fig, (ax,) = _new_figure(1)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def save_figure(fig: Figure, path_without_ext: str | os.PathLike, dpi: int = 150) -> list[Path]:
    """Write `<path>.png` and `<path>.pdf` (folders created); return both paths."""
    base = str(path_without_ext)
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{base}.{ext}")
        fig.savefig(path, dpi=dpi, format=ext)
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
    if protocol == "sliding" and stride is not None and not _isnan(stride) and float(stride) > 0:
        title += f", stride {_num(stride)}"
    elif stride_varies and stride is not None and not _isnan(stride):
        title += f", stride {_num(stride)}"
    return title + (")" if protocol else "")


def plot_perplexity(frame: pd.DataFrame, value: str = "ppl", ci: bool = False,
                    ylim: tuple[float, float] | None = None, title: str | None = None) -> Figure:
    """Perplexity against context length, one line per (method, factor) (and per model / run when
    those vary), log y, a dashed vertical line at each original context L; one panel per
    (dataset, protocol[, stride]). `value`: `ppl` (token-weighted) or `ppl_window_mean`;
    `ci=True` shades the bootstrap interval (ppl only). Non-finite values are left out."""
    frame = frame.copy()
    if frame.empty:
        return _empty_figure("no perplexity rows")
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    frame = frame[np.isfinite(frame[value]) & (frame[value] > 0)]
    if frame.empty:
        return _empty_figure("no finite perplexity values")
    stride_varies = "stride" in frame and frame.groupby(["dataset", "protocol"])["stride"].nunique().gt(1).any()
    panel_columns = ["dataset", "protocol"] + (["stride"] if "stride" in frame else [])
    panels = _panels(frame, panel_columns)
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
            for ctx in sorted({float(c) for c in panel["original_ctx"].dropna()}):
                ax.axvline(ctx, color="0.35", linestyle="--", linewidth=1.2, zorder=0.5,
                           label=f"Original context L={_length_text(ctx)}", gid="original_ctx")
        lengths = sorted({float(v) for v in panel["context_length"]})
        if len(lengths) <= 12:
            ax.xaxis.set_major_locator(FixedLocator(lengths))
        ax.xaxis.set_major_formatter(FuncFormatter(_length_text))
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

def _as_bool_series(values: pd.Series) -> pd.Series:
    if values.dtype == bool:
        return values.astype(float)
    mapping = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
    return values.map(lambda v: mapping.get(str(v).strip().lower(), np.nan) if not isinstance(v, (int, float, np.number))
                      else float(v))


def passkey_accuracy(frame: pd.DataFrame, by: Sequence[str] = ("context_length", "depth")) -> pd.DataFrame:
    """Mean of `correct` over trials, per key columns present + `by`; column `accuracy`, `trials`."""
    frame = frame.copy()
    frame["correct"] = _as_bool_series(frame["correct"])
    keys = [c for c in ("run", "model", "method", "factor", "original_ctx") if c in frame.columns] + list(by)
    out = frame.groupby(keys, dropna=False)["correct"].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "accuracy", "count": "trials"})


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
    return f"{value:.0%}" if fractions else _num(round(value, 3))


def plot_passkey_heatmap(frame: pd.DataFrame, max_depth_bins: int = 20, annotate: bool | None = None) -> Figure:
    """Passkey accuracy (mean of `correct` over trials) as a context length (x) × depth (y)
    heatmap, one panel per (method, factor) (and model / run when they vary), a shared colorbar
    over 0..1. More than `max_depth_bins` distinct depths (random depths) are binned."""
    if frame.empty:
        return _empty_figure("no passkey rows")
    frame = frame.copy()
    frame["depth"] = _depth_bins(frame["depth"], max_depth_bins)
    acc = passkey_accuracy(frame)
    extra = _extra_keys(acc)
    series = _ordered_series(acc, extra)
    fig, axes = _new_figure(len(series), ncols=min(len(series), 4), panel_size=(4.2, 3.6), extra_width=0.8)
    fractions = bool(acc["depth"].max() <= 1.0)
    image = None
    for ax, (skey, group) in zip(axes, series):
        grid = group.pivot_table(index="depth", columns="context_length", values="accuracy", aggfunc="mean")
        grid = grid.sort_index().sort_index(axis=1)
        data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
        image = ax.imshow(data, vmin=0.0, vmax=1.0, cmap=colormaps["RdYlGn"].with_extremes(bad="0.85"),
                          aspect="auto", interpolation="nearest")
        ax.set_xticks(range(grid.shape[1]), [_length_text(c) for c in grid.columns],
                      rotation=45 if grid.shape[1] > 6 else 0)
        ax.set_yticks(range(grid.shape[0]), [_depth_text(d, fractions) for d in grid.index])
        show_numbers = annotate if annotate is not None else grid.size <= 120
        if show_numbers:
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    if not np.ma.is_masked(data[i, j]):
                        ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7, color="black")
        ax.set_title(_series_label(skey, extra))
        ax.set_xlabel(CTX_XLABEL)
        ax.set_ylabel("Passkey depth" + (" (fraction of prompt)" if fractions else ""))
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("Passkey accuracy")
    colorbar.ax.set_gid("colorbar")
    return fig


# ---------------------------------------------------------------------------------------------
# Leaderboard bars
# ---------------------------------------------------------------------------------------------

def task_sort_key(task: str) -> tuple:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _task_text(task: str, metric: str, fewshot=None, show_metric: bool = True) -> str:
    text = TASK_NAMES.get(task, task)
    bits = []
    if show_metric:
        bits.append(str(metric))
    if fewshot is not None and not _isnan(fewshot):
        bits.append(f"{_num(fewshot)}-shot")
    return text + ("\n" + ", ".join(bits) if bits else "")


def plot_leaderboard(frame: pd.DataFrame, title: str | None = None) -> Figure:
    """Grouped bars: one group per (task, metric), methods side by side with base first
    (grey, hatched) and a dashed base level across each group; error bars from `stderr`.
    Bar heights are the `value`s as stored."""
    if frame.empty:
        return _empty_figure("no leaderboard rows")
    frame = frame.copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["stderr"] = pd.to_numeric(frame.get("stderr"), errors="coerce")
    tasks = sorted({(t, m) for t, m in zip(frame["task"], frame["metric"])}, key=lambda tm: task_sort_key(tm[0]) + (tm[1],))
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
    ax.set_xticks(range(len(tasks)), [_task_text(t, m, fewshot.get((t, m)), show_metric=True) for t, m in tasks])
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

def yarn_default_attention(factor: float) -> float:
    """√(1/t) = 0.1·ln(s) + 1 (the YaRN paper's recommended temperature)."""
    return 0.1 * math.log(float(factor)) + 1.0


def temperature_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The static-YaRN rows of a perplexity frame with `sqrt_inv_t` (the label's
    attention_factor, or 0.1·ln(s)+1 when absent) and `variant` (the label without it)."""
    if frame.empty:
        return frame.assign(sqrt_inv_t=pd.Series(dtype=float), variant=pd.Series(dtype=str))
    rows = []
    for index, row in frame.iterrows():
        name, options = split_label(row["method"])
        if name != "yarn":
            continue
        raw = options.pop("attention_factor", options.pop("mscale", None))
        try:
            x = float(raw) if raw is not None else yarn_default_attention(row["factor"])
        except ValueError:
            continue
        variant = name + "".join(f":{k}={v}" for k, v in options.items())
        rows.append((index, x, variant))
    if not rows:
        return frame.iloc[0:0].assign(sqrt_inv_t=pd.Series(dtype=float), variant=pd.Series(dtype=str))
    index, xs, variants = zip(*rows)
    out = frame.loc[list(index)].copy()
    out["sqrt_inv_t"] = xs
    out["variant"] = variants
    return out


def has_temperature_sweep(frame: pd.DataFrame) -> bool:
    """True when some s has static-YaRN rows at ≥ 2 attention factors (something to sweep)."""
    rows = temperature_rows(frame)
    if rows.empty:
        return False
    return bool(rows.groupby(["factor", "variant"])["sqrt_inv_t"].nunique().ge(2).any())


def _sweep_length(rows: pd.DataFrame) -> float:
    lengths = sorted({float(v) for v in rows["context_length"]})
    if len(lengths) == 1:
        return lengths[0]
    shared = None
    for _, group in rows.groupby("factor"):
        mine = {float(v) for v in group["context_length"]}
        shared = mine if shared is None else shared & mine
    return max(shared) if shared else lengths[-1]


def plot_temperature_sweep(frame: pd.DataFrame, context_length: int | None = None, value: str = "ppl") -> Figure:
    """Perplexity against √(1/t) for several s, one line per s (from static-YaRN rows, x read from
    `yarn:attention_factor=X` labels, 0.1·ln(s)+1 for plain `yarn`), a star at each line's
    minimum and a dotted vertical line at the formula value 0.1·ln(s)+1. Uses the rows of one
    context length: `context_length`, or the only one, or the largest one every s has.
    One panel per (dataset, protocol)."""
    rows = temperature_rows(frame)
    if rows.empty:
        return _empty_figure("no YaRN rows to sweep")
    rows = rows.copy()
    rows[value] = pd.to_numeric(rows[value], errors="coerce")
    rows = rows[np.isfinite(rows[value])]
    if context_length is None:
        context_length = _sweep_length(rows)
    rows = rows[rows["context_length"].astype(float) == float(context_length)]
    if rows.empty:
        return _empty_figure(f"no YaRN rows at context length {context_length}")
    panels = _panels(rows, ["dataset", "protocol"])
    fig, axes = _new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(6.4, 4.6))
    extra = _extra_keys(rows)
    cmap_colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                   "tab:gray", "tab:olive", "tab:cyan"]
    factor_list = sorted({float(f) for f in rows["factor"]})
    for ax, (key, panel) in zip(axes, panels):
        keys = extra + ["factor", "variant"]
        groups = sorted(panel.groupby(keys, sort=False), key=lambda kg: (tuple(str(v) for v in kg[0][:-2]),
                                                                          float(kg[0][-2]), kg[0][-1]))
        for n, (gkey, group) in enumerate(groups):
            gkey = dict(zip(keys, gkey))
            s = float(gkey["factor"])
            group = group.groupby("sqrt_inv_t", as_index=False)[value].mean().sort_values("sqrt_inv_t")
            color = cmap_colors[(factor_list.index(s) if len(groups) == len(factor_list) else n) % len(cmap_colors)]
            x = group["sqrt_inv_t"].to_numpy(dtype=float)
            y = group[value].to_numpy(dtype=float)
            best = int(np.argmin(y))
            prefix = " / ".join(str(gkey[c]) for c in extra)
            label = f"s={_num(s)}"
            if gkey["variant"] != "yarn":
                label += " (" + gkey["variant"].split(":", 1)[1] + ")"
            if prefix:
                label = f"{prefix}: {label}"
            ax.plot(x, y, color=color, marker="o", markersize=4, linewidth=1.6,
                    label=f"{label}: best {x[best]:.3g}, formula {yarn_default_attention(s):.3g}", gid="series")
            ax.plot([x[best]], [y[best]], color=color, marker="*", markersize=14, linestyle="none",
                    markeredgecolor="black", markeredgewidth=0.6, label="_minimum", gid="minimum")
            ax.axvline(yarn_default_attention(s), color=color, linestyle=":", linewidth=1.4,
                       label="_formula", gid="formula")
        ax.set_xlabel("√(1/t)  (YaRN attention factor; star: minimum, dotted: 0.1·ln(s)+1)")
        ax.set_ylabel(PPL_YLABEL)
        dataset, protocol = key.get("dataset", ""), key.get("protocol", "")
        ax.set_title(f"{dataset} ({protocol}), context {_length_text(context_length)}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# A whole run folder
# ---------------------------------------------------------------------------------------------

def read_table(results_dir: str | os.PathLike, table: str) -> pd.DataFrame:
    """`<dir>/<table>.csv` as `ResultStore.read` reads it; an empty frame with the schema's columns
    when the file is missing or unreadable (figures never fail a run)."""
    try:
        return ResultStore(results_dir).read(table)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return pd.DataFrame(columns=SCHEMAS.get(table, []))


def load_perplexity(results_dir: str | os.PathLike) -> pd.DataFrame:
    """perplexity.csv, or the aggregate of perplexity_docs.csv when only that exists."""
    frame = read_table(results_dir, "perplexity")
    if frame.empty:
        docs = read_table(results_dir, "perplexity_docs")
        if not docs.empty:
            frame = aggregate_perplexity(docs)
    return frame


def plot_run(results_dir: str | os.PathLike) -> list[Path]:
    """Every figure the folder's tables allow, written to `<dir>/figures/<name>.png|pdf`:
    `perplexity` (static-YaRN attention-factor variants go to `temperature` instead when a sweep
    exists), `temperature`, `passkey`, `leaderboard`. Missing or empty tables are skipped.
    Returns the written paths."""
    results_dir = Path(results_dir)
    figures = results_dir / "figures"
    written: list[Path] = []

    ppl = load_perplexity(results_dir)
    if not ppl.empty:
        if has_temperature_sweep(ppl):
            written += save_figure(plot_temperature_sweep(ppl), figures / "temperature")
            swept = ppl["method"].map(lambda m: split_label(m)[0] == "yarn" and "attention_factor" in split_label(m)[1])
            if (~swept).any():
                ppl = ppl[~swept]
        written += save_figure(plot_perplexity(ppl), figures / "perplexity")
    passkey = read_table(results_dir, "passkey")
    if not passkey.empty:
        written += save_figure(plot_passkey_heatmap(passkey), figures / "passkey")
    leaderboard = read_table(results_dir, "leaderboard")
    if not leaderboard.empty:
        written += save_figure(plot_leaderboard(leaderboard), figures / "leaderboard")
    return written


def plot_runs(results_dirs: Iterable[str | os.PathLike]) -> dict[Path, list[Path]]:
    """`plot_run` over several folders."""
    return {Path(d): plot_run(d) for d in results_dirs}
