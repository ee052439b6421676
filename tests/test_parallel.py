"""Data-parallel sharding: 2 processes (torchrun, gloo on CPU) give the single-process tables."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, subprocess_env, write_corpus
from leaderboard_data import write_data

from evalharness.parallel import Shard


def test_shard_ownership_is_a_partition():
    shards = [Shard(rank, 3) for rank in range(3)]
    for cell in range(20):
        assert sum(s.owns(cell) for s in shards) == 1
    assert Shard().owns(7) and not Shard().active


def test_two_processes_equal_one(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 3, "we prove the theorem by induction and rewrite with the lemma",
                          200)
    env = subprocess_env(tmp_path)
    args = ["run_eval.py", "--model", "random:tiny", "--method", "base,pi,yarn,dynamic-yarn", "--factor", "2",
            "--dataset", f"local:{corpus}", "--lengths", "128:512:128", "--no-progress", "--no-plots"]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    double = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "2 processes" in double.stderr
    key = ["method", "doc_id", "context_length"]
    one = pd.read_csv(tmp_path / "one" / "perplexity_docs.csv").sort_values(key).reset_index(drop=True)
    two = pd.read_csv(tmp_path / "two" / "perplexity_docs.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(one, two, rtol=1e-6)
    agg_key = ["method", "context_length"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "one" / "perplexity.csv").sort_values(agg_key).reset_index(drop=True),
        pd.read_csv(tmp_path / "two" / "perplexity.csv").sort_values(agg_key).reset_index(drop=True), rtol=1e-6)
    assert not (tmp_path / "two" / "shards").exists()  # merged and cleaned up
    manifest = (tmp_path / "two" / "manifest.json").read_text()
    assert '"rank": 1' in manifest and '"world_size": 2' in manifest


# ----
# The plan and the cell runner: the task registry, the failure policy, --dry-run, and data-parallel
# sharding of every task (passkey and leaderboard under 2 gloo processes compute each cell once).


@pytest.fixture(scope="module")
def leaderboard_data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("lbdata"))


@pytest.mark.usefixtures("isolated_cache")
def test_passkey_and_leaderboard_cells_split_across_two_processes(leaderboard_data, tmp_path):
    env = subprocess_env(tmp_path)
    args = ["run_eval.py", "--model", "random:tiny", "--method", "base,yarn", "--factor", "2",
            "--tasks", "passkey,leaderboard", "--lengths", "300,400", "--depths", "2",
            "--leaderboard-tasks", "arc_challenge,mmlu", "--leaderboard-data", str(leaderboard_data),
            "--limit", "2", "--no-progress", "--no-plots"]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29533"]
    double = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "2 processes" in double.stderr

    cells_one = json.loads((tmp_path / "one" / "manifest.json").read_text())["cells"]
    cells_two = json.loads((tmp_path / "two" / "manifest.json").read_text())["cells"]
    n_passkey, n_leaderboard = 2 * 2 * 2, 2 * 2
    assert len(cells_one) == len(cells_two) == n_passkey + n_leaderboard
    assert set(cells_one) == set(cells_two)
    # plan order: passkey cells (length, spec, depth), then leaderboard cells (spec, task); cell i
    # belongs to rank i mod 2. Had both ranks computed a cell, the merge would show the last rank.
    order = [f"passkey|random:tiny|{spec}|{length}|paper|depth={depth}|trial=0"
             for length in (300, 400) for spec in ("base", "yarn:2") for depth in (0, 1)]
    order += [f"leaderboard|random:tiny|{spec}|{task}" for spec in ("base", "yarn:2")
              for task in ("arc_challenge_local", "mmlu_local")]
    ranks_seen = {name: cell["rank"] for name, cell in cells_two.items()}
    assert ranks_seen == {name: i % 2 for i, name in enumerate(order)}
    ranks = [cell["rank"] for cell in cells_two.values()]
    assert ranks.count(0) == ranks.count(1) == len(order) // 2
    lm_eval_files = sorted(p.name for p in (tmp_path / "two" / "lm_eval").glob("*.json"))
    assert lm_eval_files == sorted(p.name for p in (tmp_path / "one" / "lm_eval").glob("*.json"))

    for table, key in (("passkey", ["method", "factor", "context_length", "depth", "trial"]),
                       ("leaderboard", ["method", "factor", "task", "metric"])):
        one = pd.read_csv(tmp_path / "one" / f"{table}.csv").sort_values(key).reset_index(drop=True)
        two = pd.read_csv(tmp_path / "two" / f"{table}.csv").sort_values(key).reset_index(drop=True)
        assert len(one) > 0
        pd.testing.assert_frame_equal(one, two)
