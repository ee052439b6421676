"""report.md and the console summary: each task's section, references, the committed results/
folders rebuilt byte-identically, notebooks against a run folder."""
import json
import math
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest
from tables_data import (
    LENGTHS,
    doc_row,
    leaderboard_subject_frame,
    passkey_rows,
    perplexity_frame,
    ppl_value,
    sweep_frame,
)

from evalharness import cli
from evalharness.analysis.display import markdown_table
from evalharness.cli.eval import print_summary
from evalharness.perplexity.analysis import aggregate_perplexity
from evalharness.report import write_report
from evalharness.results import SCHEMAS, ResultStore, read_table

# ----
# Every committed run folder in results/ rebuilds its report.md and figures byte-identically from
# the folder alone (`run_eval.py plot DIR` on a copy: the report options are recorded in it); the
# report's layout; what the console says (resume, plain progress, `none`, compare, methods).


ROOT = Path(__file__).resolve().parent.parent


COMMITTED = sorted(p for p in (ROOT / "results").iterdir() if (p / "report.md").exists())


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_plot_on_a_copy_rebuilds_the_committed_report_and_figures(folder, tmp_path, capsys):
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    assert cli.main(["plot", str(copy)]) == cli.EXIT_OK
    rebuilt = sorted(p.relative_to(copy) for p in [copy / "report.md", *(copy / "figures").iterdir()])
    committed = sorted(p.relative_to(folder) for p in [folder / "report.md", *(folder / "figures").iterdir()])
    assert rebuilt == committed
    for name in committed:
        assert (copy / name).read_bytes() == (folder / name).read_bytes(), name
    text = (copy / "report.md").read_text()
    assert "/work/" not in text and "/home/" not in text  # no absolute path of the machine that ran it


def test_the_readme_references_are_recorded_in_the_committed_folders():
    text = (ROOT / "results" / "smollm2-135m-proofpile" / "report.md").read_text()
    assert "Ratio to NTK s=4 on the same documents" in text
    text = (ROOT / "results" / "smollm2-135m-govreport" / "report.md").read_text()
    assert "Ratio to NTK s=2 on the same documents" in text


def test_a_resume_that_computed_nothing_is_one_line_and_the_run_comes_last(tmp_path):

    import pandas as pd

    from evalharness.report import build_report

    rows = [dict(model="m", method="base", factor=1, original_ctx=64, context_length=n, prompt_tokens=n, depth=0.5,
                 trial=0, seed=0, scoring="paper", passkey=1, continuation=" 1.", correct=n <= 64) for n in (64, 128)]
    pd.DataFrame(rows, columns=SCHEMAS["passkey"]).to_csv(tmp_path / "passkey.csv", index=False)
    run = {"model_info": {"name": "m"}, "status": "finished"}
    manifest = {"runs": [{**run, "command": ["run_eval.py", "--tasks", "passkey"], "start": "2026-01-01T00:00:00",
                          "end": "2026-01-01T01:00:00"},
                         {**run, "command": ["run_eval.py", "--tasks", "passkey"], "start": "2026-01-02T00:00:00",
                          "end": "2026-01-02T00:00:05"}],
                "cells": {"a": {"status": "done", "time": "2026-01-01T00:30:00"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(tmp_path)
    assert "Invocation" not in text
    assert "- 2026-01-02T00:00:00: `python run_eval.py --tasks passkey` computed nothing" in text
    assert text.index("## Passkey retrieval") < text.index("## Run")
    assert "Perplexity: ppl" not in text and "RULER" not in text  # rules of the tasks present only


def test_console_resume_line_plain_progress_and_none(tmp_path, capsys):
    out = tmp_path / "pk"
    argv = ["--model", "random:tiny", "--tasks", "passkey", "--method", "base,yarn", "--factor", "2",
            "--lengths", "256,512", "--depths", "2", "--trials", "1", "--out", str(out), "--no-plots"]
    assert cli.main(argv) == cli.EXIT_OK
    first = capsys.readouterr()
    assert "\x1b" not in first.err and "\r" not in first.err  # stderr is not a terminal: plain lines
    cell_lines = [line for line in first.err.splitlines() if line.startswith("cell ")]
    assert [line.split(" done")[0] for line in cell_lines] == [f"cell {i}/8" for i in range(1, 9)]
    assert "NaN" not in first.out and "none" in first.out
    assert cli.main(argv[:5] + ["base,yarn,pi"] + argv[6:]) == cli.EXIT_OK
    assert "8 of 12 cells already done; computing the other 4." in capsys.readouterr().err


# ---- Figures, the run report and the notebooks, on small hand-made tables with the exact schemas.


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


# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


def test_report_compares_with_every_reference_given_on_the_command_line(tmp_path, capsys):
    from evalharness import cli

    # two documents, three series; nll sums chosen so the ratios are worked by hand:
    # ratio(yarn / ntk) = exp(Σ nll_yarn / Σ tok − Σ nll_ntk / Σ tok) = exp((200 + 220 − 210 − 230) / 200)
    nll = {("base", 1.0): (300.0, 320.0), ("ntk", 2.0): (210.0, 230.0), ("yarn", 2.0): (200.0, 220.0)}
    store = ResultStore(tmp_path / "run")
    store.append("perplexity_docs", [doc_row(d, 128, 100, sums[i], method=m, factor=f)
                                     for (m, f), sums in nll.items() for i, d in enumerate("ab")])
    store.replace("perplexity", aggregate_perplexity(read_table(tmp_path / "run", "perplexity_docs")))
    assert cli.main(["plot", str(tmp_path / "run"), "--reference", "ntk:2,pi:7"]) == 0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Ratio to Base on the same documents" in text
    block = text.split("Ratio to NTK s=2 on the same documents:")[1].split("\n\n", 3)[2]
    yarn_row = next(line for line in block.splitlines() if line.startswith("| YaRN s=2 |"))
    assert yarn_row.startswith(f"| YaRN s=2 | {math.exp(-20 / 200):.3f} [")
    assert "| NTK s=2 |" not in block  # the reference itself is not a row of its own table
    assert "No perplexity series matches --reference 'pi:7'." in text
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path / "run"), "--reference", "ntk:x"]) == 2
    assert "--reference: factor 'x' in spec 'ntk:x' is not a number" in capsys.readouterr().err


def test_end_of_run_summary_uses_the_report_labels_in_registry_order(tmp_path, capsys):

    store = ResultStore(tmp_path / "run")
    series = [("yarn", 2.0), ("base", 1.0), ("dynamic-yarn", 1.0), ("ntk", 2.0), ("pi", 2.0)]
    store.append("perplexity_docs", [doc_row("a", 128, 100, 150.0 + i, method=m, factor=f)
                                     for i, (m, f) in enumerate(series)])
    store.replace("perplexity", aggregate_perplexity(read_table(tmp_path / "run", "perplexity_docs")))
    store.append("passkey", passkey_rows({("yarn", 2.0): {4096: 1.0}, ("base", 1.0): {4096: 0.5}}).to_dict("records"))
    print_summary(store)
    lines = capsys.readouterr().out.splitlines()
    ppl_rows = [line.split()[0:3] for line in lines[lines.index("perplexity — d, sliding (token-weighted)") + 3:][:5]]
    assert [" ".join(r[:2]) if r[1].startswith("s=") else r[0] for r in ppl_rows] == [
        "Base", "PI s=2", "NTK s=2", "YaRN s=2", "Dynamic-YaRN"]
    # each row holds its own series' perplexity (nll 150 + i over 100 tokens)
    expected = {"Base": 151.0, "PI s=2": 154.0, "NTK s=2": 153.0, "YaRN s=2": 150.0, "Dynamic-YaRN": 152.0}
    for row in ppl_rows:
        label = " ".join(row[:2]) if row[1].startswith("s=") else row[0]
        assert float(row[-1] if row[1].startswith("s=") else row[1]) == pytest.approx(
            math.exp(expected[label] / 100), abs=5e-4)
    passkey = lines[lines.index(next(line for line in lines if line.startswith("passkey accuracy"))) + 3:]
    assert passkey[0].split()[0] == "Base" and passkey[1].split()[:2] == ["YaRN", "s=2"]


# ---- Optional figures: drawn when asked, recorded, redrawn by a plain `plot`, removed when turned off.


def test_optional_figures_are_recorded_and_redrawn_until_turned_off(tmp_path):
    folder = tmp_path / "run"
    ResultStore(folder).replace("leaderboard", leaderboard_subject_frame())
    png, pdf = (folder / "figures" / f"leaderboard_mmlu_subjects.{ext}" for ext in ("png", "pdf"))
    assert cli.main(["plot", str(folder)]) == cli.EXIT_OK
    assert not png.exists() and "leaderboard_mmlu_subjects" not in (folder / "report.md").read_text()

    assert cli.main(["plot", str(folder), "--optional-figures"]) == cli.EXIT_OK
    assert png.exists() and pdf.exists()
    assert "figures/leaderboard_mmlu_subjects.png" in (folder / "report.md").read_text()
    drawn = png.read_bytes()
    assert cli.main(["plot", str(folder)]) == cli.EXIT_OK  # recorded: a plain plot draws it again, the same
    assert png.read_bytes() == drawn

    assert cli.main(["plot", str(folder), "--no-optional-figures"]) == cli.EXIT_OK
    assert not png.exists() and not pdf.exists()
    assert "leaderboard_mmlu_subjects" not in (folder / "report.md").read_text()
