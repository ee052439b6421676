"""The command line end to end on random:tiny and a local corpus the tests write."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_corpus

from evalharness import cli, registry
from evalharness.cli import UsageError
from evalharness.leaderboard.task import parse_limit
from evalharness.options import parse_lengths
from evalharness.perplexity import engine as perplexity

pytestmark = pytest.mark.usefixtures("isolated_cache")
WORDS = "the cat sat on a mat and the dog ran far away from home"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 3, WORDS, lambda i: 150 + 40 * i)


def run(argv):
    return cli.main(argv)


def base_args(corpus, out, *extra, **overrides):
    """CLI arguments of the standard tiny run; keyword overrides replace options (`lengths="64,128"`)."""
    options = {"--model": "random:tiny", "--method": "base,pi,yarn,dynamic-yarn", "--factor": "2",
               "--dataset": f"local:{corpus}", "--lengths": "128:512:128", "--out": str(out)}
    options.update({f"--{k.replace('_', '-')}": v for k, v in overrides.items()})
    return [item for pair in options.items() for item in pair] + ["--no-progress", "--no-plots", *extra]


def test_parse_lengths():
    assert parse_lengths("2k:8k:2k") == [2048, 4096, 6144, 8192]
    assert parse_lengths("100,200") == [100, 200]
    for bad in ("8k:2k:2k", "200,100", "0,5", "a:b:c", "1:2"):
        with pytest.raises(UsageError):
            parse_lengths(bad)


def test_run_writes_tidy_tables(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(base_args(corpus, out)) == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv")
    # 3 docs × 4 lengths × 4 specs, every value finite, original context = native 256
    assert len(docs) == 3 * 4 * 4
    assert set(docs["method"]) == {"base", "pi", "yarn", "dynamic-yarn"}
    assert set(docs["original_ctx"]) == {256}
    assert (docs["scored_tokens"] == docs["context_length"] - 1).all()
    assert docs["ppl"].map(math.isfinite).all()
    # dynamic-yarn at lengths ≤ L equals base (it reused or recomputed the unit-scale pass)
    pivot = docs.pivot_table(index=["doc_id", "context_length"], columns="method", values="nll_sum")
    short = pivot.loc[pivot.index.get_level_values(1) <= 256]
    assert ((short["dynamic-yarn"] - short["base"]).abs() < 1e-4).all()
    long = pivot.loc[pivot.index.get_level_values(1) > 256]
    assert ((long["dynamic-yarn"] - long["base"]).abs() > 1e-4).any()
    summary = pd.read_csv(out / "perplexity.csv")
    assert len(summary) == 4 * 4 and (summary["n_docs"] == 3).all()
    row = summary[(summary.method == "yarn") & (summary.context_length == 384)].iloc[0]
    part = docs[(docs.method == "yarn") & (docs.context_length == 384)]
    assert row["ppl"] == pytest.approx(math.exp(part["nll_sum"].sum() / part["scored_tokens"].sum()))
    assert "perplexity — local:" in capsys.readouterr().out


def test_a_run_ends_with_figures_and_report(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = [a for a in base_args(corpus, out, method="base,yarn", lengths="128,256,512") if a != "--no-plots"]
    assert run(args) == cli.EXIT_OK
    assert (out / "figures" / "perplexity.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "figures/perplexity.png" in report
    yarn_512 = pd.read_csv(out / "perplexity.csv").query("method == 'yarn' and context_length == 512")["ppl"].item()
    assert f"{yarn_512:.2f}" in report or f"{yarn_512:.3g}" in report
    assert run(["plot", str(out), "--no-report"]) == cli.EXIT_OK
    assert run(["plot", str(tmp_path / "missing")]) == cli.EXIT_USAGE


def test_a_resume_computes_as_the_earlier_runs_did(corpus, tmp_path, capsys):
    """A folder with float32 results of a model: the same model in bfloat16 into it is refused, dry
    run too, before anything is written; the same settings resume (sliding-window attention:
    test_models.py)."""
    out = tmp_path / "run"
    assert run(base_args(corpus, out, method="base", lengths="64")) == cli.EXIT_OK
    tables = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    manifest = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    for extra in (["--dtype", "bfloat16"], ["--dtype", "bfloat16", "--dry-run"]):
        assert run(base_args(corpus, out, *extra, method="base", lengths="64")) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.strip() == (f"error: {str(out)!r} holds random:tiny results computed in float32; this run would "
                               "compute in bfloat16 and mix both in tables that have no dtype column: give --dtype "
                               "float32 to resume, or another --out."), err
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == tables
    assert (out / "manifest.json").read_bytes() == manifest
    assert run(base_args(corpus, out, "--dtype", "float32", method="base", lengths="64")) == cli.EXIT_OK
    assert "3 of 3 cells already done; nothing to compute." in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_tables(corpus, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert run(base_args(corpus, full)) == cli.EXIT_OK

    calls = {"n": 0}
    real = perplexity.token_nll

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(perplexity, "token_nll", dies_midway)
    assert run(base_args(corpus, resumed)) == cli.EXIT_INTERRUPTED
    partial = pd.read_csv(resumed / "perplexity_docs.csv")
    assert 0 < len(partial) < 48
    monkeypatch.setattr(perplexity, "token_nll", real)

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(perplexity, "token_nll", counting)
    assert run(base_args(corpus, resumed)) == cli.EXIT_OK
    monkeypatch.setattr(perplexity, "token_nll", real)
    assert counted["n"] < calls["n"] + 12  # done cells were skipped, not recomputed

    key = ["method", "doc_id", "context_length"]
    for table in ("perplexity_docs", "perplexity"):
        a = pd.read_csv(full / f"{table}.csv").sort_values(key[:1] + key[2:] if table == "perplexity" else key)
        b = pd.read_csv(resumed / f"{table}.csv").sort_values(key[:1] + key[2:] if table == "perplexity" else key)
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_rerun_is_a_no_op_and_byte_identical(corpus, tmp_path):
    out = tmp_path / "run"
    assert run(base_args(corpus, out)) == cli.EXIT_OK
    first = (out / "perplexity_docs.csv").read_bytes(), (out / "perplexity.csv").read_bytes()
    assert run(base_args(corpus, out)) == cli.EXIT_OK
    assert ((out / "perplexity_docs.csv").read_bytes(), (out / "perplexity.csv").read_bytes()) == first
    again = tmp_path / "again"
    assert run(base_args(corpus, again)) == cli.EXIT_OK
    assert ((again / "perplexity_docs.csv").read_bytes(), (again / "perplexity.csv").read_bytes()) == first


def test_sliding_protocol(corpus, tmp_path):
    out = tmp_path / "sliding"
    args = base_args(corpus, out, method="base,yarn", factor="4", protocol="sliding", lengths="64,128", stride="32")
    assert run(args) == cli.EXIT_OK
    docs = pd.read_csv(out / "perplexity_docs.csv")
    assert set(docs["stride"]) == {32}
    # every document token (plus nothing for BOS) is scored exactly once in each window size
    doc_len = docs["doc_tokens"]
    assert (docs["scored_tokens"] == doc_len).all()
    windows_64 = docs.loc[docs.context_length == 64, "n_windows"]
    assert (windows_64 > docs.loc[docs.context_length == 128, "n_windows"].values).all()
    assert set(docs["window_bos"]) == {"every"}  # the authors' placement by default
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["args"]["window_bos"] == "every"
    # the transformers recipe into the same folder: new cells beside the old, never counted as them
    assert run(args + ["--window-bos", "first"]) == cli.EXIT_OK
    table = pd.read_csv(out / "perplexity.csv")
    assert sorted(set(table["window_bos"])) == ["every", "first"] and len(table) == 2 * 2 * 2
    every, first = (table[table.window_bos == b].set_index(["method", "context_length"])
                    for b in ("every", "first"))
    assert (every["scored_tokens"] == first["scored_tokens"]).all()
    assert (every["ppl"] != first["ppl"]).all()  # later windows lack or have BOS
    positions = pd.read_csv(out / "perplexity_positions.csv")
    assert set(positions["window_bos"]) == {"every", "first"}
    assert (positions["position_start"] < positions["context_length"]).all()


@pytest.mark.parametrize("error", [perplexity.NonFiniteError("3 of 127 token NLLs are NaN or infinite."),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 17.00 GiB")],
                         ids=["nan", "oom"])
def test_a_failing_cell_is_recorded_and_the_run_goes_on(corpus, tmp_path, monkeypatch, capsys, error):
    real = perplexity.truncated_nll

    def nan_for_pi(model, *args, **kwargs):
        from evalharness.scaling import current_spec

        if current_spec(model).method == "pi":
            raise error
        return real(model, *args, **kwargs)

    monkeypatch.setattr(perplexity, "truncated_nll", nan_for_pi)
    out = tmp_path / "run"
    assert run(base_args(corpus, out)) == cli.EXIT_CELLS_FAILED
    docs = pd.read_csv(out / "perplexity_docs.csv")
    assert set(docs["method"]) == {"base", "yarn", "dynamic-yarn"}  # the others ran
    manifest = (out / "manifest.json").read_text()
    assert type(error).__name__ in manifest and '"failed"' in manifest
    assert "3 cell(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "yarnn"}, "unknown method 'yarnn'"),
        ({"factor": "zero"}, "factor 'zero' is not a number"),
        ({"factor": "-1"}, "must be > 0"),
        ({"method": "pi", "factor": "0.5"}, "< 1"),
        ({"lengths": "512:128:128"}, "0 < start <= stop"),
        ({"lengths": "256,128"}, "strictly increasing"),
        ({"tasks": "ppl"}, "unknown task 'ppl'"),
        ({"dataset": "nope"}, "unknown corpus"),
        ({"docs": "1", "sample": "2"}, "exclude each other"),
        ({"lengths": "64:8k:64"}, "min_tokens"),
        ({"model": "random:huge"}, "random"),
        ({"model": "/does/not/exist"}, "/does/not/exist"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(corpus, tmp_path, capsys, change, message):
    out = tmp_path / "bad"
    assert run(base_args(corpus, out, **change)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (out / "perplexity_docs.csv").exists()


def test_out_that_is_a_file(corpus, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert run(base_args(corpus, target)) == cli.EXIT_USAGE
    assert "is a file" in capsys.readouterr().err


def test_methods_command_prints_the_table(capsys):
    assert run(["methods", "--rotary-dim", "128", "--rope-theta", "10000", "--original-ctx", "4096",
                "--method", "yarn,pi", "--factor", "16"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    yarn_line = next(line for line in out.splitlines() if line.startswith("yarn:16"))
    assert "20/46" in yarn_line and "1.2773" in yarn_line
    assert run(["methods", "--method", "yarn"]) == cli.EXIT_USAGE


def test_limit_is_one_count_or_one_per_task():
    assert parse_limit("7") == 7
    assert parse_limit("arc_challenge=50,mmlu=2") == {"arc_challenge": 50, "mmlu": 2}
    assert parse_limit("mmlu=1k") == {"mmlu": 1024}  # the token-count forms of options.positive_count
    for bad in ("0", "x", "arc_challenge=0", "=3"):
        with pytest.raises(Exception, match="--limit"):
            parse_limit(bad)


def test_limit_naming_a_task_not_run_is_refused(tmp_path, capsys):
    code = run(["--model", "random:tiny", "--tasks", "leaderboard", "--leaderboard-tasks", "arc_challenge",
                "--limit", "mmlu=2", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "mmlu" in capsys.readouterr().err


def test_fewer_documents_than_asked_is_said(corpus, tmp_path, capsys):
    """--docs / --sample above what the corpus holds at the length filter: the run goes on with the
    documents there are, and says so (the tables' n_docs hold the count)."""
    for flag, value in (("--docs", "5"), ("--sample", "4")):
        argv = base_args(corpus, tmp_path / "out", "--dry-run", method="base", lengths="64") + [flag, value]
        assert run(argv) == cli.EXIT_OK
        err = capsys.readouterr().err
        assert f"warning: {flag} {value} asks for {value} documents, but only 3 of local:{corpus}" in err, err
    assert run(base_args(corpus, tmp_path / "out", "--dry-run", "--docs", "3", method="base", lengths="64")) == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --dry-run: a weightless plan
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """One document of ≈ 140k byte tokens: a 128k truncated window fits."""
    return write_corpus(tmp_path_factory.mktemp("long"), 1, WORDS, 36_000)


def dry_run_7b_args(corpus, out):
    return ["--model", "random:llama2-7b", "--method", "base,yarn", "--factor", "16", "--lengths", "32k,128k",
            "--dataset", f"local:{corpus}", "--dtype", "float32", "--device", "cpu", "--dry-run",
            "--no-progress", "--out", str(out)]


def test_dry_run_builds_a_random_model_on_meta(long_corpus, tmp_path, capsys, monkeypatch):
    """--dry-run of a 7B random shape: every parameter stays on `meta` (nothing allocated, nothing
    written), the plan shows the cells and their memory estimate for the device asked."""
    from evalharness import models

    built, load, random_model = [], models.load, models.random_model

    def spy(*args, **kwargs):
        result = load(*args, **kwargs)
        built.append(result)
        return result

    def meta_only(name, dtype, device, **kwargs):  # a regression fails here, before allocating 27 GB
        assert str(device) == "meta", device
        return random_model(name, dtype, device, **kwargs)

    monkeypatch.setattr(models, "load", spy)
    monkeypatch.setattr(models, "random_model", meta_only)
    out = tmp_path / "out"
    assert run(dry_run_7b_args(long_corpus, out)) == cli.EXIT_OK
    (model, _, info), = built
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616
    assert info.device == "cpu" and info.dtype == "float32"
    printed = capsys.readouterr().out
    assert "yarn:16" in printed and "GiB" in printed
    assert not out.exists()


@pytest.mark.machine
def test_dry_run_of_a_7b_plan_in_fp32_stays_small_and_quick(long_corpus, tmp_path):
    """The 7B fp32 plan (27 GB of weights were it materialised) in a child process: peak RSS < 2 GB,
    wall time < 60 s (seconds when the machine is not shared)."""
    import os
    import subprocess
    import time

    from conftest import run_eval_command, subprocess_env

    start = time.perf_counter()
    proc = subprocess.Popen(run_eval_command(*dry_run_7b_args(long_corpus, tmp_path / "out")),
                            env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    assert os.waitstatus_to_exitcode(status) == 0, stderr.decode()[-2000:]
    peak_rss = usage.ru_maxrss * 1024  # kB on Linux
    print(f"7B fp32 dry run: peak RSS {peak_rss / 1e9:.2f} GB, {seconds:.1f} s")
    assert peak_rss < 2e9 and seconds < 60


def test_one_original_context_for_a_model_fine_tuned_with_scaling(corpus, tmp_path, capsys):
    """A checkpoint fine-tuned with YaRN (max_position_embeddings 65536, original 4096): L = 4096 in
    ModelInfo, scaling.native_context, the run banner, `methods --model` and report.md."""
    import transformers

    from evalharness import models, scaling

    config = transformers.LlamaConfig(
        vocab_size=models.BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=65536,
        rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096,
                         "rope_theta": 10000.0})
    folder = tmp_path / "yarn-64k"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    models.build_byte_tokenizer().save_pretrained(folder)
    assert scaling.original_context(config) == 4096
    model, _, info = models.load(str(folder), dtype="float32", device="cpu")
    assert info.native_ctx == scaling.native_context(model) == 4096

    assert run(["methods", "--model", str(folder), "--method", "yarn", "--factor", "2"]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "native context 4096" in printed and "L=4096" in printed and "65536" not in printed

    out = tmp_path / "run"
    argv = base_args(corpus, out, model=str(folder), method="base", lengths="64,128")
    assert run([a for a in argv if a != "--no-plots"]) == cli.EXIT_OK
    assert "native 4096," in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "native_ctx=4096" in report and "65536" not in report


@pytest.mark.parametrize("where", ["evalharness.cli.quiet_libraries", "evalharness.models.load",
                                   "evalharness.corpora.load_corpus"])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(corpus, tmp_path, capsys, monkeypatch, where):
    """Ctrl-C during start-up (library set-up, model load, corpus load): no traceback, exit 130."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupt)
    out = tmp_path / "out"
    assert run(base_args(corpus, out)) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("interrupted") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err


def test_help_still_prints_usage_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--help"])
    assert exit_.value.code == 0 and "--chunk-size" in capsys.readouterr().out


def help_text(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_states_every_default_in_words_and_ends_with_examples(capsys, command):
    """Every option has a help line; none says "(default: None)" or "(default: False)"; each
    subcommand ends with examples of its use."""
    text = help_text(capsys, command)
    assert "default: None" not in text and "default: False" not in text, text
    parser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not undocumented, undocumented
    assert "\nexamples:\n" in text and text.rstrip().splitlines()[-1].lstrip().startswith("run_eval.py")


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_docs_option_reference_is_the_help_and_is_current(capsys, monkeypatch, command):
    """docs/cli.md's option reference is each subcommand's `--help` as the CLI prints it (same
    width), and the committed section is what the generator writes now."""
    from evalharness.cli.reference import WIDTH, command_help, option_reference

    monkeypatch.setenv("COLUMNS", str(WIDTH + 2))  # argparse wraps at the terminal width − 2
    assert help_text(capsys, command) == command_help(command)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    assert option_reference() in docs, "docs/cli.md is stale: python -m evalharness.cli.reference docs/cli.md"


def test_eval_help_has_a_group_per_task(capsys):
    """`eval --help` groups the options by task: each registered task's name heads a group, and each
    option appears once."""
    text = help_text(capsys, "eval")
    headings = [line[:-1] for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    for name in registry.task_names():
        assert any(name in heading for heading in headings), (name, headings)
    flags = [word for line in text.split("options:", 1)[1].splitlines()
             for word in [line.strip().split(" ")[0].rstrip(",")] if line.startswith("  --")]
    assert len(flags) == len(set(flags)) and "--stride" in flags and "--ruler-samples" in flags


def test_parquet_corpus_shows_no_progress_bar_under_no_progress(tmp_path, capsys):
    """datasets' "Generating train split" bar is off with --no-progress (a fresh file: no cache hit)."""
    path = tmp_path / "docs.parquet"
    pd.DataFrame({"text": [" ".join([WORDS] * 30)] * 2}).to_parquet(path)
    argv = base_args(path, tmp_path / "out", dataset=f"local:{path}", method="base", lengths="64,128") + ["--dry-run"]
    assert run(argv) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "Generating" not in err and "%|" not in err, err


def test_a_reader_that_stops_ends_the_output_quietly(tmp_path):
    """`run_eval.py methods … | head -0`: the pipe is closed before the first line is written; the
    run ends with exit code 141 (128 + SIGPIPE) and no traceback, not even at the flush on exit."""
    import subprocess

    from conftest import run_eval_command, subprocess_env

    proc = subprocess.Popen(run_eval_command("methods", "--model", "random:tiny"), env=subprocess_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command prints anything
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.machine
@pytest.mark.parametrize("delay", [0.3, 1.5, 4.0])
def test_sigint_during_start_up_is_one_line_and_exit_130(corpus, tmp_path, delay):
    """A real Ctrl-C (SIGINT) to a run starting up, at a few moments (imports, model, corpus): exit
    130, one line, no traceback (a run already finished by then is skipped)."""
    import signal
    import subprocess
    import time

    from conftest import run_eval_command, subprocess_env

    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: the child gets SIGINT's default disposition back, as a run in a terminal has it.
    proc = subprocess.Popen(run_eval_command(*base_args(corpus, tmp_path / "out")), env=subprocess_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    text = stderr.decode().strip()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and text.splitlines()[-1].startswith("interrupted"), text


# ----
# Every committed run folder in results/ rebuilds its report.md and figures byte-identically from
# the folder alone (`run_eval.py plot DIR` on a copy: the report options are recorded in it); the
# report's layout; what the console says (resume, plain progress, `none`, compare, methods).


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


# ----
# The plan and the cell runner: the task registry, the failure policy, --dry-run, and data-parallel
# sharding of every task (passkey and leaderboard under 2 gloo processes compute each cell once).


@pytest.mark.usefixtures("isolated_cache")
def test_bare_form_means_eval_and_commands_parse_their_own_options():
    bare = cli.parse_args(["--model", "random:tiny", "--lengths", "64,128"])
    explicit = cli.parse_args(["eval", "--model", "random:tiny", "--lengths", "64,128"])
    assert bare.command == explicit.command == "eval" and vars(bare) == vars(explicit)
    assert cli.parse_args([]).command == "eval"
    plot = cli.parse_args(["plot", "a", "b", "--no-report"])
    assert (plot.command, plot.results_dirs, plot.no_report) == ("plot", ["a", "b"], True)
    methods = cli.parse_args(["methods", "--rotary-dim", "64"])
    assert (methods.command, methods.rotary_dim) == ("methods", 64)
    assert set(cli.COMMANDS) >= {"eval", "methods", "plot", "compare"}
    with pytest.raises(cli.UsageError, match="unrecognized arguments: --model x"):  # another command's option
        cli.parse_args(["plot", "a", "--model", "x"])


@pytest.mark.parametrize("argv, message", [
    (["--rotary-dim", "2", "--rope-theta", "10000", "--original-ctx", "4096", "--method", "ntk"],
     "NTK-aware scaling needs a rotary dimension above 2"),
    (["--rotary-dim", "128", "--rope-theta", "0", "--original-ctx", "4096"], "rope base 0.0 is not valid"),
    (["--rotary-dim", "3", "--rope-theta", "10000", "--original-ctx", "4096"], "rotary dimension 3 is not valid"),
    (["--rotary-dim", "128", "--rope-theta", "1e308", "--original-ctx", "4096"], "--rope-theta 1e308 must be ≤"),
    (["--model", "random:tiny", "--factor", "2,,4"], "--factor: factor list '2,,4' has an empty item"),
    (["--model", "random:tiny", "--method", ",yarn"], "--method ',yarn' has an empty item"),
])
def test_methods_refuses_bad_dimensions_before_printing(capsys, argv, message):
    """`methods` checks |D| and b (0 is a value, not a missing option) and computes every row before
    it prints: a refusal is one sentence on stderr and nothing on stdout."""
    assert cli.main(["methods", *argv]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1


def test_plot_checks_every_folder_before_writing_any(tmp_path, capsys):
    """`plot GOOD BAD` refuses BAD before GOOD's figures or report are rewritten; a `figures` file
    and a folder without a result table are refused in one sentence."""
    import shutil

    good = tmp_path / "good"
    shutil.copytree(Path(__file__).resolve().parent.parent / "results" / "smollm2-135m-passkey", good)
    before = {p: p.stat().st_mtime_ns for p in good.rglob("*") if p.is_file()}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "foo.csv").write_text("a,b\n")
    assert cli.main(["plot", str(good), str(tmp_path / "bad")]) == cli.EXIT_USAGE
    assert "is not a run folder" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in good.rglob("*") if p.is_file()} == before
    shutil.rmtree(good / "figures")
    (good / "figures").write_text("")
    assert cli.main(["plot", str(good)]) == cli.EXIT_USAGE
    assert "figures' is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("destination", ["/dev/full", "/proc/evalharness.csv"])
def test_csv_into_a_kernel_file_system_is_refused(capsys, destination):
    run = str(Path(__file__).resolve().parent.parent / "results" / "smollm2-135m-passkey")
    assert cli.main(["effective-context", run, "--csv", destination]) == cli.EXIT_USAGE
    assert f"--csv {destination!r} is inside a kernel file system" in capsys.readouterr().err


def test_task_file_sliding_fields_yield_to_a_typed_truncated_protocol(tmp_path, capsys):
    """docs/cli.md's override: `--task yarn-paper/govreport --protocol truncated` runs truncated (the
    file's stride and window_bos dropped); a --stride typed with it is still refused."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 1, "the lemma holds for every natural number by induction", 60)
    base = ["--model", "random:tiny", "--task", "yarn-paper/govreport", "--protocol", "truncated", "--dataset",
            f"local:{corpus}", "--lengths", "256", "--min-tokens", "0", "--docs", "1", "--dry-run",
            "--out", str(tmp_path / "out")]
    assert cli.main(base) == cli.EXIT_OK
    assert "|truncated" in capsys.readouterr().out
    assert cli.main(base + ["--stride", "64"]) == cli.EXIT_USAGE
    assert "--stride only applies with --protocol sliding" in capsys.readouterr().err
