"""Faults in real subprocess runs: SIGKILL at a random moment, SIGTERM; resume equals an
uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    words = "a proof of the lemma follows by induction on the length of the list".split()
    for i in range(6):
        rng = random.Random(100 + i)
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)))
    return folder


def command(corpus, out):
    return [sys.executable, str(ROOT / "run_eval.py"), "--model", "random:tiny", "--method",
            "base,pi,yarn,dynamic-ntk,dynamic-yarn", "--factor", "2,4", "--dataset", f"local:{corpus}",
            "--lengths", "128:1024:128", "--out", str(out), "--no-progress"]


def environment(tmp_path):
    return dict(os.environ, EVALHARNESS_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def start(corpus, out, tmp_path):
    return subprocess.Popen(command(corpus, out), cwd=ROOT, env=environment(tmp_path),
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
    proc = subprocess.run(command(corpus, out), cwd=ROOT, env=environment(tmp), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return tables(out)


def assert_same(a, b):
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


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
    resumed = subprocess.run(command(corpus, out), cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(tables(out), uninterrupted)
    assert not list(out.glob(".*.tmp"))  # temp files of the killed writer were cleaned up


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
    resumed = subprocess.run(command(corpus, out), cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(tables(out), uninterrupted)
