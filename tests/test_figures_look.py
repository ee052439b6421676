"""Figure checks that can fail: axis limits hold the data and L is marked, no line spans a length a
series lacks, a one-length run is a dot-and-interval plot, uncertainty is drawn, the leaderboard
figure stays narrow, and one (method, factor) looks the same in every figure."""
import numpy as np
import pandas as pd

from evalharness.leaderboard.figures import plot_leaderboard
from evalharness.passkey.figures import plot_passkey_heatmap
from evalharness.perplexity.figures import plot_nll_by_position, plot_perplexity
from evalharness.plots import series_style
from evalharness.results import SCHEMAS
from evalharness.ruler.figures import plot_ruler_mean


def ppl_rows(series, lengths_of, original_ctx=8192, ci=True):
    rows = []
    for method, factor in series:
        for length in lengths_of[method]:
            value = 10.0 + length / 4096 + (2 if method == "base" else 0)
            rows.append(dict(model="tiny", method=method, factor=factor, original_ctx=original_ctx, dataset="d",
                             protocol="truncated", window_bos="first", context_length=length, stride=0,
                             n_docs=2, scored_tokens=length, n_windows=2, ppl=value, ppl_paper=value,
                             ppl_ci_low=value - 1 if ci else np.nan, ppl_ci_high=value + 1 if ci else np.nan))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


def series(ax):
    return [line for line in ax.lines if line.get_gid() == "series"]


def context_marks(ax):
    return [a for a in [*ax.lines, *ax.texts] if a.get_gid() == "original_ctx"]


def test_axis_holds_the_data_and_marks_L_inside_with_a_line():
    grid = [4096, 8192, 12288, 16384]
    fig = plot_perplexity(ppl_rows([("base", 1), ("yarn", 4)], {"base": grid, "yarn": grid}))
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    xs = np.concatenate([line.get_xdata() for line in series(ax)])
    assert low < xs.min() and xs.max() < high
    (mark,) = context_marks(ax)
    assert list(mark.get_xdata()) == [8192, 8192]
    assert "tiny" in ax.get_title() and "d (truncated)" in ax.get_title()


def test_L_outside_the_measured_range_is_an_annotation_and_the_axis_is_not_stretched():
    grid = [2048, 4096]
    fig = plot_perplexity(ppl_rows([("base", 1), ("yarn", 4)], {"base": grid, "yarn": grid}))
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    assert high < 8192 and high - low < 1.2 * (4096 - 2048)  # measured range + padding only
    (mark,) = context_marks(ax)
    assert mark.get_text() == "L=8k →"


def test_no_line_segment_spans_a_length_the_series_lacks():
    full = [4096, 8192, 12288, 16384, 20480, 24576, 28672, 32768]
    fig = plot_perplexity(ppl_rows([("yarn", 4), ("dynamic-yarn", 1)],
                                   {"yarn": full, "dynamic-yarn": [4096, 8192, 16384, 32768]}))
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in series(ax)}
    for line in lines.values():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        for i in range(len(x) - 1):
            if np.isfinite(y[i]) and np.isfinite(y[i + 1]):  # a drawn segment joins neighbours of the grid
                assert full.index(x[i + 1]) == full.index(x[i]) + 1
    dynamic = lines["Dynamic-YaRN"]
    finite = [x for x, y in zip(dynamic.get_xdata(), dynamic.get_ydata()) if np.isfinite(y)]
    assert finite == [4096, 8192, 16384, 32768]  # a marker at every measured length
    assert dynamic.get_linestyle() == "--"


def test_the_bootstrap_interval_is_drawn_as_error_bars():
    grid = [4096, 8192]
    fig = plot_perplexity(ppl_rows([("yarn", 4)], {"yarn": grid}))
    (ax,) = fig.axes
    bars = [c for c in ax.collections if c.get_gid() == "ci"]
    (segments,) = [b.get_segments() for b in bars]
    assert [tuple(s[:, 1]) for s in segments] == [(10.0, 12.0), (11.0, 13.0)]
    no_ci = plot_perplexity(ppl_rows([("yarn", 4)], {"yarn": grid}, ci=False))
    assert not [c for c in no_ci.axes[0].collections if c.get_gid() == "ci"]


def test_a_one_length_run_is_a_dot_and_interval_plot_with_L_noted():
    fig = plot_perplexity(ppl_rows([("base", 1), ("pi", 2), ("yarn", 2)], {m: [16384] for m in ("base", "pi", "yarn")}))
    (ax,) = fig.axes
    dots = series(ax)
    assert [list(d.get_xdata()) for d in dots] == [[0], [1], [2]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Base", "PI s=2", "YaRN s=2"]
    assert [m.get_text() for m in context_marks(ax)] == ["16k = 2·L (L=8k)"]
    assert "at 16k" in ax.get_title()
    assert [c for c in ax.collections if c.get_gid() == "ci"]


def test_the_leaderboard_shows_the_headline_numbers_only_and_stays_narrow():
    rows = []
    subjects = [f"mmlu_subject_{i}" for i in range(57)]
    for method, factor in (("base", 1), ("pi", 2), ("ntk", 2), ("yarn", 2)):
        for task, metric in (("arc_challenge", "acc"), ("arc_challenge", "acc_norm"), ("mmlu", "acc_macro"),
                             ("mmlu", "acc_weighted"), ("truthfulqa_mc2", "acc"),
                             *[(s, "acc") for s in subjects]):
            rows.append(dict(model="tiny", method=method, factor=factor, original_ctx=8192, task=task, metric=metric,
                             value=0.5, stderr=0.05, num_fewshot=0, n_samples=100))
    fig = plot_leaderboard(pd.DataFrame(rows, columns=SCHEMAS["leaderboard"]))
    (ax,) = fig.axes
    assert fig.get_size_inches()[0] <= 12.0
    ticks = [t.get_text().split("\n")[:2] for t in ax.get_xticklabels()]
    assert ticks == [["ARC-c", "acc_norm, 0-shot"], ["MMLU", "acc (macro), 0-shot"], ["TruthfulQA", "MC2, 0-shot"]]


def test_one_look_per_method_across_figures():
    grid = [4096, 8192]
    ppl = plot_perplexity(ppl_rows([("base", 1), ("yarn", 4)], {"base": grid, "yarn": grid}))
    ruler = pd.DataFrame([dict(model="tiny", method="yarn", factor=4, original_ctx=8192, task="niah_single_1",
                               context_length=n, score=0.5, n=4, stderr=0.1) for n in grid],
                         columns=SCHEMAS["ruler"])
    mean = plot_ruler_mean(ruler)
    positions = pd.DataFrame([dict(model="tiny", method="yarn", factor=4, original_ctx=8192, dataset="d",
                                   protocol="truncated", window_bos="first", context_length=8192, stride=0,
                                   bucket_width=4096, position_start=s, position_end=s + 4096, n_docs=1,
                                   tokens=4096, nll_sum=4096.0, mean_nll=1.0) for s in (0, 4096)],
                             columns=SCHEMAS["perplexity_positions"])
    by_position = plot_nll_by_position(positions)
    looks = []
    for fig in (ppl, mean, by_position):
        (line,) = [line for line in series(fig.axes[0]) if line.get_label() == "YaRN s=4"]
        looks.append((line.get_color(), line.get_marker(), line.get_linestyle()))
    style = series_style("yarn", 4)
    assert looks == [(style["color"], style["marker"], style["linestyle"])] * 3
    assert series_style("yarn", 2)["color"] != style["color"]  # another s, another shade
    assert "±1 standard error" in mean.axes[0].get_legend().get_title().get_text()


def test_passkey_heatmap_names_the_rerotated_series_in_words_and_marks_L():
    rows = []
    for method, scoring in (("base", "paper"), ("dynamic-yarn", "paper-rerotate")):
        for length in (4096, 8192, 16384):
            rows.append(dict(model="tiny", method=method, factor=1, original_ctx=8192, context_length=length,
                             prompt_tokens=length, depth=0.5, trial=0, seed=0, scoring=scoring, passkey=1,
                             continuation=" 1.", correct=True))
    fig = plot_passkey_heatmap(pd.DataFrame(rows, columns=SCHEMAS["passkey"]))
    panels = [ax for ax in fig.axes if ax.get_gid() != "colorbar"]
    assert [ax.get_title() for ax in panels] == ["Base", "Dynamic-YaRN, re-rotated KV cache"]
    for ax in panels:
        (line,) = [line for line in ax.lines if line.get_gid() == "original_ctx"]
        assert list(line.get_xdata()) == [1.5, 1.5]  # between 8k (≤ L) and 16k
    assert fig.get_suptitle().startswith("tiny: passkey retrieval accuracy")
