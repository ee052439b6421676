"""The NLL-vs-position figure, from a hand-made positions table."""
import pandas as pd

from evalharness.perplexity.figures import plot_nll_by_position
from evalharness.plots import plot_run
from evalharness.results import SCHEMAS, ResultStore

L = 64


def positions_frame():
    rows = []
    for method, factor, slope in (("base", 1.0, 0.02), ("yarn", 2.0, 0.0)):
        for length in (128, 256):
            for start in range(0, length, 16):
                mean = 3.0 + slope * max(0, start - L)
                rows.append(dict(model="m", method=method, factor=factor, original_ctx=L, dataset="d",
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
    assert base.get_ydata()[-1] == 3.0 + 0.02 * (240 - L)
    (marker,) = [line for line in ax.get_lines() if line.get_gid() == "original_ctx"]
    assert list(marker.get_xdata()) == [L, L]
    assert "window 256" in ax.get_title() and "buckets of 16" in ax.get_title()


def test_a_chosen_length_and_an_empty_table():
    fig = plot_nll_by_position(positions_frame(), context_length=128)
    line = next(line for line in fig.axes[0].get_lines() if line.get_gid() == "series")
    assert max(line.get_xdata()) == 120
    assert not [line for ax in plot_nll_by_position(positions_frame().iloc[:0]).axes for line in ax.get_lines()]


def test_plot_run_draws_the_positions_figure(tmp_path):
    ResultStore(tmp_path).replace("perplexity_positions", positions_frame())
    paths = plot_run(tmp_path)
    assert tmp_path / "figures" / "positions.png" in paths and (tmp_path / "figures" / "positions.pdf").exists()
