"""Every committed run folder in results/ rebuilds its report.md and figures byte-identically from
the folder alone (`run_eval.py plot DIR` on a copy: the report options are recorded in it); the
report's layout; what the console says (resume, plain progress, `none`, compare, methods)."""
import shutil
from pathlib import Path

import pytest

from evalharness import cli

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
    import json

    import pandas as pd

    from evalharness.report import build_report
    from evalharness.results import SCHEMAS

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


def test_compare_says_why_nothing_matched_and_prints_no_nan(capsys):
    govreport = ROOT / "results" / "smollm2-135m-govreport"
    assert cli.main(["compare", str(govreport), "--model", "yarn-llama-2-7b-64k"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "govreport sliding perplexity is published at 32768 tokens, this run measured 16384" in err
    assert cli.main(["compare", str(ROOT / "results" / "smollm2-135m-passkey"), "--model",
                     "yarn-llama-2-7b-64k"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and " none " in out


def test_methods_explains_its_columns_and_shows_native_of_the_given_model(capsys):
    import torch

    from evalharness import models
    from evalharness.methods import base_inv_freq

    assert cli.main(["methods", "--model", "random:tiny", "--method", "base,yarn,native", "--factor", "2"]) == 0
    out = capsys.readouterr().out
    assert "error" not in out
    native = next(line for line in out.splitlines() if line.startswith("native"))
    _, _, info = models.load("random:tiny", dtype="float32", device="cpu")
    theta = base_inv_freq(info.rotary_dim, info.rope_theta)  # random:tiny ships plain RoPE
    assert native.split()[3:5] == [f"{float(theta[0]):.6g}", f"{float(theta[-1]):.6g}"]
    assert float(native.split()[-1]) == 1.0 and torch.is_tensor(theta)
    for column in ("ramp", "max λ", "interp.", "attn"):
        assert any(line.startswith(column + " ") for line in out.splitlines()), column
    assert cli.main(["methods", "--rotary-dim", "64", "--rope-theta", "10000", "--original-ctx", "4096",
                     "--method", "native"]) == cli.EXIT_USAGE
    assert "give --model" in capsys.readouterr().err
