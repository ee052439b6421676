"""`run_eval.py compare RUN_DIR`: a synthetic run of a published model next to the paper's numbers.

The expected published values are written out here from the authors' files (Yarn-Llama-2-7b-64k:
proofpile-long-small.csv at 8192 and 32768, govreport.csv at 32768, the arc and mmlu JSONs), and
the relative differences are computed independently of evalharness.paper.
"""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from evalharness import cli, paper
from evalharness.perplexity import paper as perplexity_paper

MODEL = "NousResearch/Yarn-Llama-2-7b-64k"
# the authors' numbers for this model, copied by hand from their result files
PROOFPILE_8K, PROOFPILE_32K, GOVREPORT_32K = 3.506547213, 2.654691696, 3.594996214
ARC_ACC_NORM = 0.523037542662116  # Yarn-Llama-2-7b-64k-arc.json, arc_challenge acc_norm
PASSKEY_CONTEXT = 65536  # paper Table 5


def key(model=MODEL, method="native:rope_type=yarn", factor=16.0, original_ctx=4096):
    return dict(model=model, method=method, factor=factor, original_ctx=original_ctx)


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "Yarn-Llama-2-7b-64k"
    folder.mkdir()
    pd.DataFrame([
        dict(key(), dataset="proofpile", protocol="truncated", context_length=8192, n_docs=10, ppl=3.60),
        dict(key(), dataset="proofpile", protocol="truncated", context_length=32768, n_docs=10, ppl=2.60),
        dict(key(), dataset="proofpile", protocol="truncated", context_length=5000, n_docs=10, ppl=3.0),  # unpublished
        dict(key(method="base", factor=1.0), dataset="proofpile", protocol="truncated", context_length=8192,
             n_docs=10, ppl=5.0),
        dict(key(), dataset="govreport", protocol="sliding", context_length=32768, n_docs=50, ppl=3.50),
        dict(key(), dataset="pg19", protocol="truncated", context_length=8192, n_docs=5, ppl=9.0),  # unpublished
    ]).to_csv(folder / "perplexity.csv", index=False)
    pd.DataFrame([
        dict(key(), task="arc_challenge", metric="acc_norm", value=0.50, stderr=0.01, num_fewshot=25, n_samples=100),
        dict(key(), task="arc_challenge", metric="acc", value=0.40, stderr=0.01, num_fewshot=25, n_samples=100),
    ]).to_csv(folder / "leaderboard.csv", index=False)
    rows = []
    for length, correct in ((32768, [1, 1, 1, 1, 1]), (65536, [1, 1, 1, 1, 0]), (131072, [0, 0, 1, 0, 0])):
        for trial, ok in enumerate(correct):
            rows.append(dict(key(), context_length=length, prompt_tokens=length, depth=0.5, trial=trial, seed=trial,
                             passkey=12345, continuation=" 12345", correct=bool(ok)))
    pd.DataFrame(rows).to_csv(folder / "passkey.csv", index=False)
    return folder


def rel(run, published):
    return (run - published) / published


def test_compare_prints_the_table_with_relative_differences(run_dir, capsys):
    assert cli.main(["compare", str(run_dir), "--csv", str(run_dir / "cmp.csv")]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    table = pd.read_csv(run_dir / "cmp.csv")
    by_setting = {(r.table, r.method, r.setting, r.metric): r for r in table.itertuples()}
    expected = {
        ("perplexity", "native (yarn s=16)", "proofpile truncated 8192", "ppl"): (3.60, PROOFPILE_8K),
        ("perplexity", "native (yarn s=16)", "proofpile truncated 32768", "ppl"): (2.60, PROOFPILE_32K),
        ("perplexity", "base", "proofpile truncated 8192", "ppl"): (5.0, PROOFPILE_8K),
        ("perplexity", "native (yarn s=16)", "govreport sliding 32768", "ppl"): (3.50, GOVREPORT_32K),
        ("leaderboard", "native (yarn s=16)", "arc_challenge (25-shot)", "acc_norm"): (0.50, ARC_ACC_NORM),
        ("passkey", "native (yarn s=16)", "lengths ≤ 131072", "passkey_context"): (65536, PASSKEY_CONTEXT),
    }
    assert set(by_setting) == set(expected)  # unpublished lengths, datasets and metrics are left out
    for name, (run, published) in expected.items():
        row = by_setting[name]
        assert row.run == pytest.approx(run) and row.paper == pytest.approx(published, rel=1e-9)
        assert row.rel_diff == pytest.approx(rel(run, published), rel=1e-9)
    assert by_setting[("passkey", "native (yarn s=16)", "lengths ≤ 131072", "passkey_context")].rel_diff == 0
    # the printed table carries the same numbers as percentages
    assert f"{100 * rel(3.60, PROOFPILE_8K):+.2f}%" in printed  # +2.67%
    assert f"{100 * rel(0.50, ARC_ACC_NORM):+.2f}%" in printed  # -4.41%
    assert "native (yarn s=16)" in printed and "govreport sliding 32768" in printed


def test_compare_prefers_the_authors_aggregation(run_dir, capsys):
    table = pd.read_csv(run_dir / "perplexity.csv")
    table["ppl_paper"] = table["ppl"] + 0.1
    table.to_csv(run_dir / "perplexity.csv", index=False)
    result = paper.compare_run(run_dir)
    row = result[(result.table == "perplexity") & (result.setting == "govreport sliding 32768")].iloc[0]
    assert row.metric == "ppl_paper" and row.run == pytest.approx(3.60)


def test_model_names_match_by_last_component():
    assert paper.model_key("NousResearch/Yarn-Llama-2-7b-64k") == paper.model_key("/m/yarn-llama-2-7B-64k/")
    assert (perplexity_paper.dataset_key("proofpile") == "proofpile"
            and perplexity_paper.dataset_key("hf:emozilla/proof-pile") == "proofpile")
    assert perplexity_paper.dataset_key("coq-stdlib") is None


def test_compare_as_another_name_and_bad_input(run_dir, tmp_path, capsys):
    renamed = tmp_path / "copy"
    renamed.mkdir()
    table = pd.read_csv(run_dir / "perplexity.csv")
    table["model"] = "/models/my-local-copy"
    table.to_csv(renamed / "perplexity.csv", index=False)
    assert cli.main(["compare", str(renamed)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "my-local-copy" in err and "yarn-llama-2-7b-64k" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["compare", str(renamed), "--model", MODEL]) == cli.EXIT_OK
    assert "proofpile truncated 8192" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "missing")]) == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["compare", str(renamed), "--model", " "]) == cli.EXIT_USAGE  # not "no --model"
    assert "--model ' ' is empty" in capsys.readouterr().err


def test_published_data_is_the_authors_files():
    """Spot checks of the shipped tables against the paper's text (the paper's headline numbers, arXiv 2309.00071)."""
    curve = paper.published("perplexity")
    yarn128 = curve[(curve.model == "NousResearch/Yarn-Llama-2-7b-128k") & (curve.dataset == "proofpile")]
    at = yarn128.set_index("context_length")["ppl"]
    assert round(at[8192], 2) == 3.56 and round(at[32768], 2) == 2.70 and round(at[131072], 2) == 2.37
    board = paper.published("leaderboard")
    yarn64 = board[board.model == "Yarn-Llama-2-7b-64k"].set_index("task")["value"]
    assert [round(100 * yarn64[t], 1) for t in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")] == [
        52.3, 78.8, 42.5, 38.2]
    mmlu = board[(board.task == "mmlu")]
    assert set(mmlu["n_subtasks"]) == {57} and not math.isnan(mmlu["value"].sum())


def test_wheel_ships_the_paper_data(wheel_names):
    """A non-editable install can still compare: the built wheel holds paper_data/ and its licence."""
    for name in ("perplexity.csv", "leaderboard.csv", "passkey.csv", "LICENSE", "README.md"):
        assert f"evalharness/paper_data/{name}" in wheel_names


# ---------------------------------------------------------------- the run's settings against the paper's

PAPER_NOTE = paper.DIFFERS_NOTE


def write_manifest(folder, *runs):
    """A manifest.json with the args the CLI records for each run (only those compare reads)."""
    entries = [{"args": {"tasks": "perplexity", "sample": None, **args}, "model_info": {"bos_token_id": 1}}
               for args in runs]
    (folder / "manifest.json").write_text(json.dumps({"runs": entries, "cells": {}}))


def passkey_rows(lengths, trials):
    return [dict(key(), context_length=length, prompt_tokens=length, depth=0.5, trial=t, seed=t, scoring="paper",
                 passkey=12345, continuation=" 12345", correct=True) for length in lengths for t in range(trials)]


def settings_run(folder, *, window_bos="every", stride=256, gov_docs=50, proof_docs=10, shots=(25, 5),
                 n=(1172, 14042), gov_min=16384, proof_min=131072, passkey_lengths=None, trials=10):
    """A synthetic run of Yarn-Llama-2-7b-64k; the defaults are the authors' protocol."""
    folder.mkdir()
    pd.DataFrame([
        dict(key(), dataset="govreport", protocol="sliding", window_bos=window_bos, context_length=32768,
             stride=stride, n_docs=gov_docs, ppl=3.7, ppl_paper=3.6),
        dict(key(), dataset="proofpile", protocol="truncated", window_bos="first", context_length=8192, stride=0,
             n_docs=proof_docs, ppl=3.5, ppl_paper=3.5),
    ]).to_csv(folder / "perplexity.csv", index=False)
    pd.DataFrame([
        dict(key(), task="arc_challenge", metric="acc_norm", value=0.5, stderr=0.01, num_fewshot=shots[0],
             n_samples=n[0]),
        dict(key(), task="mmlu", metric="acc_macro", value=0.4, stderr=0.01, num_fewshot=shots[1], n_samples=n[1]),
    ]).to_csv(folder / "leaderboard.csv", index=False)
    lengths = passkey_lengths or range(8192, 131072 + 1, 8192)
    pd.DataFrame(passkey_rows(lengths, trials)).to_csv(folder / "passkey.csv", index=False)
    write_manifest(folder, dict(protocol="sliding", dataset="govreport", min_tokens=gov_min, lengths="32k"),
                   dict(protocol="truncated", dataset="proofpile", min_tokens=proof_min, lengths="8k"))
    return folder


def differs_by_setting(folder):
    table = paper.compare_run(folder)
    return {(row.table, row.setting): row.differs for row in table.fillna("").itertuples()}


def test_a_run_with_the_authors_protocol_differs_in_nothing(tmp_path, capsys):
    folder = settings_run(tmp_path / "paper-protocol")
    assert differs_by_setting(folder) == {
        ("perplexity", "govreport sliding 32768"): "", ("perplexity", "proofpile truncated 8192"): "",
        ("leaderboard", "arc_challenge (25-shot)"): "", ("leaderboard", "mmlu (5-shot)"): "",
        ("passkey", "lengths ≤ 131072"): ""}
    assert cli.main(["compare", str(folder)]) == cli.EXIT_OK
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert "differs" in lines[0].split() and lines[-1] == PAPER_NOTE and len(lines) == 1 + 5 + 1


def test_each_setting_the_run_changed_is_named_with_the_papers_value(tmp_path, capsys):
    folder = settings_run(tmp_path / "changed", window_bos="first", stride=8192, gov_docs=3, proof_docs=2,
                          shots=(0, 5), n=(10, 2850), gov_min=8192, passkey_lengths=(4096, 8192), trials=3)
    assert differs_by_setting(folder) == {
        ("perplexity", "govreport sliding 32768"):
            "window_bos first (paper every); stride 8192 (paper 256); docs 3 (paper 50); "
            "min_tokens 8192 (paper 16384)",
        ("perplexity", "proofpile truncated 8192"): "docs 2 (paper 10)",
        ("leaderboard", "arc_challenge (0-shot)"): "shots 0 (paper 25); subset n=10 of 1172",
        ("leaderboard", "mmlu (5-shot)"): "subset n=2850 of 14042",
        ("passkey", "lengths ≤ 8192"): "lengths 4096, 8192 (paper 8192…131072 step 8192); prompts/length 3 (paper 10)",
    }
    assert cli.main(["compare", str(folder)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "shots 0 (paper 25); subset n=10 of 1172" in printed and "arc_challenge (0-shot)" in printed


def test_the_document_choice_comes_from_the_manifest(tmp_path):
    folder = settings_run(tmp_path / "sampled")
    # a random sample; no --min-tokens: the CLI's default filter for truncated 8k…128k with a BOS is 128k − 1
    write_manifest(folder, dict(protocol="sliding", dataset="govreport", min_tokens=16384, lengths="32k", sample=50),
                   dict(protocol="truncated", dataset="hf:emozilla/proof-pile", min_tokens=None,
                        lengths="8k:128k:8k"))
    found = differs_by_setting(folder)
    assert found[("perplexity", "govreport sliding 32768")] == "docs a random sample (paper the first N)"
    assert found[("perplexity", "proofpile truncated 8192")] == "min_tokens 131071 (paper 131072)"


def test_settings_the_folder_does_not_record_are_unknown(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()  # no manifest; tables without stride, n_docs, num_fewshot, n_samples, an empty window_bos
    pd.DataFrame([dict(key(), dataset="govreport", protocol="sliding", window_bos="", context_length=32768,
                       ppl=3.7)]).to_csv(folder / "perplexity.csv", index=False)
    pd.DataFrame([dict(key(), task="arc_challenge_local", metric="acc_norm", value=0.5)]).to_csv(
        folder / "leaderboard.csv", index=False)
    assert differs_by_setting(folder) == {
        ("perplexity", "govreport sliding 32768"):
            "window_bos unknown; stride unknown; docs unknown; document choice unknown; min_tokens unknown",
        ("leaderboard", "arc_challenge (shots unknown)"): "shots unknown; n unknown",
    }
    # a perplexity.csv from before the window_bos column: the results layer reads it as BOS first,
    # the one placement there was (results.upgrade_columns), as plot and report do
    pd.read_csv(folder / "perplexity.csv").drop(columns="window_bos").to_csv(folder / "perplexity.csv", index=False)
    assert differs_by_setting(folder)[("perplexity", "govreport sliding 32768")].startswith(
        "window_bos first (paper every); stride unknown")


def test_the_table3_baselines_are_published_for_llama2(tmp_path):
    """Table 3's Llama-2-7B row, typed in from the paper (percent there, fractions here)."""
    folder = tmp_path / "llama"
    folder.mkdir()
    base = dict(model="meta-llama/Llama-2-7b-hf", method="base", factor=1.0, original_ctx=4096)
    tasks = [("arc_challenge", "acc_norm", 25, 1172), ("hellaswag", "acc_norm", 10, 10042),
             ("mmlu", "acc_macro", 5, 14042), ("truthfulqa_mc2", "acc", 0, 817)]
    pd.DataFrame([dict(base, task=t, metric=m, value=0.5, stderr=0.01, num_fewshot=s, n_samples=n)
                  for t, m, s, n in tasks]).to_csv(folder / "leaderboard.csv", index=False)
    table = paper.compare_run(folder)
    assert list(table["paper"]) == pytest.approx([0.531, 0.778, 0.438, 0.390])  # 53.1 / 77.8 / 43.8 / 39.0
    assert set(table["paper_source"]) == {"paper Table 3 (arXiv 2309.00071)"} and set(table["differs"]) == {""}
    assert list(table["model"]) == ["meta-llama/Llama-2-7b-hf"] * 4


def test_the_published_evaluation_sizes_agree_with_the_published_stderrs():
    """n_samples of a published 0/1 metric is the size its stderr implies: lm-eval's stderr of a mean
    is the sample standard deviation over sqrt(n), sqrt(p(1 − p) n / (n − 1)) / sqrt(n)."""
    board = paper.published("leaderboard")
    checked = board[board.metric.eq("acc_norm") & board.stderr.notna()]
    assert len(checked) >= 10
    for row in checked.itertuples():
        assert row.value * (1 - row.value) / row.stderr ** 2 + 1 == pytest.approx(row.n_samples, abs=1e-3)
    assert board.groupby("task")["n_samples"].unique().map(list).to_dict() == {
        "arc_challenge": [1172], "hellaswag": [10042], "mmlu": [14042], "truthfulqa_mc2": [817]}


def _cut_off(path):
    """A row cut off inside a quoted field, as a crash while appending leaves it."""
    path.write_text(path.read_text() + f'{MODEL},"native:rope')


def _not_utf8(path):
    path.write_bytes(path.read_bytes() + "théorème\n".encode("latin-1"))


def _extra_fields(path):
    lines = path.read_text().splitlines()
    lines.insert(1, lines[1] + ",1,2,3")
    path.write_text("\n".join(lines) + "\n")


def test_a_cut_off_last_row_is_dropped_with_a_warning(run_dir, capsys):
    _cut_off(run_dir / "perplexity.csv")
    assert cli.main(["compare", str(run_dir), "--csv", str(run_dir / "cmp.csv")]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "perplexity.csv: its last row is incomplete" in err and "reading the 6 complete rows" in err, err
    table = pd.read_csv(run_dir / "cmp.csv")
    assert (table.table == "perplexity").sum() == 4  # every complete published row, as without the damage


@pytest.mark.parametrize("damage, message", [
    (_not_utf8, "perplexity.csv is not UTF-8 text (byte"),
    (_extra_fields, "perplexity.csv row 2 has 13 fields where the header has 10"),
    (lambda path: path.write_text(""), "perplexity.csv holds no complete row"),
], ids=["not UTF-8", "row with extra fields", "empty"])
def test_an_unreadable_table_is_one_sentence(tmp_path, capsys, damage, message):
    folder = tmp_path / "Yarn-Llama-2-7b-64k"
    folder.mkdir()
    pd.DataFrame([dict(key(), dataset="proofpile", protocol="truncated", window_bos="every", context_length=8192,
                       n_docs=10, ppl=3.60)] * 2).to_csv(folder / "perplexity.csv", index=False)
    damage(folder / "perplexity.csv")
    assert cli.main(["compare", str(folder)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()  # the error, after the reader's warning when the file is only cut off
    assert message in lines[-1] and lines[-1].startswith("error: ") and len(lines) <= 2, err
    assert "Traceback" not in err and issubclass(paper.CompareError, cli.EvalHarnessError)


@pytest.mark.parametrize("command", ["compare", "effective-context"])
def test_a_csv_in_a_missing_folder_is_refused_before_the_work(run_dir, tmp_path, capsys, monkeypatch, command):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the work ran before --csv was checked")

    monkeypatch.setattr(paper, "compare_run", must_not_run)
    monkeypatch.setattr("evalharness.analysis.effective_context.load_effective_context_tables", must_not_run)
    target = tmp_path / "nowhere" / "x.csv"
    assert cli.main([command, str(run_dir), "--csv", str(target)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == f"error: --csv {str(target)!r}: the folder {str(target.parent)!r} does not exist; give a file " \
                  "in an existing folder.", err
    assert cli.main([command, str(run_dir), "--csv", str(run_dir)]) == cli.EXIT_USAGE
    assert "is a folder; give a file name" in capsys.readouterr().err


# ----
# Every committed run folder in results/ rebuilds its report.md and figures byte-identically from
# the folder alone (`run_eval.py plot DIR` on a copy: the report options are recorded in it); the
# report's layout; what the console says (resume, plain progress, `none`, compare, methods).


ROOT = Path(__file__).resolve().parent.parent


def test_compare_says_why_nothing_matched_and_prints_no_nan(capsys):
    govreport = ROOT / "results" / "smollm2-135m-govreport"
    assert cli.main(["compare", str(govreport), "--model", "yarn-llama-2-7b-64k"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "govreport sliding perplexity is published at 32768 tokens, this run measured 16384" in err
    assert cli.main(["compare", str(ROOT / "results" / "smollm2-135m-passkey"), "--model",
                     "yarn-llama-2-7b-64k"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and " none " in out
