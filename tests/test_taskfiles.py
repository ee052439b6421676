"""Task files (`tasks/`, `evalharness.taskfiles`): resolution by name and path, the override rule
(a flag beats the file's field, the field beats the default), the paper's five experiments as the
paper and the authors' scripts define them and as `--dry-run` plans them, `compare` reading the
same files, bad names and fields (one sentence, exit 2), and the wheel that ships the folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evalharness import cli, taskfiles
from evalharness.cli.eval import add_eval_arguments
from evalharness.leaderboard.mirrors import TASKS_DIR
from evalharness.leaderboard.protocol import PAPER_TASKS
from evalharness.options import parse_lengths
from evalharness.perplexity import paper as perplexity_paper

PAPER_FILES = ("yarn-paper/proofpile", "yarn-paper/govreport", "yarn-paper/passkey", "yarn-paper/leaderboard",
               "yarn-paper/ruler")


def parsed(*argv: str):
    return cli.parse_args(["--model", "random:tiny", "--method", "native", *argv])


def test_the_task_folder_holds_the_papers_experiments_and_not_the_lm_eval_mirrors():
    names = taskfiles.task_names()
    assert set(PAPER_FILES) <= set(names)
    assert not [n for n in names if n.startswith("lm-eval")]  # lm-eval YAMLs are no harness task files
    assert TASKS_DIR == taskfiles.tasks_root() / "lm-eval" and (TASKS_DIR / "arc_challenge_local").is_dir()
    for name in PAPER_FILES:
        task = taskfiles.load(name)
        assert task.description and task.source, name  # every shipped file says what it is and whence


def test_the_paper_files_hold_the_papers_settings():
    """Each file against the paper's own numbers (PAPER.md: §4.3 and the authors' eval.sh), written
    out here by hand."""
    proofpile = parsed("--task", "yarn-paper/proofpile")
    assert (proofpile.tasks, proofpile.protocol, proofpile.docs, proofpile.min_tokens) == (
        "perplexity", "truncated", 10, 128 * 1024)
    assert parse_lengths(proofpile.lengths) == [2048 * i for i in range(1, 65)]  # 2k…128k step 2k
    assert proofpile.dataset == "hf:emozilla/proofpile-test-tokenized"  # the authors' Llama-2 token ids
    gov = parsed("--task", "yarn-paper/govreport")
    assert (gov.tasks, gov.protocol, parse_lengths(gov.lengths), gov.stride, gov.window_bos, gov.docs,
            gov.min_tokens) == ("perplexity", "sliding", [32768], 256, "every", 50, 16384)
    passkey = parsed("--task", "yarn-paper/passkey")
    assert parse_lengths(passkey.lengths) == [8192 * i for i in range(1, 17)]  # 8k…128k step 8k
    assert passkey.depths * passkey.trials == 10  # 10 prompts per length
    board = parsed("--task", "yarn-paper/leaderboard")
    assert board.tasks == "leaderboard" and board.leaderboard_tasks.split(",") == list(PAPER_TASKS)
    assert PAPER_TASKS == {"arc_challenge": (25, "acc_norm"), "hellaswag": (10, "acc_norm"),
                           "mmlu": (5, "acc_macro"), "truthfulqa_mc2": (0, "acc")}
    ruler = parsed("--task", "yarn-paper/ruler")
    assert (ruler.tasks, ruler.ruler_tasks, ruler.ruler_samples) == ("ruler", "ruler", 500)
    assert parse_lengths(ruler.lengths) == [4096 * 2 ** i for i in range(6)]  # RULER's 4k…128k


def test_the_mirrors_run_the_shots_of_the_leaderboard_task_file():
    """The offline lm-eval mirrors state their shot counts in lm-eval's own YAML key; they agree
    with the task file the harness reads."""
    shots = {}
    for path in TASKS_DIR.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8").replace("!function", "")
        config = yaml.safe_load(text) or {}
        if "num_fewshot" in config:
            shots[path.parent.name] = config["num_fewshot"]
    assert shots["arc_challenge_local"] == PAPER_TASKS["arc_challenge"][0]
    assert shots["hellaswag_local"] == PAPER_TASKS["hellaswag"][0]
    assert shots["mmlu_local"] == PAPER_TASKS["mmlu"][0]


def test_a_flag_beats_the_file_and_the_file_beats_the_default(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("description: mine\ntasks: perplexity\nprotocol: sliding\nlengths: [4k, 8k]\nstride: 512\n"
                   "seed: 5\nlimit: {arc_challenge: 3}\nno_plots: true\n")
    from_file = parsed("--task", str(own))
    defaults = parsed()
    assert (from_file.protocol, from_file.lengths, from_file.stride, from_file.seed) == ("sliding", "4k,8k", 512, 5)
    assert from_file.limit == {"arc_challenge": 3} and from_file.no_plots is True
    assert getattr(from_file, "seed_given", False) is True  # the file gave the seed (lm-eval's seeds: all four)
    assert (from_file.docs, from_file.batch_size, from_file.dataset) == (defaults.docs, defaults.batch_size,
                                                                         defaults.dataset)
    # flags win, also when they restate an option's default (truncated, seed 0 are the defaults)
    flags = parsed("--task", str(own), "--protocol", "truncated", "--seed", "0", "--lengths", "2k")
    assert (flags.protocol, flags.seed, flags.lengths, flags.stride) == ("truncated", 0, "2k", 512)
    assert (defaults.protocol, defaults.seed) == ("truncated", 0)


def test_given_options_sees_only_what_argv_gives_and_leaves_args_alone():
    parser = taskfiles.options_parser(add_eval_arguments)
    assert taskfiles.given_options(parser, ["--protocol", "truncated", "--stride", "4k"]) == {
        "protocol": "truncated", "stride": 4096}
    assert taskfiles.given_options(parser, []) == {}
    args = parsed()
    before = dict(vars(args))
    merged = taskfiles.apply_task_file(parsed("--task", "yarn-paper/govreport"), {}, parser)
    assert vars(args) == before and merged.stride == 256


def test_a_path_to_a_yaml_works_like_a_name(tmp_path):
    copy = tmp_path / "gov.yaml"
    shutil.copy(taskfiles.tasks_root() / "yarn-paper" / "govreport.yaml", copy)
    by_path, by_name = vars(parsed("--task", str(copy))), vars(parsed("--task", "yarn-paper/govreport"))
    assert by_path.pop("task") == str(copy) and by_name.pop("task") == "yarn-paper/govreport"
    assert by_path == by_name


@pytest.mark.parametrize("content, named", [
    (None, "'nope'"),
    ("strid: 256\n", "'strid' (did you mean stride?)"),
    ("protocol: slidin\n", "field protocol: 'slidin' is not valid"),
    ("stride: abc\nprotocol: sliding\n", "field stride: 'abc' is not valid"),
    ("docs: [1, 2\n", "cannot be read as YAML"),
    ("- lengths: 4k\n", "holds list, not a mapping"),
    ("paper: 3\n", "field paper must be a mapping"),
    # values the command line checks after parsing are checked, and named, as the file's fields too
    ("lengths: {a: 1}\n", "field lengths: {'a': 1} is not valid (--lengths: 'a=1' is not a token count"),
    ("lengths: 256,128\n", "field lengths: '256,128' is not valid (lengths '256,128' must be strictly increasing"),
    ("factor: .inf\n", "field factor: inf is not valid (factor 'inf' must be a finite number > 0"),
    ("docs: 1\ndocs: 2\n", "writes the field docs twice; keep one"),
])
def test_a_bad_task_name_or_field_is_one_sentence_and_exit_2(tmp_path, capsys, content, named):
    if content is None:
        task = "nope"
    else:
        task = str(tmp_path / "bad.yaml")
        Path(task).write_text(content)
    assert cli.main(["--model", "random:tiny", "--task", task, "--dry-run"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and named in err and len(err.splitlines()) == 1
    if content is None or content.startswith("strid:"):  # the valid ones are named
        assert ("yarn-paper/govreport" if content is None else "stride, window_bos") in err


def test_a_missing_task_file_path(tmp_path, capsys):
    missing = str(tmp_path / "none.yaml")
    assert cli.main(["--model", "random:tiny", "--task", missing, "--dry-run"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"task file {missing!r} does not exist" in err and "yarn-paper/proofpile" in err


@pytest.fixture
def long_document(tmp_path, tiny):
    """A local corpus of one document of > 128k tokens of random:tiny's tokenizer, and its token count."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = " ".join(["the sky is blue", "the grass is green", "here we go"] * 5000)
    (folder / "doc0.txt").write_text(text)
    return folder, len(tiny[1](text, add_special_tokens=False).input_ids)


def dry_run(capsys, task: str, *argv: str) -> str:
    assert cli.main(["--model", "random:tiny", "--method", "native", "--task", task, *argv, "--dry-run",
                     "--no-progress"]) == cli.EXIT_OK
    return capsys.readouterr().out


def test_dry_run_plans_the_perplexity_experiments(long_document, isolated_cache, capsys):
    folder, n = long_document
    assert n >= 131072
    out = dry_run(capsys, "yarn-paper/proofpile", "--dataset", f"local:{folder}", "--docs", "1")
    # truncated: one pass at the largest length 128k yields every shorter length (a static method)
    assert "perplexity: 1 cells, 0 done, 1 to do, 131,072 tokens" in out and "|truncated" in out
    out = dry_run(capsys, "yarn-paper/govreport", "--dataset", f"local:{folder}", "--docs", "1")
    # sliding, L = 32k, S = 256, BOS in every window: windows start every 256 document tokens until
    # one reaches the end; each holds BOS + up to L - 1 document tokens
    length, stride = 32768, 256
    starts = range(0, n - (length - 1) + stride, stride)
    tokens = sum(1 + min(length - 1, n - start) for start in starts)
    assert max(starts) + length - 1 >= n > max(starts) - stride + length - 1
    assert f"perplexity: 1 cells, 0 done, 1 to do, {tokens:,} tokens" in out and "|sliding|bos=every" in out


def test_dry_run_plans_passkey_and_ruler(isolated_cache, capsys):
    out = dry_run(capsys, "yarn-paper/passkey")
    lengths = [8192 * i for i in range(1, 17)]
    assert f"passkey: 160 cells, 0 done, 160 to do, {10 * sum(lengths):,} tokens" in out
    assert "passkey|random:tiny|native|131072|paper|depth=1|trial=0" in out
    out = dry_run(capsys, "yarn-paper/ruler")
    assert "ruler: 36 cells" in out  # six tasks × six lengths
    assert f"{500 * 131072}" in out and "ruler|random:tiny|native|ruler_cwe|131072" in out  # 500 samples a cell
    out = dry_run(capsys, "yarn-paper/ruler", "--lengths", "4k", "--ruler-samples", "3")  # flags win
    assert "ruler: 6 cells" in out and f"{3 * 4096}" in out


def test_compare_reads_the_authors_protocol_from_the_task_files(tmp_path, monkeypatch):
    row = pd.Series(dict(window_bos="every", stride=256, n_docs=50))
    selection = dict(sample=False, min_tokens=16384)
    assert perplexity_paper.perplexity_differences(row, "govreport", selection) == []
    edited = tmp_path / "tasks"
    shutil.copytree(taskfiles.tasks_root() / "yarn-paper", edited / "yarn-paper")
    text = (edited / "yarn-paper" / "govreport.yaml").read_text().replace("stride: 256", "stride: 512")
    (edited / "yarn-paper" / "govreport.yaml").write_text(text)
    monkeypatch.setattr(taskfiles, "tasks_root", lambda: edited)
    assert perplexity_paper.perplexity_differences(row, "govreport", selection) == ["stride 256 (paper 512)"]
    assert parsed("--task", "yarn-paper/govreport").stride == 512  # the run reads the same file


def test_the_wheel_ships_the_task_files_and_every_module(wheel_names):
    root = taskfiles.tasks_root()
    shipped = {f"evalharness/tasks/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {f"evalharness/tasks/{name}.yaml" for name in PAPER_FILES} <= shipped
    assert shipped - wheel_names == set()
    package = Path(cli.__file__).parent.parent
    modules = {f"evalharness/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules - wheel_names == set()  # pyproject lists every package


def test_the_installed_wheel_runs_a_task_by_name(wheel_path, tmp_path):
    """pip install of the wheel (no deps, into a folder of its own) and a short passkey run of the
    shipped task file by name, from a folder outside the checkout."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel_path)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target), EVALHARNESS_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    script = ("import sys, evalharness.cli, evalharness.taskfiles as t; print(t.tasks_root()); "
              "sys.exit(evalharness.cli.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "--model", "random:tiny", "--method", "native", "--task",
                           "yarn-paper/passkey", "--lengths", "512", "--depths", "2", "--no-plots",
                           "--no-progress", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(target / "evalharness" / "tasks")
    rows = pd.read_csv(tmp_path / "run" / "passkey.csv")
    assert len(rows) == 2 and set(rows["context_length"]) == {512}  # 2 depths × 1 trial (the file's)
