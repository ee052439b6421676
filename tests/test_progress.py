"""Progress inside a cell (`progress.CellProgress`): plain throttled lines when stderr is not a
terminal, a bar under the overall one on a terminal, nothing with --no-progress; counts of tokens
prefilled (chunk by chunk, window by window), generated, and lm-eval requests; CSVs unchanged."""
import io
import re

import pytest
import torch
from conftest import write_corpus
from leaderboard_data import write_data

from evalharness import cli, progress
from evalharness.prefill import hidden_chunks
from evalharness.progress import CellProgress

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
LINE = re.compile(r"^  cell (\d+)/(\d+): ([\d,]+)(?: / ([\d,]+))? tokens (\w+)(?:, [\d,]+ tok/s)?(?:, (.*))?$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 2, WORDS, 120)  # ≈ 700 characters = byte tokens


def tiny_argv(out, *extra):
    return ["--model", "random:tiny", "--method", "base", "--out", str(out), "--no-plots", *extra]


def in_cell_lines(stderr: str) -> list[dict]:
    """The in-cell lines of a log: cell number, count, total, verb, detail."""
    rows = []
    for line in stderr.splitlines():
        match = LINE.match(line)
        if match:
            cell, _, count, total, verb, detail = match.groups()
            rows.append(dict(cell=int(cell), count=int(count.replace(",", "")), verb=verb, detail=detail,
                             total=int(total.replace(",", "")) if total else None))
    return rows


def by_stage(rows):
    stages = {}
    for row in rows:
        stages.setdefault((row["cell"], row["verb"]), []).append(row)
    return stages


def test_line_format_and_throttle_with_a_fake_clock():
    now = [0.0]
    stream = io.StringIO()
    bar = CellProgress("cell 3/12", "lines", interval=30, clock=lambda: now[0], stream=stream)
    bar.stage("prefilled", 65_536)
    for _ in range(10):  # 2,048 tokens every 10 s: a line at 30, 60 and 90 s only
        now[0] += 10
        bar.advance(2_048)
    assert stream.getvalue().splitlines() == [
        "  cell 3/12: 6,144 / 65,536 tokens prefilled, 205 tok/s",
        "  cell 3/12: 12,288 / 65,536 tokens prefilled, 205 tok/s",
        "  cell 3/12: 18,432 / 65,536 tokens prefilled, 205 tok/s"]
    off = CellProgress("cell 1/1", "off", interval=0, stream=stream)
    off.stage("prefilled", 10)
    off.advance(10)
    assert len(stream.getvalue().splitlines()) == 3  # off prints nothing


def test_a_chunked_prefill_reports_each_chunk(tiny):
    """The count has grown by exactly a chunk's tokens when the caller receives the chunk; a
    one-shot forward advances layer by layer (2 layers: half the window each)."""
    model, _, _ = tiny
    ids = torch.randint(0, 200, (1, 200))
    stream = io.StringIO()
    counting = CellProgress("cell 1/1", "lines", interval=0, stream=stream)
    counting.stage("prefilled", 200)
    seen = []
    with counting.layers(model), torch.inference_mode():
        for start, hidden in hidden_chunks(model, ids, 64):
            seen.append((start + hidden.shape[1], counting.count))
    assert seen == [(64, 64), (128, 128), (192, 192), (200, 200)]
    counts = [row["count"] for row in in_cell_lines(stream.getvalue())]
    assert counts == [32, 64, 96, 128, 160, 192, 196, 200]  # one line per layer of each chunk (interval 0)
    counting.stage("prefilled", 200)
    with counting.layers(model), torch.inference_mode():
        model.model(input_ids=ids, use_cache=False)
    assert counting.count == 200 and [row["count"] for row in in_cell_lines(stream.getvalue())][-2:] == [100, 200]
    with counting.layers(model), torch.inference_mode():
        pass
    assert all(not layer._forward_hooks for layer in progress.decoder_layers(model))  # hooks removed


def test_a_log_file_gets_in_cell_lines_with_growing_counts_and_no_escapes(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    common = ["--tasks", "perplexity,passkey", "--dataset", f"local:{corpus}", "--lengths", "300,512",
              "--depths", "1", "--prefill-chunk", "128"]
    assert cli.main(tiny_argv(tmp_path / "log", *common)) == cli.EXIT_OK
    stderr = capsys.readouterr().err
    assert "\x1b" not in stderr and "\r" not in stderr  # no cursor movement, no carriage return
    stages = by_stage(in_cell_lines(stderr))
    # cells 1-2: perplexity, one truncated pass at 512 (BOS + 511 tokens); 3-4: passkey at 300 and 512
    assert set(stages) == {(1, "prefilled"), (2, "prefilled"), (3, "prefilled"), (3, "generated"),
                           (4, "prefilled"), (4, "generated")}
    for (cell, verb), rows in stages.items():
        counts = [row["count"] for row in rows]
        assert counts == sorted(set(counts)), (cell, verb, counts)  # strictly increasing
        total = rows[0]["total"]
        assert all(row["total"] == total for row in rows)
        if verb == "prefilled":
            assert counts[-1] == total  # every token of the window reported
            # chunks of 128 through 2 layers: every chunk boundary is a reported count
            assert set(range(128, total, 128)) <= set(counts)
        else:
            assert total == 10 and 1 <= counts[-1] <= 10 and counts[0] == 1
    assert stages[1, "prefilled"][-1]["total"] == 512
    assert 290 <= stages[3, "prefilled"][-1]["total"] <= 300  # the passkey prompt's tokens
    # the runner's own line closes every cell, after the cell's lines
    lines = stderr.splitlines()
    ends = [i for i, line in enumerate(lines) if re.match(r"cell \d/4 done in", line)]
    assert len(ends) == 4 and all(LINE.match(line) is None for line in lines[ends[-1]:])

    # --no-progress: no line of any kind about cells; the tables are byte-identical
    assert cli.main(tiny_argv(tmp_path / "quiet", *common, "--no-progress")) == cli.EXIT_OK
    quiet = capsys.readouterr().err
    assert "cell " not in quiet and "tokens" not in quiet and "\r" not in quiet
    tables = sorted(p.name for p in (tmp_path / "log").glob("*.csv"))
    assert tables and tables == sorted(p.name for p in (tmp_path / "quiet").glob("*.csv"))
    for name in tables:
        assert (tmp_path / "log" / name).read_bytes() == (tmp_path / "quiet" / name).read_bytes(), name


def test_the_sliding_protocol_reports_every_window(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    argv = tiny_argv(tmp_path / "out", "--tasks", "perplexity", "--dataset", f"local:{corpus}", "--lengths", "128",
                     "--protocol", "sliding", "--stride", "64", "--docs", "1")
    assert cli.main(argv) == cli.EXIT_OK
    rows = in_cell_lines(capsys.readouterr().err)
    doc_tokens = len((corpus / "doc0.txt").read_text().encode())
    # the authors' windows: BOS + up to 127 document tokens, starting every 64 until one reaches the end
    windows, begin = [], 0
    while True:
        windows.append(1 + min(127, doc_tokens - begin))
        if begin + 127 >= doc_tokens:
            break
        begin += 64
    assert rows[-1]["count"] == rows[-1]["total"] == sum(windows)
    ends = [sum(windows[:k + 1]) for k in range(len(windows))]
    assert set(ends) <= {row["count"] for row in rows}  # a line as each window ends


def test_a_terminal_gets_a_bar_and_no_plain_lines(corpus, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    argv = tiny_argv(tmp_path / "out", "--tasks", "perplexity", "--dataset", f"local:{corpus}", "--lengths", "256",
                     "--docs", "1")
    assert cli.main(argv) == cli.EXIT_OK
    text = screen.getvalue()
    assert "cell 1/1 prefilled" in text and "cells (perplexity)" in text  # the cell's bar under the overall one
    assert not in_cell_lines(text) and "done in" not in text


def test_lm_eval_cells_count_tokens_and_requests(tmp_path_factory, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    data = write_data(tmp_path_factory.mktemp("lbdata"))
    argv = tiny_argv(tmp_path / "out", "--tasks", "leaderboard", "--leaderboard-tasks", "mmlu",
                     "--leaderboard-data", str(data), "--limit", "2")
    assert cli.main(argv) == cli.EXIT_OK
    stderr = capsys.readouterr().err
    rows = [row for row in in_cell_lines(stderr) if row["verb"] == "processed"]
    counts = [row["count"] for row in rows]
    assert counts and counts == sorted(counts) and counts[-1] > 0
    answered = [row["detail"] for row in rows if row["detail"]]
    total = int(answered[-1].split(" / ")[1].split()[0])
    assert answered[-1] == f"{total} / {total} requests" and total > 1
    assert len(set(answered)) == total  # one step per request
    assert "Running loglikelihood requests" not in stderr  # lm-eval's own request bar is off while ours counts
    assert "Generating test split" not in stderr  # datasets' bars are a terminal's only
