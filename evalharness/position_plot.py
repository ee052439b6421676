"""The "NLL vs token position" figure from `perplexity_positions.csv` (loss by position).

One panel per (dataset, protocol, window_bos, stride); in it, one line per method × factor at the
panel's largest context length: the mean NLL of each position bucket, drawn at the bucket's centre,
against the position inside the window the model read; a dashed vertical line at each original
context L. Built from the table only (no torch), with the styling of `plots`.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .plots import (
    _empty_figure,
    _extra_keys,
    _length_text,
    _new_figure,
    _ordered_series,
    _ppl_panel_title,
    _Styler,
    mark_original_context,
)
from .tables import method_display, ordered_groups, split_label

POSITION_XLABEL = "Token position in the window"
NLL_YLABEL = "Mean NLL per token (lower is better)"


def _without_temperature_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """A temperature sweep's YaRN attention-factor variants are the temperature figure's subject."""
    swept = frame["method"].map(lambda m: "attention_factor" in split_label(str(m))[1])
    return frame[~swept] if (~swept).any() else frame


def plot_nll_by_position(frame: pd.DataFrame, context_length: int | None = None) -> Figure:
    """Mean NLL per position bucket, one line per method × factor, at `context_length` (default:
    each panel's largest); dashed vertical line (gid `original_ctx`) at L; lines have gid `series`."""
    if frame.empty:
        return _empty_figure("no loss-by-position rows")
    frame = _without_temperature_variants(frame.copy())
    for column in ("mean_nll", "position_start", "position_end", "context_length"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    panels = ordered_groups(frame, [c for c in ("dataset", "protocol", "window_bos", "stride") if c in frame])
    fig, axes = _new_figure(len(panels), ncols=min(len(panels), 2), panel_size=(7.0, 4.8))
    extra = _extra_keys(frame)
    styler = _Styler(frame)
    for ax, (key, panel) in zip(axes, panels):
        length = context_length or panel["context_length"].max()
        panel = panel[panel["context_length"] == length]
        for skey, group in _ordered_series(panel, extra):
            group = group.sort_values("position_start")
            centre = (group["position_start"] + group["position_end"]) / 2
            label = f"{' / '.join(str(skey[c]) for c in extra)}: " if extra else ""
            ax.plot(centre, group["mean_nll"], color=styler.color(skey["method"]),
                    linestyle=styler.linestyle(skey["method"]), marker=styler.marker(skey["factor"]),
                    markersize=3, linewidth=1.5, label=label + method_display(skey["method"], skey["factor"]),
                    gid="series")
        mark_original_context(ax, panel["original_ctx"])
        ax.xaxis.set_major_formatter(FuncFormatter(_length_text))
        ax.set_xlabel(POSITION_XLABEL)
        ax.set_ylabel(NLL_YLABEL)
        width = panel["bucket_width"].iloc[0] if "bucket_width" in panel and len(panel) else None
        title = _ppl_panel_title(key, stride_varies=False)
        title += f", window {_length_text(length)}" + (f", buckets of {_length_text(width)}" if width else "")
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    return fig
