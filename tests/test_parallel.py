"""Data-parallel sharding: 2 processes (torchrun, gloo on CPU) give the single-process tables."""
import subprocess
import sys

import pandas as pd
from conftest import ROOT, subprocess_env, write_corpus

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
