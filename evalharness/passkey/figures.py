"""The passkey figure: accuracy as a context length × depth heatmap (`figures/passkey`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.display import format_number, ordered_groups, plural, varying
from ..plots import common_n, empty_figure, heatmap, new_figure, save_figure, series_label, with_model
from ..results import read_table
from .analysis import passkey_accuracy


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
    """Passkey accuracy (`passkey.analysis.passkey_accuracy`) as a context length (x) × depth (y) heatmap.

    One panel per series (method, factor, and the scoring rule, run or model when they vary),
    titled in words (`Dynamic-YaRN, re-rotated KV cache`); a shared colorbar over 0..1; L marked
    between the columns; a figure title with the model and the prompts per cell (n) when every
    cell has the same n, else each annotated cell shows its own n. More than `max_depth_bins`
    distinct depths (random depths) are binned.
    """
    if frame.empty:
        return empty_figure("no passkey rows")
    frame = frame.copy()
    frame["depth"] = _depth_bins(frame["depth"], max_depth_bins)
    acc = passkey_accuracy(frame)
    extra = varying(acc, ["run", "model", "scoring"])
    series = ordered_groups(acc, [c for c in extra if c != "scoring"] + ["method", "factor"]
                            + (["scoring"] if "scoring" in extra else []))
    n_lengths, n_depths = acc["context_length"].nunique(), acc["depth"].nunique()
    panel = (max(3.4, 1.5 + 0.7 * n_lengths), max(2.8, 1.3 + 0.4 * n_depths))
    fig, axes = new_figure(len(series), ncols=min(len(series), 4), panel_size=panel, extra_width=0.9)
    fractions = bool(acc["depth"].max() <= 1.0)
    tables_ = []
    for _, group in series:
        correct = group.pivot_table(index="depth", columns="context_length", values="correct", aggfunc="sum")
        counts = group.pivot_table(index="depth", columns="context_length", values="n", aggfunc="sum")
        tables_.append((correct.sort_index().sort_index(axis=1), counts.sort_index().sort_index(axis=1)))
    uniform_n = common_n([counts for _, counts in tables_])
    image = None
    for ax, (skey, group), (correct, counts) in zip(axes, series, tables_):
        show_numbers = annotate if annotate is not None else counts.size <= 120
        image = heatmap(ax, correct / counts, counts, uniform_n is not None, show_numbers,
                         group["original_ctx"] if "original_ctx" in group else pd.Series(dtype=float))
        ax.set_yticks(range(counts.shape[0]), [_depth_text(d, fractions) for d in counts.index])
        ax.set_title(series_label(skey, [c for c in extra if c != "scoring"]), fontsize="medium")
        ax.set_ylabel("Passkey depth" + (" (fraction of prompt)" if fractions else ""))
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    colorbar.set_label("Passkey accuracy")
    colorbar.ax.set_gid("colorbar")
    title = "passkey retrieval accuracy" + (f" (n={plural(uniform_n, 'prompt')} per cell)" if uniform_n else "")
    fig.suptitle(with_model(title, acc) if "model" not in extra else title)
    return fig


def figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """`passkey` (the heatmap) when the folder has passkey rows; the written paths."""
    passkey = read_table(results_dir, "passkey")
    return [] if passkey.empty else save_figure(plot_passkey_heatmap(passkey), figures_dir / "passkey")
