"""The result store: tables, aggregation on write, the manifest, old folders, and reliability (kill
and resume, damaged tables and manifests, disk full, concurrent writers)."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_eval_command, subprocess_env, write_corpus

from evalharness.perplexity.analysis import aggregate_perplexity
from evalharness.results import SCHEMAS, Manifest, ResultStore

# ---- Result tables: the append-only store and the manifest (aggregation: test_perplexity.py).


def doc_row(doc_id, length, tokens, nll_sum, window_nll_sum=None, n_windows=3, method="yarn", factor=2.0,
            window_bos="every"):
    window_nll_sum = n_windows * nll_sum / tokens if window_nll_sum is None else window_nll_sum
    return dict(model="m", method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", window_bos=window_bos, context_length=length, stride=16,
                scored_tokens=tokens, nll_sum=nll_sum, n_windows=n_windows, window_nll_sum=window_nll_sum,
                ppl=math.exp(nll_sum / tokens), ppl_paper=math.exp(window_nll_sum / n_windows))


OLD_DOCS_CSV = """model,method,factor,original_ctx,dataset,doc_id,doc_tokens,protocol,context_length,stride,\
scored_tokens,nll_sum,n_windows,ppl,ppl_window_mean
m,base,1,64,d,a,1000,truncated,128,0,127,254.0,1,7.389056099,7.389056099
m,base,1,64,d,b,1000,sliding,128,32,1000,1500.0,3,4.48168907,4.0
""".replace("\\\n", "")


def test_aggregate_is_token_weighted_and_the_authors_mean_over_all_windows():
    docs = pd.DataFrame([doc_row("a", 128, 100, 200.0, window_nll_sum=6.0, n_windows=3),
                         doc_row("b", 128, 300, 300.0, window_nll_sum=1.0, n_windows=1)])
    (row,) = aggregate_perplexity(docs).to_dict("records")
    assert row["n_docs"] == 2 and row["scored_tokens"] == 400 and row["n_windows"] == 4
    assert row["ppl"] == pytest.approx(math.exp(500 / 400))  # not the mean of exp(2) and exp(1)
    # the authors: exp(mean of the 4 window losses) = exp((6 + 1) / 4), not a mean over documents
    assert row["ppl_paper"] == pytest.approx(math.exp(7 / 4))
    assert row["ppl_paper"] != pytest.approx((math.exp(2.0) + math.exp(1.0)) / 2)
    assert row["ppl_ci_low"] <= row["ppl"] <= row["ppl_ci_high"]
    assert list(aggregate_perplexity(docs).columns) == SCHEMAS["perplexity"]


def test_window_bos_is_part_of_the_cell(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("a", 128, 100, 200.0, window_bos="first")])
    assert store.cell_key("perplexity_docs", doc_row("a", 128, 1, 1.0, window_bos="every")) not in store.done(
        "perplexity_docs")
    store.append("perplexity_docs", [doc_row("a", 128, 100, 150.0, window_bos="every")])
    table = aggregate_perplexity(store.read("perplexity_docs"))
    assert sorted(table["window_bos"]) == ["every", "first"] and (table["n_docs"] == 1).all()


def test_old_result_folders_stay_readable_and_resumable(tmp_path):
    """Folders written before `window_bos`/`ppl_paper`: a missing window_bos is `first`, the old
    per-document window mean is today's per-document ppl_paper, and their cells still count as done."""
    (tmp_path / "perplexity_docs.csv").write_text(OLD_DOCS_CSV)
    (tmp_path / "perplexity.csv").write_text("model,method,factor,original_ctx,dataset,protocol,context_length,"
                                             "stride,n_docs,scored_tokens,ppl,ppl_window_mean,ppl_ci_low,"
                                             "ppl_ci_high\nm,base,1,64,d,truncated,128,0,1,127,7.39,7.39,7.39,7.39\n")
    store = ResultStore(tmp_path)
    docs = store.read("perplexity_docs")
    assert list(docs["window_bos"]) == ["first", "first"] and "ppl_window_mean" not in docs
    assert docs["ppl_paper"].tolist() == pytest.approx([7.389056099, 4.0])
    assert docs["window_nll_sum"].tolist() == pytest.approx([2.0, 3 * math.log(4.0)])
    old_cell = doc_row("a", 128, 1, 1.0, window_bos="first") | dict(model="m", method="base", factor=1,
                                                                     protocol="truncated", stride=0)
    assert store.cell_key("perplexity_docs", old_cell) in store.done("perplexity_docs")
    assert "ppl_paper" not in store.read("perplexity") and "window_bos" in store.read("perplexity")
    aggregated = aggregate_perplexity(docs).set_index("protocol")
    assert aggregated.loc["sliding", "ppl_paper"] == pytest.approx(4.0)
    assert aggregated.loc["truncated", "ppl_paper"] == pytest.approx(aggregated.loc["truncated", "ppl"])
    store.append("perplexity_docs", [doc_row("c", 128, 100, 200.0)])  # rewriting upgrades the file
    assert list(store.read("perplexity_docs").columns) == SCHEMAS["perplexity_docs"]


def test_store_appends_replaces_cells_and_round_trips(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("a", 128, 100, 200.0), doc_row("a", 256, 200, 380.0)])
    store.append("perplexity_docs", [doc_row("b", 128, 100, 150.0)])
    assert len(store.read("perplexity_docs")) == 3
    done = store.done("perplexity_docs")
    assert store.cell_key("perplexity_docs", doc_row("a", 256, 1, 1.0)) in done
    assert store.cell_key("perplexity_docs", doc_row("a", 512, 1, 1.0)) not in done
    assert store.cell_key("perplexity_docs", doc_row("a", 256, 1, 1.0, factor=4.0)) not in done
    store.append("perplexity_docs", [doc_row("a", 128, 100, 210.0)])  # the same cell again replaces it
    frame = store.read("perplexity_docs")
    assert len(frame) == 3
    assert frame.loc[(frame.doc_id == "a") & (frame.context_length == 128), "nll_sum"].item() == 210.0
    assert list(frame.columns) == SCHEMAS["perplexity_docs"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_numeric_doc_ids_stay_strings(tmp_path):
    store = ResultStore(tmp_path)
    store.append("perplexity_docs", [doc_row("007", 128, 100, 200.0)])
    assert store.cell_key("perplexity_docs", doc_row("007", 128, 1, 1.0)) in store.done("perplexity_docs")


def test_manifest_records_cells_and_survives_reload(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.start(["run_eval.py"], {"seed": 0}, {"note": "x"})
    manifest.cell("c1", "done")
    manifest.cell("c2", "failed", error="OutOfMemoryError: boom")
    manifest.finish()
    again = Manifest(tmp_path)
    assert set(again.failed_cells()) == {"c2"}
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["runs"][0]["environment"]["torch"]
    assert data["runs"][0]["end"] is not None


def test_a_table_or_manifest_that_cannot_be_read_is_one_sentence(tmp_path):
    from evalharness.results import ResultFolderError, read_manifest

    (tmp_path / "perplexity.csv").mkdir()  # read_bytes raises IsADirectoryError, as an unreadable file would
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ResultFolderError, match=r"perplexity\.csv cannot be read \(Is a directory\); fix its "):
        ResultStore(tmp_path).read("perplexity")
    with pytest.raises(ResultFolderError, match=r"manifest\.json cannot be read \(Is a directory\); fix its "):
        read_manifest(tmp_path / "manifest.json")


# ----
# Faults in real subprocess runs: SIGKILL at a random moment, SIGTERM; resume equals an
# uninterrupted run.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 6,
                        "a proof of the lemma follows by induction on the length of the list", 400, seed=100)


def command(corpus, out):
    return run_eval_command("--model", "random:tiny", "--method", "base,pi,yarn,dynamic-ntk,dynamic-yarn",
                            "--factor", "2,4", "--dataset", f"local:{corpus}", "--lengths", "128:1024:128",
                            "--out", str(out), "--no-progress")


def run_to_end(corpus, out, tmp_path):
    return subprocess.run(command(corpus, out), cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True,
                          text=True)


def start(corpus, out, tmp_path):
    return subprocess.Popen(command(corpus, out), cwd=ROOT, env=subprocess_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rows(out, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "perplexity_docs.csv").exists():
            return
        time.sleep(0.02)


def tables(out):
    key = ["method", "factor", "doc_id", "context_length"]
    docs = pd.read_csv(out / "perplexity_docs.csv").sort_values(key).reset_index(drop=True)
    agg = pd.read_csv(out / "perplexity.csv").sort_values(["method", "factor", "context_length"]).reset_index(drop=True)
    return docs, agg


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    out = tmp / "out"
    proc = run_to_end(corpus, out, tmp)
    assert proc.returncode == 0, proc.stderr
    return tables(out)


def assert_same(a, b):
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


def small_argv(corpus, out, methods="base,yarn"):
    return ["--model", "random:tiny", "--method", methods, "--factor", "2", "--dataset", f"local:{corpus}",
            "--lengths", "64:192:64", "--out", str(out), "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def small_reference(corpus, tmp_path_factory):
    """A finished small run (in process): the folder every damage test copies and compares with."""
    from evalharness import cli

    tmp = tmp_path_factory.mktemp("small")
    with pytest.MonkeyPatch.context() as env:  # a module-scoped fixture cannot use `monkeypatch`
        env.setenv("EVALHARNESS_CACHE", str(tmp / "cache"))
        assert cli.main(small_argv(corpus, tmp / "out")) == cli.EXIT_OK
    return tmp / "out"


def copy_run(reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    return out


def csv_tables(out):
    return tables(out)


def damaged_copies(out, name):
    return sorted(out.glob(f"{name}.damaged-*"))


TABLE_DAMAGE = [
    ("last row cut off", lambda text: text[:-15], "its last row is incomplete"),
    ("cut inside the header", lambda text: text[:20], "its header is incomplete"),
    ("empty file", lambda text: "", "it is empty"),
]


MANIFEST_DAMAGE = [
    ("truncated", lambda data: data[: len(data) // 2]),
    ("empty", lambda data: b""),
    ("not UTF-8", lambda data: b"\xff\xfe" + data),
    ("a JSON list", lambda data: b"[1, 2]"),
]


UNREPAIRABLE = [
    ("broken row before the end", lambda text: text.replace("\n", "\nx,y\n", 1), "row 2 has 2 fields"),
    ("not UTF-8", lambda text: "\udcff" + text, "is not UTF-8 text"),
    ("not a table", lambda text: "foo,bar\n1,2\n", "has no model, method, factor, original_ctx column"),
]


def result_files(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}


class DiskFullAfter:
    """Stands in for the `os` module inside evalharness.results: the temp file of write number
    `n` (0-based) gets half its text, then `OSError: No space left on device`."""

    def __init__(self, n, out):
        self.n, self.out, self.target, self.snapshot = n, out, None, None

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        handle = os.fdopen(fd, *args, **kwargs)
        self.n -= 1
        return handle if self.n >= 0 else HalfWriter(handle, self)


class HalfWriter:
    def __init__(self, handle, fault):
        self.handle, self.fault = handle, fault

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, text):
        import errno

        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        out = self.fault.out
        (temp,) = [p for p in out.glob(".*.tmp")]
        self.fault.target = out / temp.name[1:].rsplit(".", 3)[0]
        self.fault.snapshot = result_files(out)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


WRITER = """
import sys, time
from pathlib import Path
from evalharness.results import Manifest, ResultStore
out, name, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store, manifest = ResultStore(out), Manifest(out)
while not go.exists():
    time.sleep(0.005)
for i in range(count):
    store.append("perplexity_docs", [dict(model="m", method=name, factor=1.0, original_ctx=64, dataset="d",
        doc_id=str(i), doc_tokens=100, protocol="truncated", context_length=64, stride=0, scored_tokens=63,
        nll_sum=1.0 * i, n_windows=1, ppl=1.0, ppl_window_mean=1.0)])
    manifest.cell(f"{name}|{i}", "done")
"""


HOLDER = """
import json, os, sys, time
from pathlib import Path
from evalharness.results import folder_lock
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
run = {"command": ["run_eval.py", "--out", "X"], "pid": os.getpid(), "end": None}
(out / "manifest.json").write_text(json.dumps({"runs": [run], "cells": {}}))
with folder_lock(out):
    print("held", flush=True)
    time.sleep(2.0)
"""


def two_task_argv(corpus, out, methods):
    return ["--model", "random:tiny", "--tasks", "perplexity,passkey", "--method", methods, "--factor", "2,4",
            "--dataset", f"local:{corpus}", "--docs", "2", "--lengths", "320,448", "--depths", "2",
            "--out", str(out), "--no-progress", "--no-plots"]


def sorted_table(out, name, key):
    frame = pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""],
                        dtype={"continuation": str})
    return frame.sort_values(key).reset_index(drop=True)


@pytest.mark.machine
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment_then_resume(corpus, tmp_path, uninterrupted, seed):
    out = tmp_path / "out"
    proc = start(corpus, out, tmp_path)
    wait_for_rows(out, proc)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "perplexity_docs.csv").exists():
        pd.read_csv(out / "perplexity_docs.csv")  # never torn: always parses
    resumed = run_to_end(corpus, out, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(tables(out), uninterrupted)
    assert not list(out.glob(".*.tmp"))  # temp files of the killed writer were cleaned up


@pytest.mark.machine
def test_sigterm_finishes_the_row_and_exits_cleanly(corpus, tmp_path, uninterrupted):
    out = tmp_path / "out"
    proc = start(corpus, out, tmp_path)
    wait_for_rows(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 130, stderr.decode()
    assert b"interrupted" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"
    partial = pd.read_csv(out / "perplexity_docs.csv")
    assert 0 < len(partial)
    resumed = run_to_end(corpus, out, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(tables(out), uninterrupted)


@pytest.mark.parametrize("name, damage, message", TABLE_DAMAGE, ids=[c[0] for c in TABLE_DAMAGE])
def test_damaged_table_is_repaired_on_resume(corpus, tmp_path, small_reference, isolated_cache, capsys,
                                             name, damage, message):
    from evalharness import cli

    out = copy_run(small_reference, tmp_path)
    path = out / "perplexity_docs.csv"
    damaged = damage(path.read_text()).encode()
    path.write_bytes(damaged)
    assert cli.main(small_argv(corpus, out)) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert f"warning: {path}: {message}" in err and "will be recomputed" in err, err
    assert "Traceback" not in err
    assert_same(csv_tables(out), csv_tables(small_reference))  # the missing rows were recomputed
    (kept,) = damaged_copies(out, "perplexity_docs.csv")
    assert kept.read_bytes() == damaged  # nothing written is deleted


@pytest.mark.parametrize("name, damage", MANIFEST_DAMAGE, ids=[c[0] for c in MANIFEST_DAMAGE])
def test_damaged_manifest_is_rebuilt_from_the_tables(corpus, tmp_path, small_reference, isolated_cache, capsys,
                                                     name, damage):
    from evalharness import cli

    out = copy_run(small_reference, tmp_path)
    damaged = damage((out / "manifest.json").read_bytes())
    (out / "manifest.json").write_bytes(damaged)
    tables_before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    assert cli.main(small_argv(corpus, out)) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "manifest.json was damaged" in err and "rebuilt it from the tables" in err, err
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == tables_before  # nothing recomputed
    (kept,) = damaged_copies(out, "manifest.json")
    assert kept.read_bytes() == damaged
    manifest = json.loads((out / "manifest.json").read_text())
    rows = len(pd.read_csv(out / "perplexity_docs.csv"))
    assert manifest["rebuilt"]["tables"]["perplexity_docs"] == {"rows": rows, "cells": rows}
    assert manifest["rebuilt"]["damaged_copy"] == kept.name
    assert manifest["runs"][-1]["status"] == "finished"  # this run is recorded after the rebuild
    # the planned cells the tables hold are listed again, marked as recovered from the tables
    original = json.loads((small_reference / "manifest.json").read_text())["cells"]
    assert set(manifest["cells"]) == set(original)
    assert all(cell == {"status": "done", "from_tables": True, "time": cell["time"]}
               for cell in manifest["cells"].values())


@pytest.mark.parametrize("name, damage, message", UNREPAIRABLE, ids=[c[0] for c in UNREPAIRABLE])
def test_unrepairable_table_is_one_sentence_and_nothing_is_touched(corpus, tmp_path, small_reference,
                                                                   isolated_cache, capsys, name, damage,
                                                                   message):
    from evalharness import cli

    out = copy_run(small_reference, tmp_path)
    path = out / "perplexity_docs.csv"
    path.write_bytes(damage(path.read_text()).encode("utf-8", errors="surrogateescape"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(small_argv(corpus, out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}") and message in err, err
    assert len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_unterminated_quote_at_the_end_is_a_cut_off_row(tmp_path):
    from evalharness.results import SCHEMAS, ResultStore, write_table

    rows = [{**{column: 1 for column in SCHEMAS["passkey"]}, "model": "m", "method": "base", "context_length": 256,
             "correct": True, "continuation": f"{key}\nand more"} for key in (12345, 67890)]
    write_table(tmp_path / "passkey.csv", pd.DataFrame(rows, columns=SCHEMAS["passkey"]))
    text = (tmp_path / "passkey.csv").read_text()
    cut = text[: text.rindex("\n", 0, len(text) - 1) + 1]  # ends with a newline, inside the last quoted field
    assert cut.endswith('"67890\n')
    (tmp_path / "passkey.csv").write_text(cut)
    frame = ResultStore(tmp_path).read("passkey")
    assert len(frame) == 1 and frame.loc[0, "continuation"] == "12345\nand more"


@pytest.mark.parametrize("write_number", [0, 1, 2, 5])
def test_disk_full_while_writing_keeps_what_was_written(corpus, tmp_path, small_reference, isolated_cache,
                                                        capsys, monkeypatch, write_number):
    from evalharness import cli, results

    out = tmp_path / "out"
    fault = DiskFullAfter(write_number, out)
    monkeypatch.setattr(results, "os", fault)
    assert cli.main(small_argv(corpus, out)) == cli.EXIT_WRITE_FAILED
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: could not write {fault.target} (No space left on device); its previous version "
                   "and every row written before are intact — free the space or fix the folder and rerun the "
                   "same command to resume."), err
    assert result_files(out) == fault.snapshot  # the file being written and all before it are untouched
    assert not list(out.glob(".*.tmp"))
    assert cli.main(small_argv(corpus, out)) == cli.EXIT_OK  # the same command resumes
    assert_same(csv_tables(out), csv_tables(small_reference))


def test_concurrent_writers_lose_no_row_and_no_cell(tmp_path):
    out, go, count = tmp_path / "out", tmp_path / "go", 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), name, str(count), str(go)], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.PIPE)
             for name in ("pi", "ntk", "yarn")]
    time.sleep(3)  # both have imported pandas and wait at the start line
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=900)  # generous: the machine may be shared
        assert proc.returncode == 0, err.decode()
    frame = pd.read_csv(out / "perplexity_docs.csv")
    expected = sorted((m, i) for m in ("pi", "ntk", "yarn") for i in range(count))
    assert sorted(zip(frame.method, frame.doc_id)) == expected
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    assert set(cells) == {f"{m}|{i}" for m in ("pi", "ntk", "yarn") for i in range(count)}


def test_a_waiting_writer_names_the_holder(tmp_path, capsys, monkeypatch):
    from evalharness import results

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == b"held"
    monkeypatch.setattr(results, "LOCK_NOTICE_AFTER_S", 0.2)
    start = time.monotonic()
    row = dict(model="m", method="base", factor=1.0, original_ctx=64, task="t", metric="acc", value=0.5)
    results.ResultStore(out).append("leaderboard", [row])
    waited = time.monotonic() - start
    holder.wait(timeout=30)
    err = capsys.readouterr().err
    assert f"waiting for pid {holder.pid} (run_eval.py --out X) to finish writing into {out}" in err, err
    assert waited > 0.5  # it really waited for the holder instead of writing at once
    assert len(pd.read_csv(out / "leaderboard.csv")) == 1


def test_two_runs_into_one_folder_equal_the_union_of_separate_runs(corpus, tmp_path, monkeypatch):
    """The issue's reproduction: different --method sets into one --out at the same time, perplexity and
    passkey; every row of both runs ends up in the tables."""
    from evalharness import cli

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    method_sets = ("base,yarn", "pi,ntk")
    for i, methods in enumerate(method_sets):  # the separate runs, in process
        assert cli.main(two_task_argv(corpus, tmp_path / f"alone{i}", methods)) == cli.EXIT_OK
    shared = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_eval.py")] + two_task_argv(corpus, shared, m),
                              cwd=ROOT, env=subprocess_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for m in method_sets]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    keys = {"perplexity_docs": ["method", "factor", "doc_id", "context_length"],
            "perplexity": ["method", "factor", "context_length"],
            "passkey": ["method", "factor", "context_length", "depth", "trial"]}
    for name, key in keys.items():
        alone = [sorted_table(tmp_path / f"alone{i}", name, key) for i in range(2)]
        union = pd.concat(alone, ignore_index=True).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(sorted_table(shared, name, key), union)
    manifest = json.loads((shared / "manifest.json").read_text())
    assert [run["status"] for run in manifest["runs"]] == ["finished", "finished"]
    alone_cells = set()
    for i in range(2):
        alone_cells |= set(json.loads((tmp_path / f"alone{i}" / "manifest.json").read_text())["cells"])
    assert set(manifest["cells"]) == alone_cells


@pytest.mark.parametrize("folder, table, column, value, message", [
    ("smollm2-135m-govreport", "perplexity", "ppl", -5.0, "has ppl = -5.0 where this harness writes a number ≥ 1"),
    ("smollm2-135m-govreport", "perplexity", "ppl", "abc", "has ppl = 'abc' where this harness writes a number ≥ 1"),
    ("smollm2-135m-ruler", "ruler", "score", 7.0, "has score = 7.0 where this harness writes a number ≥ 0 and ≤ 1"),
    ("smollm2-135m-passkey", "passkey", "correct", "maybe", "has correct = 'maybe' where this harness writes True or"),
    ("smollm2-135m-passkey", "passkey", "context_length", -4096, "has context_length = -4096 where"),
])
def test_a_table_value_no_run_writes_is_refused_before_plot_writes(tmp_path, capsys, folder, table, column, value,
                                                                   message):
    """A number outside what the harness writes (a perplexity below 1, a score above 1, text in a number
    column) is one sentence naming the file, line, column and value, from `plot` (before any figure
    is rewritten) and `effective-context` alike; never a made-up figure or effective context."""
    import shutil

    from evalharness import cli

    run = tmp_path / folder
    shutil.copytree(Path(__file__).resolve().parent.parent / "results" / folder, run)
    frame = pd.read_csv(run / f"{table}.csv", keep_default_na=False, dtype=str)
    frame.loc[1, column] = str(value)
    frame.to_csv(run / f"{table}.csv", index=False)
    before = {p: p.read_bytes() for p in (run / "figures").iterdir()}
    for argv in (["plot", str(run)], ["effective-context", str(run)]):
        assert cli.main(argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert f"{table}.csv line 3 {message}" in err and len(err.splitlines()) == 1, err
    assert {p: p.read_bytes() for p in (run / "figures").iterdir()} == before
