"""Figures: each task's figures from its tables (plots.py's common look: L marked, no line across an
unmeasured length, intervals, one look per method), the loss-by-position figure, and plot_run."""
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from tables_data import (
    LEADERBOARD,
    LENGTHS,
    PASSKEY_DEPTHS,
    SERIES,
    L,
    doc_row,
    leaderboard_frame,
    leaderboard_subject_frame,
    passkey_correct,
    passkey_frame,
    perplexity_frame,
    ppl_value,
    sweep_frame,
)

from evalharness.leaderboard.figures import plot_leaderboard, plot_leaderboard_subjects
from evalharness.passkey.figures import plot_passkey_heatmap
from evalharness.perplexity.analysis import (
    aggregate_perplexity,
    aggregate_positions,
    perplexity_ratios,
    positions_intervals,
)
from evalharness.perplexity.figures import (
    figures,
    plot_nll_by_position,
    plot_perplexity,
    plot_perplexity_ratio,
    plot_temperature_sweep,
)
from evalharness.plots import plot_run, save_figure, series_style, wrap_at_commas
from evalharness.results import SCHEMAS, ResultStore
from evalharness.ruler.figures import plot_ruler_mean

# ---- Figures, the run report and the notebooks, on small hand-made tables with the exact schemas.


def series_lines(ax):
    return [line for line in ax.lines if line.get_gid() == "series"]

def test_perplexity_figure_has_one_panel_per_dataset_and_the_papers_look():
    frame = perplexity_frame(datasets=(("d1", "truncated", 0), ("d2", "sliding", 16)))
    fig = plot_perplexity(frame)
    assert len(fig.axes) == 2
    for ax, dataset in zip(fig.axes, ["d1", "d2"]):
        lines = series_lines(ax)
        assert [line.get_label() for line in lines] == ["Base", "PI s=2", "YaRN s=2", "Dynamic-YaRN"]
        for line, (method, factor) in zip(lines, SERIES):
            assert list(line.get_xdata()) == LENGTHS
            expected = [ppl_value(method, factor, n, dataset) for n in LENGTHS]
            assert list(line.get_ydata()) == pytest.approx(expected)
        assert ax.get_yscale() == "log"
        assert ax.get_xlabel() == "Context window (tokens)"
        assert ax.get_ylabel() == "Perplexity (lower is better)"
        (vline,) = [line for line in ax.lines if line.get_gid() == "original_ctx"]
        assert list(vline.get_xdata()) == [L, L] and vline.get_linestyle() == "--"
        assert dataset in ax.get_title()
    assert "sliding" in fig.axes[1].get_title() and "stride 16" in fig.axes[1].get_title()


def test_perplexity_figure_leaves_out_non_finite_values_and_saves_png_and_pdf(tmp_path):
    frame = perplexity_frame()
    frame.loc[(frame["method"] == "base") & (frame["context_length"] == 256), "ppl"] = math.inf
    fig = plot_perplexity(frame)
    base = series_lines(fig.axes[0])[0]
    assert list(base.get_xdata()) == [64, 128]
    paths = save_figure(fig, tmp_path / "sub" / "ppl")
    assert [p.name for p in paths] == ["ppl.png", "ppl.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_passkey_heatmap_shows_the_mean_accuracy_per_length_and_depth(tmp_path):
    store = ResultStore(tmp_path)  # round trip through the CSV: `correct` comes back from text
    store.append("passkey", passkey_frame().to_dict("records"))
    fig = plot_passkey_heatmap(store.read("passkey"))
    panels = [ax for ax in fig.axes if ax.get_gid() != "colorbar"]
    assert len(panels) == 2 and len(fig.axes) == 3  # two panels + the colorbar
    assert [ax.get_title() for ax in panels] == ["Base", "YaRN s=2"]
    assert fig.get_suptitle() == "m: passkey retrieval accuracy (n=3 prompts per cell)"
    for ax, method in zip(panels, ["base", "yarn"]):
        (image,) = ax.images
        expected = np.array([[np.mean([passkey_correct(method, n, d, t) for t in range(3)]) for n in LENGTHS]
                             for d in PASSKEY_DEPTHS])
        np.testing.assert_allclose(np.asarray(image.get_array()), expected)
        assert image.get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "128", "256"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0%", "50%", "100%"]


def test_leaderboard_bars_have_the_values_with_base_first():
    fig = plot_leaderboard(leaderboard_frame())
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["Base", "PI s=2", "YaRN s=2"]
    for container, (key, scores) in zip(bars, LEADERBOARD.items()):
        assert [bar.get_height() for bar in container.patches] == pytest.approx(list(scores.values()))
    assert all(bar.get_hatch() == "//" for bar in bars[0].patches)
    assert not any(bar.get_hatch() for bar in bars[1].patches)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("ARC-c") and "25-shot" in ticks[0] and ticks[2].startswith("MMLU")
    # dashed base level over each task group
    refs = [c for c in ax.collections if c.get_gid() == "base_reference"]
    assert len(refs) == 3


def test_temperature_sweep_marks_each_minimum_and_the_formula():
    fig = plot_temperature_sweep(sweep_frame(), context_length=256)
    (ax,) = fig.axes
    lines = series_lines(ax)
    assert len(lines) == 2
    assert lines[0].get_label().startswith("YaRN s=2") and lines[1].get_label().startswith("YaRN s=4")
    xs2 = sorted([1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 0.1 * math.log(2) + 1])
    assert list(lines[0].get_xdata()) == pytest.approx(xs2)
    minima = [line for line in ax.lines if line.get_gid() == "minimum"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in minima] == [pytest.approx((1.1, 10.0)),
                                                                              pytest.approx((1.15, 10.0))]
    formula = [line for line in ax.lines if line.get_gid() == "formula"]
    expected = [0.1 * math.log(2) + 1, 0.1 * math.log(4) + 1]
    assert [line.get_xdata()[0] for line in formula] == pytest.approx(expected)
    assert "256" in ax.get_title()
    # without context_length: the largest length every s has (256 here) is used
    auto = plot_temperature_sweep(sweep_frame())
    assert list(series_lines(auto.axes[0])[0].get_ydata()) == pytest.approx(list(lines[0].get_ydata()))


def test_plot_run_writes_what_the_tables_allow_and_skips_missing_ones(tmp_path, run_folder):
    paths = plot_run(run_folder)
    names = sorted(p.name for p in paths)
    assert names == ["leaderboard.pdf", "leaderboard.png", "passkey.pdf", "passkey.png", "perplexity.pdf",
                     "perplexity.png"]
    assert all(p.exists() and p.parent == run_folder / "figures" for p in paths)

    only_ppl = tmp_path / "only_ppl"
    ResultStore(only_ppl).replace("perplexity", sweep_frame())
    stems = sorted(p.stem for p in plot_run(only_ppl))
    assert stems == ["perplexity", "perplexity", "temperature", "temperature"]
    assert plot_run(tmp_path / "empty") == []


def test_the_same_figure_saved_twice_gives_the_same_bytes(tmp_path):
    """No creation date in the PDF (or software stamp in the PNG): redrawing unchanged tables
    leaves the committed figures unchanged."""
    import time

    from evalharness.plots import save_figure

    first = save_figure(plot_perplexity(perplexity_frame()), tmp_path / "a" / "ppl")
    time.sleep(1.1)  # PDF dates have one-second resolution
    second = save_figure(plot_perplexity(perplexity_frame()), tmp_path / "b" / "ppl")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


# ----
# Figure checks that can fail: axis limits hold the data and L is marked, no line spans a length a
# series lacks, a one-length run is a dot-and-interval plot, uncertainty is drawn, the leaderboard
# figure stays narrow, and one (method, factor) looks the same in every figure.


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


# ---- The NLL-vs-position figure, from a hand-made positions table.


L_position_plot = 64


def positions_frame():
    rows = []
    for method, factor, slope in (("base", 1.0, 0.02), ("yarn", 2.0, 0.0)):
        for length in (128, 256):
            for start in range(0, length, 16):
                mean = 3.0 + slope * max(0, start - L_position_plot)
                rows.append(dict(model="m", method=method, factor=factor, original_ctx=L_position_plot, dataset="d",
                                 protocol="truncated", window_bos="first", context_length=length, stride=0,
                                 bucket_width=16, position_start=start, position_end=start + 16, n_docs=2,
                                 tokens=32, nll_sum=32 * mean, mean_nll=mean))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity_positions"])


def test_one_line_per_method_at_the_largest_length_with_L_marked():
    fig = plot_nll_by_position(positions_frame())
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_gid() == "series"]
    assert [line.get_label() for line in lines] == ["Base", "YaRN s=2"]
    base = lines[0]
    assert list(base.get_xdata()) == [start + 8 for start in range(0, 256, 16)]  # bucket centres, length 256
    assert base.get_ydata()[-1] == 3.0 + 0.02 * (240 - L_position_plot)
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == "original_ctx"]
    assert list(marker.get_xdata()) == [L_position_plot, L_position_plot]
    assert "window 256" in ax.get_title() and "buckets of 16" in ax.get_title()


def test_a_chosen_length_and_an_empty_table():
    fig = plot_nll_by_position(positions_frame(), context_length=128)
    line = next(line for line in fig.axes[0].get_lines() if line.get_gid() == "series")
    assert max(line.get_xdata()) == 120
    assert not [line for ax in plot_nll_by_position(positions_frame().iloc[:0]).axes for line in ax.get_lines()]


def positions_docs_frame():
    """Base on two documents whose mean NLL differs per bucket, YaRN on one document."""
    rows = []
    for method, factor, docs in (("base", 1.0, ("test/0", "test/1")), ("yarn", 2.0, ("test/0",))):
        for i, doc_id in enumerate(docs):
            for start in range(0, 64, 16):
                tokens = 16 - i * 4  # documents of unequal weight: the token-weighted mean lies between
                mean = 2.0 + 0.5 * i + 0.01 * start
                rows.append(dict(model="m", method=method, factor=factor, original_ctx=32, dataset="d", doc_id=doc_id,
                                 protocol="truncated", window_bos="first", context_length=64, stride=0,
                                 bucket_width=16, position_start=start, position_end=start + 16, tokens=tokens,
                                 nll_sum=tokens * mean, mean_nll=mean))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity_positions_docs"])


def test_positions_intervals_of_two_documents_are_their_two_means():
    """With two documents the bootstrap draws {a,a}, {a,b}, {b,b}; each of the pure draws has
    probability 1/4 > 2.5 %, so the 95 % percentile interval is [min, max] of the two documents'
    mean NLL. One document gives a degenerate interval."""
    intervals = positions_intervals(positions_docs_frame())
    base = intervals[intervals["method"] == "base"].sort_values("position_start")
    starts = [0, 16, 32, 48]
    assert base["position_start"].tolist() == starts
    assert np.allclose(base["mean_nll_ci_low"], [2.0 + 0.01 * s for s in starts], atol=1e-12)
    assert np.allclose(base["mean_nll_ci_high"], [2.5 + 0.01 * s for s in starts], atol=1e-12)
    yarn = intervals[intervals["method"] == "yarn"]
    assert np.allclose(yarn["mean_nll_ci_low"], yarn["mean_nll_ci_high"])


def test_positions_figure_bands_each_series_measured_on_several_documents():
    docs = positions_docs_frame()
    fig = plot_nll_by_position(aggregate_positions(docs), docs=docs)
    (ax,) = fig.axes
    bands = [c for c in ax.collections if c.get_gid() == "interval"]
    assert len(bands) == 1  # Base only: YaRN's one document has no spread to draw
    (band,) = bands
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    assert math.isclose(ys.min(), 2.0, abs_tol=1e-9) and math.isclose(ys.max(), 2.5 + 0.01 * 48, abs_tol=1e-9)
    base = next(line for line in ax.get_lines() if line.get_label() == "Base")
    assert all(2.0 + 0.01 * s < y < 2.5 + 0.01 * s for s, y in zip([0, 16, 32, 48], base.get_ydata()))
    assert "bootstrap interval over documents" in ax.get_legend().get_title().get_text()
    no_bands = plot_nll_by_position(aggregate_positions(docs))
    assert not [c for c in no_bands.axes[0].collections if c.get_gid() == "interval"]


def test_a_title_wider_than_its_panel_is_wrapped_after_a_comma_when_saved(tmp_path):
    long = ", ".join(f"setting {i} of the run" for i in range(12))
    assert wrap_at_commas("a, b, c", 4) == "a,\nb,\nc" and wrap_at_commas("short", 80) == "short"
    fig = plot_nll_by_position(positions_frame())
    (ax,) = fig.axes
    ax.set_title(long)
    save_figure(fig, tmp_path / "wide")
    renderer = fig.canvas.get_renderer()
    lines = ax.get_title().split("\n")
    assert len(lines) > 1 and all(line.endswith(",") for line in lines[:-1])
    assert ax.get_title().replace("\n", " ") == long
    assert ax.title.get_window_extent(renderer).width <= ax.bbox.width


def test_subject_figure_has_a_row_per_subject_and_a_dot_per_method_at_its_score():
    fig = plot_leaderboard_subjects(leaderboard_subject_frame())
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["anatomy", "virology"]  # not the macro row
    dots = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines() if line.get_gid() == "series"}
    assert dots == {"Base": [0.3, 0.6], "YaRN s=2": [pytest.approx(0.4), pytest.approx(0.7)]}
    low, high = ax.get_xlim()
    assert low < 0 and high > 1  # a score of 0 or 1 shows its whole marker
    assert "n=20 per subject" in ax.get_title()
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["Base", "YaRN s=2"]


def test_plot_run_draws_the_positions_figure(tmp_path):
    ResultStore(tmp_path).replace("perplexity_positions", positions_frame())
    paths = plot_run(tmp_path)
    assert tmp_path / "figures" / "positions.png" in paths and (tmp_path / "figures" / "positions.pdf").exists()


def test_a_method_variant_keeps_its_colour_with_another_marker_and_line():
    """`yarn:layers=all` next to `yarn` (same factor): the method's colour, but a marker and a line
    style of its own, so the two are told apart in every figure; the same variant looks the same."""
    from evalharness.plots import series_style

    plain, variant = series_style("yarn", 2.0), series_style("yarn:layers=all", 2.0)
    assert variant["color"] == plain["color"]
    assert variant["marker"] != plain["marker"] and variant["linestyle"] != plain["linestyle"]
    assert series_style("yarn:layers=all", 2.0) == variant
    assert series_style("dynamic-yarn:layers=all")["linestyle"] not in (variant["linestyle"], "-")


# ---- the paired ratio to Base


def ratio_docs():
    """Two documents, Base and YaRN s=2 at 32 and 128 tokens (L = 64): YaRN's NLL sums chosen so
    that the ratio differs per length and per document."""
    rows = []
    for doc, scale in (("a", 1.0), ("b", 1.5)):
        for length in (32, 128):
            tokens = length - 1
            base = 2.0 * tokens * scale * (1.2 if length > 64 else 1.0)
            rows.append(doc_row(doc, length, tokens, base, method="base", factor=1.0))
            rows.append(doc_row(doc, length, tokens, base - (0.05 if length < 64 else 0.3) * tokens * scale))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity_docs"])


def test_the_ratio_figure_draws_each_series_paired_ratio_with_its_interval_and_base_at_one():
    docs = ratio_docs()
    ratios = perplexity_ratios(docs)
    fig = plot_perplexity_ratio(ratios)
    (ax,) = fig.axes
    (line,) = series(ax)  # Base is the reference line, not a series
    assert line.get_label() == "YaRN s=2" and list(line.get_xdata()) == [32, 128]
    for length, y in zip((32, 128), line.get_ydata()):  # token-weighted over both documents, by hand
        rows = docs[docs["context_length"] == length]
        yarn, base = rows[rows["method"] == "yarn"], rows[rows["method"] == "base"]
        expected = math.exp(yarn["nll_sum"].sum() / yarn["scored_tokens"].sum()
                            - base["nll_sum"].sum() / base["scored_tokens"].sum())
        assert y == pytest.approx(expected)
    assert 0.5 < line.get_ydata()[1] < line.get_ydata()[0] < 1
    (reference,) = [artist for artist in ax.lines if artist.get_gid() == "reference"]
    assert list(reference.get_ydata()) == [1, 1] and reference.get_label() == "Base (= 1)"
    (segments,) = [c.get_segments() for c in ax.collections if c.get_gid() == "ci"]
    assert np.concatenate([seg[:, 1] for seg in segments]) == pytest.approx(
        ratios[["ratio_ci_low", "ratio_ci_high"]].to_numpy().ravel())
    (mark,) = context_marks(ax)
    assert list(mark.get_xdata()) == [64, 64]
    assert ax.get_ylabel() == "Perplexity ratio to Base (< 1: better)" and "m: d (sliding" in ax.get_title()


def test_the_ratio_figure_is_drawn_when_the_run_has_base_and_another_series(tmp_path):
    docs = ratio_docs()
    store = ResultStore(tmp_path / "run")
    store.replace("perplexity_docs", docs)
    store.replace("perplexity", aggregate_perplexity(docs))
    stems = sorted({p.stem for p in figures(tmp_path / "run", tmp_path / "run" / "figures")})
    assert stems == ["perplexity", "perplexity_ratio"]
    only_yarn = docs[docs["method"] == "yarn"]
    store = ResultStore(tmp_path / "yarn")
    store.replace("perplexity_docs", only_yarn)
    store.replace("perplexity", aggregate_perplexity(only_yarn))
    assert sorted({p.stem for p in figures(tmp_path / "yarn", tmp_path / "yarn" / "figures")}) == ["perplexity"]
