"""The "NLL vs token position" figure from `perplexity_positions.csv` (loss by position).

One panel per (dataset, protocol, window_bos, stride), titled with the model and data set; in it,
one line per method × factor at the panel's largest context length, in the look of
`plots.series_style`: the mean NLL of each position bucket, drawn at the bucket's centre, against
the position inside the window the model read; L marked (`plots.mark_original_context`). Built
from the table only (no torch).
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..plots import (
    empty_figure,
    length_text,
    mark_original_context,
    new_figure,
    panel_title_text,
    position_ticks,
    series_label,
    series_style,
)
from ..tables import ordered_groups, split_label, varying

POSITION_XLABEL = "Token position in the window"
NLL_YLABEL = "Mean NLL per token (lower is better)"


def _without_temperature_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """A temperature sweep's YaRN attention-factor variants are the temperature figure's subject."""
    swept = frame["method"].map(lambda m: "attention_factor" in split_label(str(m))[1])
    return frame[~swept] if (~swept).any() else frame


def plot_nll_by_position(frame: pd.DataFrame, context_length: int | None = None) -> Figure:
    """Mean NLL per position bucket, one line per method × factor, at `context_length` (default:
    each panel's largest); L marked (gid `original_ctx`: a dashed line inside the window, an
    arrow at the edge beyond it); lines have gid `series`."""
    if frame.empty:
        return empty_figure("no loss-by-position rows")
    frame = _without_temperature_variants(frame.copy())
    for column in ("mean_nll", "position_start", "position_end", "context_length"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    panels = ordered_groups(frame, [c for c in ("dataset", "protocol", "window_bos", "stride") if c in frame])
    fig, axes = new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = varying(frame, ["run", "model"])
    for ax, (key, panel) in zip(axes, panels):
        length = context_length or panel["context_length"].max()
        panel = panel[panel["context_length"] == length]
        for skey, group in ordered_groups(panel, extra + ["method", "factor"]):
            group = group.sort_values("position_start")
            centre = (group["position_start"] + group["position_end"]) / 2
            style = series_style(skey["method"], skey["factor"])
            ax.plot(centre, group["mean_nll"], color=style["color"], linestyle=style["linestyle"],
                    marker=style["marker"], markersize=3, linewidth=1.5, label=series_label(skey, extra),
                    gid="series")
        mark_original_context(ax, panel["original_ctx"], [0.0, float(length)])
        position_ticks(ax, float(length))
        ax.set_xlabel(POSITION_XLABEL)
        ax.set_ylabel(NLL_YLABEL)
        width = panel["bucket_width"].iloc[0] if "bucket_width" in panel and len(panel) else None
        title = panel_title_text(key, stride_varies=False)
        title += f", window {length_text(length)}" + (f", buckets of {length_text(width)}" if width else "")
        if "model" not in extra and "model" in panel and panel["model"].nunique() == 1:
            title = f"{panel['model'].iloc[0]}: {title}"
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    return fig
