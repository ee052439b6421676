"""Effective context per method (issue 15 item 3): each rule on hand-made tables with the answer worked
out by hand in the comments, the thresholds as options, several run folders at once through the CLI,
the report section, and bad input."""
import math
from pathlib import Path

import pandas as pd
import pytest

from evalharness import cli
from evalharness.analysis.effective_context import (
    EFFECTIVE_CONTEXT_COLUMNS,
    EffectiveContextRules,
    effective_context,
    load_effective_context_tables,
    longest_passing_length,
)
from evalharness.passkey.analysis import passkey_effective_context
from evalharness.perplexity.analysis import perplexity_effective_context
from evalharness.report import build_report
from evalharness.results import SCHEMAS
from evalharness.ruler.analysis import RULER_COLUMNS, load_ruler, ruler_effective_context, ruler_means, ruler_reference

L = 4096  # original context of the hand-made perplexity and passkey series


# ---------------------------------------------------------------------------------------------
# Hand-made tables
# ---------------------------------------------------------------------------------------------

def ppl_rows(curves, original_ctx=L, dataset="d", protocol="truncated", stride=0, model="m"):
    """perplexity.csv rows; `curves`: {(method, factor): {length: ppl}}."""
    rows = [dict(model=model, method=method, factor=factor, original_ctx=original_ctx, dataset=dataset,
                 protocol=protocol, window_bos="first" if protocol == "truncated" else "every",
                 context_length=length, stride=stride, n_docs=1, scored_tokens=length - 1, n_windows=1,
                 ppl=value, ppl_paper=value, ppl_ci_low=value, ppl_ci_high=value)
            for (method, factor), curve in curves.items() for length, value in curve.items()]
    return pd.DataFrame(rows, columns=SCHEMAS["perplexity"])


def passkey_rows(curves, trials=10, model="m"):
    """passkey.csv rows, one per prompt; `curves`: {(method, factor): {length: accuracy}} with
    accuracy·trials correct prompts (the first trials)."""
    rows = [dict(model=model, method=method, factor=factor, original_ctx=L, context_length=length,
                 prompt_tokens=length, depth=0.5, trial=trial, seed=0, scoring="paper", passkey=12345,
                 continuation="", correct=trial < round(accuracy * trials), key_forced_argmax=False)
            for (method, factor), curve in curves.items() for length, accuracy in curve.items()
            for trial in range(trials)]
    return pd.DataFrame(rows, columns=SCHEMAS["passkey"])


def ruler_rows(curves, original_ctx=8192, model="m"):
    """ruler.csv rows as ruler.py writes them; `curves`: {(method, factor): {length: {task: score}}}."""
    rows = [dict(model=model, method=method, factor=factor, original_ctx=original_ctx, task=task,
                 context_length=length, score=score, n=10, stderr=0.05)
            for (method, factor), curve in curves.items() for length, scores in curve.items()
            for task, score in scores.items()]
    return pd.DataFrame(rows, columns=RULER_COLUMNS)


PPL = {
    # best at ≤ L=4096: 10.0 (at 2048); θ = 1.1 · 10 = 11.0; 8192 (10.9) passes, 16384 (11.2) fails → 8192.
    # 1024 (12.0) fails but lies below the best length: no gap.
    ("yarn", 2.0): {1024: 12.0, 2048: 10.0, 4096: 10.5, 8192: 10.9, 16384: 11.2},
    # best at ≤ L: 9.0 (at 4096); θ = 9.9; 8192 (30) fails, 16384 (9.5) passes → 16384 with a gap.
    ("base", 1.0): {1024: 12.0, 2048: 10.0, 4096: 9.0, 8192: 30.0, 16384: 9.5},
    # best at ≤ L: 14.0 (at 4096; the global minimum 12.0 at 8192 > L does not count); θ = 15.4;
    # 16384 (14.5) passes → 16384 (with the global minimum θ would be 13.2 and the answer 8192).
    ("pi", 2.0): {1024: 20.0, 2048: 15.0, 4096: 14.0, 8192: 12.0, 16384: 14.5},
    # an infinite perplexity fails: best 10.0, θ = 11.0; 8192 inf fails → 4096.
    ("ntk", 2.0): {2048: 10.0, 4096: 10.5, 8192: math.inf},
}

PASSKEY = {
    # ≥ 0.8 at 4096 and 16384, 8192 fails → 16384 (the paper's rule), gap.
    ("yarn", 2.0): {4096: 1.0, 8192: 0.7, 16384: 0.8},
    # no length reaches 0.8 → NaN.
    ("base", 1.0): {4096: 0.6, 8192: 0.0},
}

RULER = {
    # base, L = 8192: mean over tasks a, b — 2048: (0.9+0.7)/2 = 0.8, 4096: 0.7, 8192: 0.6, 16384: 0.1.
    # ℓ_ref = L/2 = 4096 (tested) → θ = 0.85 · 0.7 = 0.595; 0.6 ≥ 0.595 at 8192, 0.1 fails → 8192.
    ("base", 1.0): {2048: {"a": 0.9, "b": 0.7}, 4096: {"a": 0.8, "b": 0.6}, 8192: {"a": 0.7, "b": 0.5},
                    16384: {"a": 0.1, "b": 0.1}},
    # yarn: 4096: 0.75, 8192: (0.6+0.4)/2 = 0.5 fails, 16384: 0.6 passes → 16384 with a gap.
    ("yarn", 2.0): {4096: {"a": 0.8, "b": 0.7}, 8192: {"a": 0.6, "b": 0.4}, 16384: {"a": 0.7, "b": 0.5}},
}


def by_method(frame):
    return frame.set_index("method")


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------

def test_longest_passing_length_counts_a_length_after_a_failing_shorter_one():
    assert longest_passing_length(pd.Series([True, False, True], index=[1, 2, 4])) == (4.0, True)
    assert longest_passing_length(pd.Series([True, True, False], index=[1, 2, 4])) == (2.0, False)
    effective, gap = longest_passing_length(pd.Series([False, False], index=[1, 2]))
    assert math.isnan(effective) and gap is False


def test_perplexity_rule_worked_example():
    ctx = by_method(perplexity_effective_context(ppl_rows(PPL)))
    assert ctx.loc["yarn", "best_length"] == 2048 and ctx.loc["yarn", "best"] == 10.0
    assert ctx.loc["yarn", "threshold"] == pytest.approx(11.0)
    assert ctx.loc["yarn", "effective_context"] == 8192 and ctx.loc["yarn", "value_at_context"] == 10.9
    assert not ctx.loc["yarn", "shorter_failure"]  # 1024 fails, but below the best length
    assert ctx.loc["base", "effective_context"] == 16384 and ctx.loc["base", "shorter_failure"]
    assert ctx.loc["pi", "best"] == 14.0 and ctx.loc["pi", "effective_context"] == 16384  # best at ≤ L only
    assert ctx.loc["ntk", "effective_context"] == 4096
    assert ctx["max_length_tested"].to_dict() == {"base": 16384, "pi": 16384, "ntk": 8192, "yarn": 16384}


def test_perplexity_tolerance_changes_the_answer():
    # τ = 0.25: yarn θ = 12.5, 16384 (11.2) passes; τ = 0: only the best length itself passes.
    assert by_method(perplexity_effective_context(ppl_rows(PPL), tolerance=0.25)).loc[
        "yarn", "effective_context"] == 16384
    strict = by_method(perplexity_effective_context(ppl_rows(PPL), tolerance=0.0))
    assert strict.loc["yarn", "effective_context"] == 2048 and strict.loc["base", "effective_context"] == 4096


def test_perplexity_without_a_length_at_most_L_is_not_measured():
    # yarn: lengths 8192 and 16384 only, L = 4096: no reference, so no row ("—", not "none");
    # base has 4096 and keeps its row
    curves = {("yarn", 2.0): {8192: 5.0, 16384: 5.1}, ("base", 1.0): {4096: 5.0, 8192: 9.0}}
    ctx = perplexity_effective_context(ppl_rows(curves))
    assert list(ctx["method"]) == ["base"] and ctx.loc[0, "effective_context"] == 4096
    table = effective_context({"perplexity": ppl_rows(curves), "passkey": pd.DataFrame(), "ruler": pd.DataFrame()})
    assert list(table["method"]) == ["base"]


def test_perplexity_is_per_data():
    frame = pd.concat([ppl_rows({("yarn", 2.0): {2048: 10.0, 8192: 10.9}}),
                       ppl_rows({("yarn", 2.0): {2048: 10.0, 8192: 11.5}}, dataset="g", protocol="sliding",
                                stride=256)])
    table = effective_context({"perplexity": frame, "passkey": pd.DataFrame(), "ruler": pd.DataFrame()})
    assert dict(zip(table["data"], table["effective_context"])) == {
        "d, truncated": 8192, "g, sliding (stride 256)": 2048}


def test_passkey_rule_is_the_papers_and_its_threshold_is_an_option():
    table = effective_context({"perplexity": pd.DataFrame(), "passkey": passkey_rows(PASSKEY), "ruler": pd.DataFrame()})
    ctx = by_method(table)
    assert set(table["criterion"]) == {"passkey"}
    assert ctx.loc["yarn", "effective_context"] == 16384 and ctx.loc["yarn", "shorter_failure"]
    assert ctx.loc["yarn", "value_at_context"] == pytest.approx(0.8) and ctx.loc["yarn", "threshold"] == 0.8
    assert math.isnan(ctx.loc["base", "effective_context"])
    # the same number as passkey_effective_context, which the report's passkey section shows
    direct = by_method(passkey_effective_context(passkey_rows(PASSKEY)))
    assert direct.loc["yarn", "effective_context"] == 16384
    # threshold 0.5: base passes at 4096 (0.6); yarn still at 16384
    loose = by_method(effective_context({"passkey": passkey_rows(PASSKEY)},
                                          EffectiveContextRules(passkey_threshold=0.5)))
    assert loose.loc["base", "effective_context"] == 4096 and loose.loc["yarn", "effective_context"] == 16384
    # threshold 0.9: yarn only at 4096 (1.0)
    strict = by_method(effective_context({"passkey": passkey_rows(PASSKEY)},
                                          EffectiveContextRules(passkey_threshold=0.9)))
    assert strict.loc["yarn", "effective_context"] == 4096 and not strict.loc["yarn", "shorter_failure"]


def test_ruler_rule_worked_example():
    means = ruler_means(ruler_rows(RULER))
    base_means = means[means["method"] == "base"].set_index("context_length")["mean_score"]
    assert base_means.to_dict() == pytest.approx({2048: 0.8, 4096: 0.7, 8192: 0.6, 16384: 0.1})
    (ref,) = ruler_reference(ruler_rows(RULER)).to_dict("records")
    assert ref["reference_length"] == 4096 and ref["threshold"] == pytest.approx(0.595)
    ctx = by_method(ruler_effective_context(ruler_rows(RULER)))
    assert ctx.loc["base", "effective_context"] == 8192 and not ctx.loc["base", "shorter_failure"]
    assert ctx.loc["base", "value_at_context"] == pytest.approx(0.6)
    assert ctx.loc["yarn", "effective_context"] == 16384 and ctx.loc["yarn", "shorter_failure"]
    assert ctx["threshold"].tolist() == pytest.approx([0.595, 0.595])
    assert (ctx["n_tasks_at_context"] == 2).all()


def test_ruler_fraction_and_absolute_threshold_are_options():
    # fraction 1.0: θ = 0.7; base: 8192 (0.6) fails → 4096; yarn: 4096 (0.75) → 4096
    ctx = by_method(ruler_effective_context(ruler_rows(RULER), fraction=1.0))
    assert ctx.loc["base", "effective_context"] == 4096 and ctx.loc["yarn", "effective_context"] == 4096
    # absolute θ = 0.55: base 8192 (0.6), yarn 16384 (0.6); no reference length
    ctx = by_method(ruler_effective_context(ruler_rows(RULER), threshold=0.55))
    assert ctx.loc["base", "effective_context"] == 8192 and ctx.loc["yarn", "effective_context"] == 16384
    assert ctx["reference_length"].isna().all()
    # through the rules object
    rules = EffectiveContextRules(ruler_fraction=1.0)
    table = by_method(effective_context({"ruler": ruler_rows(RULER)}, rules))
    assert table.loc["base", "effective_context"] == 4096
    assert table.loc["base", "threshold"] == pytest.approx(0.7)


def test_ruler_reference_is_the_longest_base_length_at_most_half_L():
    # L/2 = 4096 is not tested: ℓ_ref = 3000 (mean 0.8) → θ = 0.68; 6000 (0.7) passes, 12000 (0.5) fails
    curves = {("base", 1.0): {3000: {"a": 0.8}, 6000: {"a": 0.7}, 12000: {"a": 0.5}}}
    (ref,) = ruler_reference(ruler_rows(curves)).to_dict("records")
    assert ref["reference_length"] == 3000 and ref["threshold"] == pytest.approx(0.68)
    assert ruler_effective_context(ruler_rows(curves)).loc[0, "effective_context"] == 6000


def test_ruler_reference_is_matched_by_model_and_L_and_missing_base_gives_nan():
    other = ruler_rows({("yarn", 2.0): {4096: {"a": 0.9}}}, model="other")  # no base for this model
    late = ruler_rows({("base", 1.0): {8192: {"a": 0.9}}, ("yarn", 2.0): {8192: {"a": 0.9}}}, model="late")
    frame = pd.concat([ruler_rows(RULER), other, late], ignore_index=True)
    ctx = ruler_effective_context(frame).set_index(["model", "method"])
    assert ctx.loc[("m", "yarn"), "effective_context"] == 16384  # as without the other models
    assert math.isnan(ctx.loc[("other", "yarn"), "effective_context"])
    assert math.isnan(ctx.loc[("late", "yarn"), "threshold"])  # base has no length ≤ L/2 = 4096


def test_missing_tables_give_only_what_was_measured(tmp_path):
    assert effective_context({"perplexity": pd.DataFrame(), "passkey": pd.DataFrame(), "ruler": pd.DataFrame()}).empty
    table = effective_context({"perplexity": ppl_rows(PPL), "passkey": passkey_rows(PASSKEY), "ruler": pd.DataFrame()})
    assert set(table["criterion"]) == {"perplexity", "passkey"}
    assert list(table.columns) == EFFECTIVE_CONTEXT_COLUMNS
    # display order: series (Base, PI, NTK, YaRN), perplexity before passkey within one
    assert list(zip(table["method"], table["criterion"])) == [
        ("base", "perplexity"), ("base", "passkey"), ("pi", "perplexity"), ("ntk", "perplexity"),
        ("yarn", "perplexity"), ("yarn", "passkey")]
    empty = load_ruler(tmp_path)
    assert empty.empty and list(empty.columns) == RULER_COLUMNS


def test_several_folders_are_one_table_and_a_repeated_cell_comes_from_the_first(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    ppl_rows({("yarn", 2.0): {2048: 10.0, 8192: 10.9}}).to_csv(first / "perplexity.csv", index=False)
    # the same cells with other values, and one more length
    ppl_rows({("yarn", 2.0): {2048: 50.0, 8192: 50.0, 16384: 10.95}}).to_csv(second / "perplexity.csv",
                                                                            index=False)
    ruler_rows(RULER).to_csv(second / "ruler.csv", index=False)
    tables = load_effective_context_tables([first, second])
    ppl = tables["perplexity"].set_index("context_length")["ppl"]
    assert ppl.to_dict() == {2048: 10.0, 8192: 10.9, 16384: 10.95}
    assert tables["passkey"].empty and len(tables["ruler"]) == len(ruler_rows(RULER))
    table = effective_context(tables)
    yarn = table[table["method"] == "yarn"].set_index("criterion")
    assert yarn.loc["perplexity", "effective_context"] == 16384
    assert yarn.loc["ruler", "effective_context"] == 16384


# ---------------------------------------------------------------------------------------------
# Report and command line
# ---------------------------------------------------------------------------------------------

def markdown_rows(text: str) -> dict[str, list[str]]:
    """The effective-context table of printed markdown: first cell → the other cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| :")]
    header, *rows = lines
    return {"header": [c.strip() for c in header.strip("|").split("|")][1:],
            **{cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}}


@pytest.fixture
def run_folders(tmp_path):
    """Three run folders as separate tasks write them: perplexity, passkey, RULER."""
    folders = {name: tmp_path / name for name in ("ppl", "passkey", "ruler")}
    for folder in folders.values():
        folder.mkdir()
    ppl_rows(PPL).to_csv(folders["ppl"] / "perplexity.csv", index=False)
    passkey_rows(PASSKEY).to_csv(folders["passkey"] / "passkey.csv", index=False)
    ruler_rows(RULER, original_ctx=L).to_csv(folders["ruler"] / "ruler.csv", index=False)
    return folders


def test_the_command_prints_one_table_from_several_folders(run_folders, capsys, tmp_path):
    # RULER with L = 4096 here: ℓ_ref = 2048 (mean 0.8), θ = 0.68; base: 4096 (0.7) → 4096;
    # yarn: 4096 (0.75) → 4096 (8192 0.5 and 16384 0.6 fail)
    args = ["effective-context", *map(str, run_folders.values()), "--csv", str(tmp_path / "e.csv")]
    assert cli.main(args) == cli.EXIT_OK
    out = capsys.readouterr().out
    rows = markdown_rows(out)
    assert rows["header"] == ["perplexity (d, truncated)", "passkey", "RULER"]
    assert rows["Base"] == ["≥16384†", "none", "4096"]
    assert rows["PI s=2"] == ["≥16384", "—", "—"]
    assert rows["NTK s=2"] == ["4096", "—", "—"]
    assert rows["YaRN s=2"] == ["8192", "≥16384†", "4096"]
    assert "ℓ_ref = 2048, θ = 68.0 %" in out and "(1 + 0.1)" in out
    written = pd.read_csv(tmp_path / "e.csv")
    assert len(written) == 4 + 2 + 2 and set(written["criterion"]) == {"perplexity", "passkey", "ruler"}


def test_the_command_takes_the_thresholds_as_options(run_folders, capsys):
    args = ["effective-context", *map(str, run_folders.values()), "--ppl-tolerance", "0.25",
            "--passkey-threshold", "0.5", "--ruler-fraction", "0.5"]
    assert cli.main(args) == cli.EXIT_OK
    rows = markdown_rows(capsys.readouterr().out)
    # ppl τ = 0.25: yarn θ = 12.5 → 16384; passkey 0.5: base 4096 (0.6), yarn every length (8192: 0.7);
    # RULER θ = 0.5 · 0.8 = 0.4: base 8192 (0.6; 16384 0.1 fails), yarn 16384 (0.6)
    assert rows["YaRN s=2"] == ["≥16384", "≥16384", "≥16384"]
    assert rows["Base"] == ["≥16384†", "4096", "8192"]
    assert cli.main(["effective-context", str(run_folders["ruler"]), "--ruler-threshold", "0.72"]) == 0
    rows = markdown_rows(capsys.readouterr().out)
    assert rows["Base"] == ["—", "—", "2048"] and rows["YaRN s=2"] == ["—", "—", "4096"]


def test_without_ruler_the_column_is_not_measured(run_folders, capsys):
    assert cli.main(["effective-context", str(run_folders["ppl"]), str(run_folders["passkey"])]) == 0
    rows = markdown_rows(capsys.readouterr().out)
    assert [cells[-1] for name, cells in rows.items() if name != "header"] == ["—"] * 4


@pytest.mark.parametrize("setup, extra, message", [
    (lambda p: (p / "notes.txt").write_text("x"), [], "is not a run folder"),
    (lambda p: None, [], "is not a run folder"),
    (lambda p: p.rmdir(), [], "does not exist"),
    (lambda p: pd.DataFrame(columns=SCHEMAS["leaderboard"]).to_csv(p / "leaderboard.csv", index=False), [],
     "no perplexity, passkey or ruler table"),
    (lambda p: ppl_rows(PPL).to_csv(p / "perplexity.csv", index=False), ["--ruler-fraction", "0"],
     "--ruler-fraction 0 is out of range"),
    (lambda p: ppl_rows(PPL).to_csv(p / "perplexity.csv", index=False), ["--passkey-threshold", "1.5"],
     "--passkey-threshold 1.5 is out of range"),
    (lambda p: ppl_rows(PPL).to_csv(p / "perplexity.csv", index=False), ["--ppl-tolerance", "-0.1"],
     "--ppl-tolerance -0.1 is out of range"),
    (lambda p: ppl_rows(PPL).to_csv(p / "perplexity.csv", index=False),
     ["--ruler-fraction", "0.9", "--ruler-threshold", "0.5"], "exclude each other"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, setup, extra, message):
    folder = tmp_path / "folder"
    folder.mkdir()
    setup(folder)
    assert cli.main(["effective-context", str(folder), *extra]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_report_has_the_section_with_what_the_folder_has(run_folders):
    text = build_report(run_folders["ppl"])
    section = text[text.index("## Effective context"):]
    rows = markdown_rows(section)
    assert rows["YaRN s=2"] == ["8192"]  # the criteria the folder has, with their rules only
    assert "Perplexity: ppl" in section and "RULER" not in section and "Passkey:" not in section
    loose = build_report(run_folders["ppl"], rules=EffectiveContextRules(ppl_tolerance=0.25))
    assert markdown_rows(loose[loose.index("## Effective context"):])["YaRN s=2"][0] == "≥16384"
    passkey = build_report(run_folders["passkey"])
    assert markdown_rows(passkey[passkey.index("## Effective context"):])["YaRN s=2"] == ["≥16384†"]


def test_plot_command_writes_the_report_with_the_options(run_folders):
    assert cli.main(["plot", str(run_folders["ppl"]), "--ppl-tolerance", "0.25"]) == 0
    text = (run_folders["ppl"] / "report.md").read_text()
    assert "(1 + 0.25)" in text
    assert markdown_rows(text[text.index("## Effective context"):])["YaRN s=2"][0] == "≥16384"


def test_passkey_scoring_rule_is_named_in_words_in_the_effective_context_table():
    """The paper's rule is the passkey column as such; the re-rotated cache's column says so in words."""
    text = (Path(__file__).resolve().parent.parent / "results" / "smollm2-135m-passkey" / "report.md").read_text()
    assert "| method | passkey | passkey (re-rotated KV cache) |" in text and "scoring paper" not in text
