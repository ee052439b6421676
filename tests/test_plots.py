"""Figures, the run report and the notebooks, on small hand-made tables with the exact schemas."""
import json
import math
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from evalharness.analysis.display import markdown_table
from evalharness.leaderboard.figures import plot_leaderboard
from evalharness.passkey.figures import plot_passkey_heatmap
from evalharness.perplexity.figures import plot_perplexity, plot_temperature_sweep
from evalharness.plots import plot_run, save_figure
from evalharness.report import write_report
from evalharness.results import SCHEMAS, ResultStore

ROOT = Path(__file__).resolve().parent.parent
L = 128
LENGTHS = [64, 128, 256]
SERIES = [("base", 1.0), ("pi", 2.0), ("yarn", 2.0), ("dynamic-yarn", 1.0)]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def ppl_value(method, factor, length, dataset="d1"):
    """A distinct, recognisable perplexity per cell."""
    rank = [m for m, _ in SERIES].index(method) if method in [m for m, _ in SERIES] else 9
    return round(5.0 + rank + length / 64 + (0.5 if dataset == "d2" else 0.0), 4)


def ppl_row(method, factor, length, dataset="d1", protocol="truncated", stride=0, value=None, model="m"):
    value = ppl_value(method, factor, length, dataset) if value is None else value
    return dict(model=model, method=method, factor=factor, original_ctx=L, dataset=dataset, protocol=protocol,
                window_bos="every" if protocol == "sliding" else "first", context_length=length, stride=stride,
                n_docs=2, scored_tokens=2 * length, n_windows=2, ppl=value, ppl_paper=value + 0.25,
                ppl_ci_low=value - 0.5, ppl_ci_high=value + 0.5)


def perplexity_frame(datasets=(("d1", "truncated", 0),)):
    rows = [ppl_row(m, f, n, d, p, s) for d, p, s in datasets for m, f in SERIES for n in LENGTHS]
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


PASSKEY_DEPTHS = [0.0, 0.5, 1.0]


def passkey_correct(method, length, depth, trial):
    """Pattern: base fails past L; yarn fails only at the deepest needle of 256 on trial 0."""
    if method == "base":
        return length <= L and not (depth == 0.5 and trial == 2)
    return not (length == 256 and depth == 1.0 and trial == 0)


def passkey_frame():
    rows = []
    for method, factor in [("base", 1.0), ("yarn", 2.0)]:
        for length in LENGTHS:
            for depth in PASSKEY_DEPTHS:
                for trial in range(3):
                    rows.append(dict(model="m", method=method, factor=factor, original_ctx=L,
                                     context_length=length, prompt_tokens=length, depth=depth, trial=trial,
                                     seed=trial, passkey=12345 + trial, continuation=" 12345.",
                                     correct=passkey_correct(method, length, depth, trial)))
    return pd.DataFrame(rows, columns=SCHEMAS["passkey"])


LEADERBOARD = {  # (method, factor) → {task: value}
    ("base", 1.0): {"arc_challenge": 0.40, "hellaswag": 0.60, "mmlu": 0.30},
    ("pi", 2.0): {"arc_challenge": 0.35, "hellaswag": 0.55, "mmlu": 0.28},
    ("yarn", 2.0): {"arc_challenge": 0.41, "hellaswag": 0.58, "mmlu": 0.29},
}
METRICS = {"arc_challenge": ("acc_norm", 25), "hellaswag": ("acc_norm", 10), "mmlu": ("acc", 5)}


def leaderboard_frame():
    rows = []
    for (method, factor), scores in LEADERBOARD.items():
        for task, value in scores.items():
            metric, shots = METRICS[task]
            rows.append(dict(model="m", method=method, factor=factor, original_ctx=L, task=task,
                             metric=metric, value=value, stderr=0.01, num_fewshot=shots, n_samples=100))
    return pd.DataFrame(rows, columns=SCHEMAS["leaderboard"])


def write_manifest(folder):
    manifest = {
        "runs": [{"command": ["run_eval.py", "--model", "m", "--method", "base,pi,yarn"],
                  "args": {"model": "m"},
                  "environment": {"python": "3.11.0", "torch": "9.9.9", "transformers": "5.0.0"},
                  "model_info": {"name": "tiny-model", "native_ctx": L, "rope_theta": 10000.0},
                  "specs": ["base:original_ctx=128", "yarn:2:original_ctx=128"],
                  "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00"}],
        "cells": {"perplexity|m|base|d1": {"status": "done"},
                  "passkey|m|pi|2": {"status": "failed",
                                     "error": "Traceback ...\nRuntimeError: out of memory"}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def run_folder(tmp_path):
    """A run folder with perplexity, passkey and leaderboard tables written through the store."""
    folder = tmp_path / "run"
    store = ResultStore(folder)
    store.replace("perplexity", perplexity_frame())
    store.append("passkey", passkey_frame().to_dict("records"))
    store.append("leaderboard", leaderboard_frame().to_dict("records"))
    write_manifest(folder)
    return folder


def series_lines(ax):
    return [line for line in ax.lines if line.get_gid() == "series"]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

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


def sweep_frame():
    """Perplexity = 10 + 100·(x − x*(s))² at length 256 for s = 2, 4, with x* = 1.1 (s=2), 1.15 (s=4);
    other lengths hold noise that must be ignored."""
    rows = []
    optimum = {2.0: 1.1, 4.0: 1.15}
    for s, best in optimum.items():
        for x in [1.0, 1.05, 1.1, 1.15, 1.2, 1.25]:
            for length in (128, 256):
                value = 10 + 100 * (x - best) ** 2 if length == 256 else 50.0
                rows.append(ppl_row(f"yarn:attention_factor={x}", s, length, value=value))
        rows.append(ppl_row("yarn", s, 256, value=10 + 100 * (0.1 * math.log(s) + 1 - best) ** 2))
    rows.append(ppl_row("base", 1.0, 256, value=30.0))
    rows.append(ppl_row("pi", 2.0, 256, value=12.0))
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def test_markdown_table_escapes_pipes():
    text = markdown_table(["a", "b"], [["x|y", 1.5]])
    assert text.splitlines() == ["| a | b |", "| :--- | ---: |", "| x\\|y | 1.5 |"]


def test_report_has_the_papers_tables_failed_cells_and_figures(run_folder):
    path = write_report(run_folder)
    assert path == run_folder / "report.md"
    text = path.read_text()
    assert "run_eval.py --model m --method base,pi,yarn" in text
    assert "tiny-model" in text and "torch 9.9.9" in text
    # perplexity: methods as rows, lengths as columns, token-weighted ppl with its interval; best bold
    assert "| method | 64 | 128 | 256 |" in text
    base = [ppl_value("base", 1, n) for n in LENGTHS]
    first = f"**{base[0]:.2f}** [{base[0] - 0.5:.2f}, {base[0] + 0.5:.2f}]"
    assert f"| Base | {first} | **{base[1]:.2f}** [" in text
    yarn = ppl_value("yarn", 2, 64)
    assert f"| YaRN s=2 | {yarn:.2f} [{yarn - 0.5:.2f}, {yarn + 0.5:.2f}] |" in text
    assert "ppl_paper" in text and f"{ppl_value('pi', 2, 64) + 0.25:.2f}" in text
    assert "95 % percentile bootstrap interval over documents" in text
    # passkey: accuracy (%) [Wilson interval] per length, n, the effective context, all lengths
    assert "n = 9 prompts per cell" in text and "Wilson 95 % score interval" in text
    assert "longest tested length with accuracy ≥ 80%" in text
    eight_of_nine = "88.9 [56.5, 98.0]"  # Wilson 8/9: (0.5650, 0.9801)
    base_row = (f"| Base | {eight_of_nine} | {eight_of_nine} | 0.0 [0.0, 29.9] | 128 "
                "| 59.3 [40.7, 75.5] (n=27) |")
    assert base_row in text
    assert f"| YaRN s=2 | 100.0 [70.1, 100.0] | 100.0 [70.1, 100.0] | {eight_of_nine} | 256 |" in text
    # paired difference to base: yarn retrieves every key base retrieves at 256, and 8 more of 9
    assert "| YaRN s=2 | +11.1 [+0.0, +33.3] | +11.1 [+0.0, +33.3] | +88.9 [" in text
    # leaderboard: per task per method ± stderr with n, the mean, the change from base
    assert ("| method | ARC-c (acc_norm, 25-shot, n=100) | HellaSwag (acc_norm, 10-shot, n=100) | "
            "MMLU (acc, 5-shot, n=100) | mean |") in text
    assert "| PI s=2 | 35.0 ± 1.0 | 55.0 ± 1.0 | 28.0 ± 1.0 | 39.3 |" in text
    assert "| PI s=2 | -5.0 | -5.0 | -2.0 |" in text and "| YaRN s=2 | +1.0 | -2.0 | -1.0 |" in text
    # failed cells and figures
    assert "`passkey|m|pi|2`: RuntimeError: out of memory" in text
    for name in ("perplexity", "passkey", "leaderboard"):
        assert f"](figures/{name}.png)" in text
        assert (run_folder / "figures" / f"{name}.png").exists()


# ---------------------------------------------------------------------------------------------
# Notebooks, executed headless
# ---------------------------------------------------------------------------------------------

@pytest.mark.notebook
@pytest.mark.parametrize("name", ["compare_methods", "paper_figures"])
def test_notebook_runs_headless_against_a_results_folder(name, run_folder, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    # argv[0] "python" is replaced by the running interpreter (sys.executable) when the kernel starts
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv

    other = tmp_path / "other"  # a second folder (perplexity only) to concatenate / walk
    ResultStore(other).replace("perplexity", perplexity_frame())
    monkeypatch.setenv("EVALHARNESS_RESULTS", f"{run_folder},{other}")

    positions = pd.DataFrame([dict(model="m", method=method, factor=factor, original_ctx=16, dataset="d",
                                   protocol="truncated", window_bos="first", context_length=32, stride=0,
                                   bucket_width=8, position_start=start, position_end=start + 8, n_docs=1,
                                   tokens=8, nll_sum=8 * nll, mean_nll=nll)
                              for method, factor, nll in (("base", 1, 2.0), ("yarn", 2, 1.5))
                              for start in (0, 8, 16, 24)])
    ResultStore(other).replace("perplexity_positions", positions)
    # RULER: two methods, two tasks, two lengths, two samples each (the per-sample scores give the cell's)
    samples = pd.DataFrame([dict(model="m", method=method, factor=factor, original_ctx=16, task=task,
                                 context_length=length, doc_id=doc, score=float((doc + length // 32 + shift) % 2))
                            for method, factor, shift in (("base", 1, 0), ("yarn", 2, 1))
                            for task in ("niah_single_1", "ruler_vt") for length in (16, 32) for doc in (0, 1)])
    ruler = (samples.groupby(["model", "method", "factor", "original_ctx", "task", "context_length"], sort=False)
             ["score"].agg(score="mean", n="count", stderr=lambda v: v.std(ddof=1) / len(v) ** 0.5).reset_index())
    ResultStore(other).replace("ruler_samples", samples)
    ResultStore(other).replace("ruler", ruler)

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:  # the committed notebooks carry the outputs of the committed results
        cell.outputs, cell.execution_count = [], None
    # the notebooks import the installed package; they do not edit sys.path
    assert not any("sys.path" in cell.source for cell in code)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError if a cell raises

    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert f"evalharness {version('evalharness')} imported from evalharness" in printed
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    if name == "compare_methods":
        assert len(images) == 5  # perplexity, loss by position (other), passkey, RULER mean (other), leaderboard
        shown = "".join(str(out.get("data", {}).get("text/markdown", "")) for out in outputs)
        assert "| method |" in shown and "RULER" in shown  # the effective-context table, RULER column included
    else:
        assert len(images) == 7  # three figures of run_folder; perplexity, loss by position and RULER of other
        assert (run_folder / "figures" / "perplexity.png").exists()
        assert (other / "figures" / "perplexity.pdf").exists()
        assert {p.name for p in (other / "figures").glob("*.png")} == {"perplexity.png", "positions.png",
                                                                       "ruler.png", "ruler_mean.png"}
        assert (run_folder / "report.md").exists()


def test_plots_and_report_only_read_a_run_folder_being_written(run_folder):
    """A live run keeps `.<table>.csv.*.tmp` files while it rewrites a table: readers must leave them."""
    in_flight = run_folder / ".perplexity.csv.abc123.tmp"
    in_flight.write_text("partial")
    before = {p.name for p in run_folder.iterdir()}
    write_report(run_folder)
    assert in_flight.exists()
    assert {p.name for p in run_folder.iterdir()} - before == {"figures", "report.md"}


def test_report_shows_the_temperature_sweep(tmp_path):
    folder = tmp_path / "sweep"
    ResultStore(folder).replace("perplexity", sweep_frame())
    text = write_report(folder, figures=False).read_text()
    assert "## Attention temperature" in text and "0.1·ln(s)+1" in text
    at_formula = {s: 10 + 100 * (0.1 * math.log(s) + 1 - best) ** 2 for s, best in ((2, 1.1), (4, 1.15))}
    assert f"| d1, truncated | s=2 | 1.069 | 1.1 | 10.00 | {at_formula[2]:.2f} |" in text
    assert f"| d1, truncated | s=4 | 1.139 | 1.15 | 10.00 | {at_formula[4]:.2f} |" in text


def test_the_same_figure_saved_twice_gives_the_same_bytes(tmp_path):
    """No creation date in the PDF (or software stamp in the PNG): redrawing unchanged tables
    leaves the committed figures unchanged."""
    import time

    from evalharness.plots import save_figure

    first = save_figure(plot_perplexity(perplexity_frame()), tmp_path / "a" / "ppl")
    time.sleep(1.1)  # PDF dates have one-second resolution
    second = save_figure(plot_perplexity(perplexity_frame()), tmp_path / "b" / "ppl")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
