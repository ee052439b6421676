"""The lm-eval bridge on random:tiny (native context 256, byte tokenizer) with small local data in
the original datasets' column layouts (leaderboard_data.py)."""
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import break_lm_eval_once, raise_bug
from leaderboard_data import MMLU_SIZES, hellaswag_rows, mmlu_rows, truthfulqa_rows, write_data, write_jsonl

from evalharness.leaderboard.analysis import (
    headline_metric,
    leaderboard_columns,
    leaderboard_deltas,
    leaderboard_means,
    without_subtasks,
)
from evalharness.leaderboard.extract import result_rows
from evalharness.leaderboard.lm import wrap_model
from evalharness.leaderboard.mirrors import (
    MIRRORS,
    TASKS_DIR,
    copy_tasks,
    lm_eval_tasks_dir,
    local_data_files,
    point_mirror,
    split_files,
)
from evalharness.leaderboard.passkey_data import passkey_documents
from evalharness.leaderboard.planning import TaskPlan, plan_tasks
from evalharness.leaderboard.protocol import PAPER_TASKS, LeaderboardError, default_max_length, lm_eval_seeds
from evalharness.leaderboard.run import run_leaderboard
from evalharness.methods import ScalingSpec
from evalharness.results import SCHEMAS, Manifest, ResultStore
from evalharness.scaling import apply_scaling


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny):
    root = write_data(tmp_path_factory.mktemp("lbdata"))
    docs = passkey_documents(tiny[1], [400], trials=2, seed=0)
    write_jsonl(root / "passkey" / "test.jsonl", docs)
    return root


def run(tiny, out, specs, tasks, **kw):
    model, tokenizer, _ = tiny
    store, manifest = ResultStore(out), Manifest(out)
    specs = [ScalingSpec.parse(s) for s in specs]
    failed = run_leaderboard(model, tokenizer, "random:tiny", specs, tasks, store, manifest, out,
                                show_progress=False, **kw)
    return failed, store, Manifest(out)


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------

def test_default_max_length():
    assert default_max_length(ScalingSpec("yarn", 4, 256)) == 1024
    assert default_max_length(ScalingSpec("pi", 2.5, 4096)) == 10240
    assert default_max_length(ScalingSpec("base", 1, 256)) == 256
    assert default_max_length(ScalingSpec("dynamic-yarn", 1, 256)) == 256


def test_plan_tasks(tmp_path):
    (tmp_path / "mmlu").mkdir()
    plans = {p.requested: p for p in plan_tasks(["arc_challenge", "mmlu", "passkey_local", "winogrande"], tmp_path)}
    # no DIR/arc_challenge: the hub task
    assert (plans["arc_challenge"].kind, plans["arc_challenge"].name) == ("hub", "arc_challenge")
    assert (plans["mmlu"].kind, plans["mmlu"].name, plans["mmlu"].metric) == ("mirror", "mmlu_local", "acc_macro")
    assert plans["mmlu"].num_fewshot == 5
    assert plans["passkey_local"].kind == "mirror" and plans["passkey_local"].metric is None
    assert plans["winogrande"].kind == "hub" and plans["winogrande"].num_fewshot is None
    assert {p.kind for p in plan_tasks(list(PAPER_TASKS))} == {"hub"}


def test_missing_local_split_is_one_sentence(tmp_path):
    write_jsonl(tmp_path / "hellaswag" / "train.jsonl", hellaswag_rows(2, "train"))
    with pytest.raises(LeaderboardError) as err:
        local_data_files(MIRRORS["hellaswag_local"], tmp_path)
    assert "'validation'" in str(err.value) and "\n" not in str(err.value)


def test_split_files_accepts_hub_shards(tmp_path):
    for name in ("test-00000-of-00002.parquet", "test-00001-of-00002.parquet", "testing.parquet", "train.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in split_files(tmp_path, "test")] == ["test-00000-of-00002.parquet",
                                                                   "test-00001-of-00002.parquet"]


def test_macro_mean_differs_from_weighted():
    results = {
        "results": {"mmlu_local": {"acc,none": 0.25}, "mmlu_local_a": {"acc,none": 1.0, "acc_stderr,none": 0.0},
                    "mmlu_local_b": {"acc,none": 0.0, "acc_stderr,none": 0.0}},
        "group_subtasks": {"mmlu_local": ["mmlu_local_a", "mmlu_local_b"]},
        "n-samples": {"mmlu_local_a": {"original": 1, "effective": 1}, "mmlu_local_b": {"original": 3, "effective": 3}},
        "n-shot": {"mmlu_local": 5, "mmlu_local_a": 5, "mmlu_local_b": 5},
    }
    plan = TaskPlan("mmlu", "mmlu_local", "mirror", 5, "acc_macro")
    rows = {(r["task"], r["metric"]): r for r in result_rows(results, {"model": "m"}, plan)}
    assert rows["mmlu_local", "acc_macro"]["value"] == 0.5
    assert rows["mmlu_local", "acc_weighted"]["value"] == 0.25
    assert rows["mmlu_local", "acc_macro"]["n_samples"] == 4
    assert ("mmlu_local", "acc") not in rows
    nested = dict(results, group_subtasks={"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_local_a", "mmlu_local_b"]})
    nested["results"] = {"mmlu": {"acc,none": 0.25}, "mmlu_stem": {"acc,none": 0.25}, **{
        k: v for k, v in results["results"].items() if k != "mmlu_local"}}
    plan = TaskPlan("mmlu", "mmlu", "hub", 5, "acc_macro")
    rows = {(r["task"], r["metric"]): r["value"] for r in result_rows(nested, {}, plan)}
    assert rows["mmlu", "acc_macro"] == 0.5 and rows["mmlu_stem", "acc_weighted"] == 0.25


def test_dynamic_methods_generate_without_kv_cache_across_a_scale_change(tiny, monkeypatch):
    """use_kv_cache=False (dynamic methods): the KV cache only while the scale cannot change
    (prompt + generation ≤ L = 256), none once the generation crosses L (passkey.cache_reusable)."""
    from evalharness.scaling import apply_scaling

    model, tokenizer, _ = tiny
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: seen.append(k["use_cache"]) or real(*a, **k))
    short = torch.tensor([tokenizer("The pass key is")["input_ids"]])
    long = torch.tensor([tokenizer("x" * 300)["input_ids"]])
    apply_scaling(model, "dynamic-yarn:2")
    try:
        for use_kv_cache, context in ((True, long), (False, short), (False, long)):
            lm = wrap_model(model, tokenizer, 512, 1, False, use_kv_cache=use_kv_cache)
            assert lm.max_length == 512 and lm.model is model
            out = lm._model_generate(context, context.shape[1] + 3, ["\n"], do_sample=False)
            assert out.shape[1] <= context.shape[1] + 3
    finally:
        apply_scaling(model, "base")
    assert seen == [True, True, False]


def test_passkey_documents_fill_to_length(tiny):
    tokenizer = tiny[1]
    docs = passkey_documents(tokenizer, [300, 600], trials=2, seed=3)
    assert [d["context_length"] for d in docs] == [300, 300, 600, 600]
    for doc in docs:
        assert doc["context_length"] - 8 <= doc["prompt_tokens"] <= doc["context_length"]  # word granularity
        assert len(doc["passkey"]) == 5 and f"The pass key is {doc['passkey']}. Remember it." in doc["prompt"]
        assert doc["prompt"].endswith("What is the pass key? The pass key is")
    assert docs == passkey_documents(tokenizer, [300, 600], trials=2, seed=3)


# ---------------------------------------------------------------------------------------------
# Through lm-eval
# ---------------------------------------------------------------------------------------------

def test_mirrors_end_to_end_and_resume(tiny, data_dir, tmp_path, monkeypatch):
    tasks = ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "passkey_local"]
    failed, store, manifest = run(tiny, tmp_path, ["yarn:4"], tasks, data_dir=data_dir, limit=1)
    assert failed == [], manifest.failed_cells()
    table = store.read("leaderboard")
    assert list(table.columns) == SCHEMAS["leaderboard"]
    rows = {(r["task"], r["metric"]): r for r in table.to_dict("records")}
    for task, metric, shots in [("arc_challenge_local", "acc_norm", 25), ("hellaswag_local", "acc_norm", 10),
                                ("mmlu_local", "acc_macro", 5), ("truthfulqa_mc2_local", "acc", 0),
                                ("passkey_local", "exact_match,first_integer", 0)]:
        row = rows[task, metric]
        assert 0.0 <= row["value"] <= 1.0 and row["num_fewshot"] == shots, (task, row)
        assert (row["method"], row["factor"], row["original_ctx"]) == ("yarn", 4.0, 256)
        assert (tmp_path / "lm_eval" / f"yarn_4_{task}.json").exists()
    assert rows["arc_challenge_local", "acc_norm"]["n_samples"] == 1
    assert rows["passkey_local", "exact_match,first_integer"]["n_samples"] == 1
    assert {t for t, _ in rows if t.startswith("mmlu_local_")} == {"mmlu_local_anatomy", "mmlu_local_astronomy"}
    saved = json.loads((tmp_path / "lm_eval" / "yarn_4_arc_challenge_local.json").read_text())
    assert saved["evalharness"]["max_length"] == 1024 and saved["n-shot"]["arc_challenge_local"] == 25
    assert saved["configs"]["arc_challenge_local"]["metadata"]["config_source"] == (
        "tasks/lm-eval/arc_challenge_local/arc_challenge_local.yaml")  # the shipped file, not its temporary copy
    test_file = str((data_dir / "arc_challenge" / "test.jsonl").resolve())
    assert saved["evalharness"]["data"]["data_files"]["test"] == [os.path.relpath(test_file)]  # no absolute path

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr("lm_eval.simple_evaluate", must_not_run)
    assert run(tiny, tmp_path, ["yarn:4"], tasks, data_dir=data_dir, limit=1)[0] == []


def _predicted(samples_path):
    """doc question → index of the choice with the highest log-likelihood (lm-eval's acc)."""
    out = {}
    for line in samples_path.read_text().splitlines():
        sample = json.loads(line)
        lls = [resp[0][0] for resp in sample["resps"]]
        out[sample["doc"]["question"]] = max(range(len(lls)), key=lls.__getitem__)
    return out


def test_mmlu_macro_mean_from_subject_rows(tiny, tmp_path):
    probe = write_data(tmp_path / "probe")
    run(tiny, tmp_path / "out1", ["base"], ["mmlu"], data_dir=probe, save_samples=True)
    predicted = _predicted(tmp_path / "out1" / "lm_eval" / "base_1_mmlu_local_samples.jsonl")
    # anatomy (1 question) answered right, astronomy (3 questions) all wrong: macro 0.5, weighted 0.25
    answers = {}
    for row in mmlu_rows(MMLU_SIZES, "test"):
        guess = predicted[row["question"]]
        answers.setdefault(row["subject"], []).append(guess if row["subject"] == "anatomy" else (guess + 1) % 4)
    data = write_data(tmp_path / "data", answers)
    failed, store, _ = run(tiny, tmp_path / "out2", ["base"], ["mmlu"], data_dir=data)
    assert failed == []
    rows = {(r["task"], r["metric"]): r for r in store.read("leaderboard").to_dict("records")}
    subjects = {t: r for (t, m), r in rows.items() if t.startswith("mmlu_local_") and m == "acc"}
    assert {t: r["value"] for t, r in subjects.items()} == {"mmlu_local_anatomy": 1.0, "mmlu_local_astronomy": 0.0}
    assert rows["mmlu_local", "acc_macro"]["value"] == pytest.approx(0.5)
    assert rows["mmlu_local", "acc_weighted"]["value"] == pytest.approx(0.25)  # lm-eval's own group number
    assert rows["mmlu_local", "acc_macro"]["n_samples"] == 4


def _lm_eval_style_loglik(model, tokenizer, context, continuation, max_length):
    """log p(continuation | context) with the context cut from the left to fit max_length."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_cont = len(tokenizer(continuation)["input_ids"])
    window = torch.tensor(whole[-(max_length + 1):])
    with torch.inference_mode():
        logits = model(window[None, :-1], use_cache=False).logits[0].float()
    logprobs = torch.log_softmax(logits[-n_cont:], dim=-1)
    return float(logprobs.gather(1, window[-n_cont:, None]).sum())


def test_lm_eval_evaluates_the_scaled_model_object(tiny, data_dir, tmp_path):
    model, tokenizer, _ = tiny
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        failed, store, _ = run(tiny, tmp_path, ["base", "yarn:4"], ["arc_challenge"], data_dir=data_dir, limit=1,
                               max_length=1024, save_samples=True)
    finally:
        handle.remove()
    assert failed == [] and calls, "lm-eval did not call the model object that was passed"
    samples = {}
    for spec in ("base_1", "yarn_4"):
        path = tmp_path / "lm_eval" / f"{spec}_arc_challenge_local_samples.jsonl"
        samples[spec] = json.loads(path.read_text().splitlines()[0])
    context, continuation = samples["yarn_4"]["arguments"][0][0], samples["yarn_4"]["arguments"][0][1]
    assert len(tokenizer(context)["input_ids"]) > 1024 > 256  # 25-shot prompt: scaling matters
    lm_eval_yarn = samples["yarn_4"]["resps"][0][0][0]
    lm_eval_base = samples["base_1"]["resps"][0][0][0]
    assert samples["base_1"]["arguments"] == samples["yarn_4"]["arguments"]
    assert lm_eval_yarn != lm_eval_base
    apply_scaling(model, "yarn:4")
    assert lm_eval_yarn == pytest.approx(_lm_eval_style_loglik(model, tokenizer, context, continuation, 1024), abs=1e-4)
    apply_scaling(model, "base")
    direct_base = _lm_eval_style_loglik(model, tokenizer, context, continuation, 1024)
    assert lm_eval_base == pytest.approx(direct_base, abs=1e-4)
    assert abs(lm_eval_yarn - direct_base) > 1e-4
    acc = {r["method"]: r["value"] for r in store.read("leaderboard").to_dict("records") if r["metric"] == "acc_norm"}
    assert set(acc) == {"base", "yarn"}


def test_offline_hub_task_fails_in_one_sentence_and_others_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "data"
    write_jsonl(data / "truthfulqa" / "validation.jsonl", truthfulqa_rows(2))
    own = tmp_path / "own_task"
    write_jsonl(own / "docs.jsonl", [{"q": f"Is {i} even?", "a": i % 2} for i in range(3)])
    (own / "yes_no.yaml").write_text(
        "task: yes_no_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {own / 'docs.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{q}}\"\n"
        "doc_to_choice: [\"yes\", \"no\"]\ndoc_to_target: a\nmetric_list:\n  - metric: acc\n")
    tasks = ["arc_challenge", "truthfulqa_mc2", str(own / "yes_no.yaml"), "no_such_task"]
    failed, store, manifest = run(tiny, tmp_path / "out", ["yarn:2"], tasks, data_dir=data, limit=1)
    assert failed == ["leaderboard|random:tiny|yarn:2|arc_challenge", "leaderboard|random:tiny|yarn:2|no_such_task"]
    assert "not an lm-eval task" in manifest.failed_cells()[failed[1]]["error"]
    error = manifest.failed_cells()[failed[0]]["error"]
    assert "'allenai/ai2_arc' (ARC-Challenge)" in error and "--leaderboard-data" in error
    assert "\n" not in error and error.endswith(".") and not re.search(r"[.;:!?]\s+[A-Z]", error), error
    tasks_done = set(store.read("leaderboard")["task"])
    assert {"truthfulqa_mc2_local", "yes_no_local"} <= tasks_done and "arc_challenge" not in tasks_done


# mirror → lm-eval's own task file, and the keys a mirror may set beside the data source
OWN_TASKS = {"arc_challenge_local": ("arc/arc_challenge.yaml", {"validation_split", "num_fewshot"}),
             "hellaswag_local": ("hellaswag/hellaswag.yaml", {"num_fewshot"}),
             "truthfulqa_mc2_local": ("truthfulqa/truthfulqa_mc2.yaml", set()),
             "truthfulqa_mc1_local": ("truthfulqa/truthfulqa_mc1.yaml", set()),
             "mmlu_local_anatomy": ("mmlu/default/mmlu_anatomy.yaml", {"num_fewshot", "process_docs"})}
DATA_SOURCE = {"dataset_path", "dataset_name", "dataset_kwargs"}


def test_mirrors_are_lm_evals_own_tasks_with_local_data(data_dir, tmp_path):
    """Each prepared mirror, read with lm-eval's own YAML loader, is lm-eval's task config with only
    the data source (and the paper's shot count / MMLU's subject filter) replaced."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = copy_tasks(tmp_path / "tasks")
    mirrors = ("arc_challenge_local", "hellaswag_local", "mmlu_local", "truthfulqa_mc2_local", "truthfulqa_mc1_local")
    for name in mirrors:
        point_mirror(out, name, data_dir)
    for task, (own_file, overridden) in OWN_TASKS.items():
        (mirror_file,) = out.rglob(f"{task}.yaml")
        mirror = load_yaml(mirror_file, resolve_func=False)
        own = load_yaml(lm_eval_tasks_dir() / own_file, resolve_func=False)
        assert mirror["dataset_path"] == "json" and mirror["dataset_name"] is None, task
        splits = mirror["dataset_kwargs"]["data_files"]
        assert all(Path(p).is_absolute() and Path(p).is_file() for paths in splits.values() for p in paths), task
        ignored = DATA_SOURCE | {"task", "tag", "metadata"} | overridden
        assert {k: v for k, v in mirror.items() if k not in ignored} == {
            k: v for k, v in own.items() if k not in ignored}, task  # MMLU: same description and alias too
    assert load_yaml(out / "arc_challenge_local" / "arc_challenge_local.yaml", resolve_func=False)["num_fewshot"] == 25


def test_cli_runs_the_leaderboard_on_local_copies(data_dir, tmp_path, monkeypatch, capsys):
    from evalharness import cli

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = cli.main(["--model", "random:tiny", "--method", "base,yarn", "--factor", "4", "--tasks", "leaderboard",
                     "--leaderboard-tasks", "arc_challenge,truthfulqa_mc2", "--leaderboard-data", str(data_dir),
                     "--limit", "2", "--out", str(out), "--no-progress", "--no-plots"])
    assert code == cli.EXIT_OK
    rows = pd.read_csv(out / "leaderboard.csv")
    headline = rows[((rows.task == "arc_challenge_local") & (rows.metric == "acc_norm"))
                    | ((rows.task == "truthfulqa_mc2_local") & (rows.metric == "acc"))]
    assert set(zip(headline.method, headline.task)) == {
        (m, t) for m in ("base", "yarn") for t in ("arc_challenge_local", "truthfulqa_mc2_local")}
    assert (headline.n_samples == 2).all() and headline.value.between(0, 1).all()
    assert (out / "lm_eval").is_dir() and len(list((out / "lm_eval").glob("*.json"))) == 4
    saved = json.loads((out / "lm_eval" / "yarn_4_arc_challenge_local.json").read_text())
    assert saved["evalharness"]["seeds"] == lm_eval_seeds(None)  # no --seed: lm-eval's own seeds
    recorded = [cell["lm_eval_json"] for name, cell in json.loads((out / "manifest.json").read_text())["cells"].items()
                if name.startswith("leaderboard|")]
    assert sorted(recorded) == sorted(f"lm_eval/{p.name}" for p in (out / "lm_eval").glob("*.json"))
    # a resume with another --limit would keep the cells' first counts: refused before any load or write
    table = (out / "leaderboard.csv").read_bytes()
    for limit in ("3", "arc_challenge=2"):
        code = cli.main(["--model", "random:tiny", "--method", "base,yarn", "--factor", "4", "--tasks", "leaderboard",
                         "--leaderboard-tasks", "arc_challenge,truthfulqa_mc2", "--leaderboard-data", str(data_dir),
                         "--limit", limit, "--out", str(out), "--no-progress", "--no-plots", "--dry-run"])
        assert code == cli.EXIT_USAGE
        assert (f"holds leaderboard results of random:tiny computed with --limit 2; this run gives {limit}, and the "
                "cells already done would keep their first count: give --limit 2 to resume") in capsys.readouterr().err
    assert (out / "leaderboard.csv").read_bytes() == table
    given = cli.parse_args(["--model", "random:tiny", "--seed", "0"])
    assert (given.seed, getattr(given, "seed_given", False)) == (0, True)
    assert getattr(cli.parse_args(["--model", "random:tiny"]), "seed_given", False) is False


def test_wheel_ships_every_task_file(wheel_names):
    """A non-editable install keeps the offline mirrors: the built wheel holds every file of tasks/lm-eval/."""
    shipped = {f"evalharness/tasks/lm-eval/{p.relative_to(TASKS_DIR).as_posix()}"
               for p in TASKS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert any(name.endswith("arc_challenge_local/arc_challenge_local.yaml") for name in shipped)
    assert shipped - wheel_names == set()


def _samples(path):
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def test_mirror_equals_lm_evals_own_task_per_sample(tiny, data_dir, tmp_path):
    """arc_challenge_local and lm-eval's own arc_challenge YAML (`include:` of the installed file, the
    data source replaced by the same local files) send the same requests and get the same
    log-likelihoods, sample by sample, with the same default seeds."""
    from pathlib import Path

    import lm_eval
    import yaml

    own = tmp_path / "own" / "arc_challenge_own.yaml"
    own.parent.mkdir()
    files = {split: str(data_dir / "arc_challenge" / f"{split}.jsonl") for split in ("train", "test")}
    own.write_text(yaml.safe_dump({
        "include": str(Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_challenge.yaml"),
        "task": "arc_challenge_own", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": files}, "validation_split": None, "num_fewshot": 25}))
    failed, _, manifest = run(tiny, tmp_path, ["yarn:4"], ["arc_challenge", str(own)], data_dir=data_dir,
                              save_samples=True)
    assert failed == []
    mirror = _samples(tmp_path / "lm_eval" / "yarn_4_arc_challenge_local_samples.jsonl")
    theirs = _samples(tmp_path / "lm_eval" / "yarn_4_arc_challenge_own_samples.jsonl")
    assert sorted(mirror) == sorted(theirs) == [0, 1]
    for doc_id, sample in mirror.items():
        assert sample["arguments"] == theirs[doc_id]["arguments"]  # 25-shot prompt and the four choices
        assert sample["arguments"][0][0].count("\nAnswer:") == 26
        assert sample["resps"] == theirs[doc_id]["resps"]  # log-likelihoods, per choice
        assert (sample["acc"], sample["acc_norm"]) == (theirs[doc_id]["acc"], theirs[doc_id]["acc_norm"])
    cell = manifest.data["cells"]["leaderboard|random:tiny|yarn:4|arc_challenge_local"]
    assert cell["seeds"] == {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234,
                             "fewshot_random_seed": 1234}


def test_seed_sets_all_four_and_changes_the_few_shot_draw(tiny, data_dir, tmp_path):
    assert lm_eval_seeds(7) == dict.fromkeys(lm_eval_seeds(), 7)
    contexts = {}
    for seed in (None, 1234, 0):
        out = tmp_path / f"seed{seed}"
        failed, _, manifest = run(tiny, out, ["yarn:4"], ["arc_challenge"], data_dir=data_dir, limit=1,
                                  seed=seed, save_samples=True)
        assert failed == []
        saved = json.loads((out / "lm_eval" / "yarn_4_arc_challenge_local.json").read_text())
        assert saved["evalharness"]["seeds"] == lm_eval_seeds(seed)
        contexts[seed] = _samples(out / "lm_eval" / "yarn_4_arc_challenge_local_samples.jsonl")[0]["arguments"][0][0]
    assert contexts[None] == contexts[1234]  # the few-shot sampler's default is 1234
    assert contexts[0] != contexts[None]


@pytest.mark.parametrize("target", ["evalharness.scaling.ScaledRotaryEmbedding.frequencies",
                                    "evalharness.leaderboard.run.result_rows"])
def test_a_bug_in_harness_code_surfaces_instead_of_failing_the_cell(tiny, data_dir, tmp_path, monkeypatch, target):
    """A ValueError raised in evalharness's own code (the scaled rotary module inside the model that
    lm-eval's loglikelihood calls; the row extraction after lm-eval returned) propagates out of the
    runner and no cell is recorded as failed."""
    monkeypatch.setattr(target, raise_bug)
    with pytest.raises(ValueError, match="^bug$"):
        run(tiny, tmp_path / "out", ["yarn:2"], ["arc_challenge"], data_dir=data_dir, limit=1)
    assert Manifest(tmp_path / "out").failed_cells() == {}


def test_an_lm_eval_failure_fails_its_cell_and_the_run_goes_on(tiny, data_dir, tmp_path, monkeypatch):
    """A ValueError raised inside lm-eval (its `evaluate`, under the real `simple_evaluate`) fails
    that cell with one sentence; the next task runs and its rows are written."""
    break_lm_eval_once(monkeypatch)
    failed, store, manifest = run(tiny, tmp_path / "out", ["yarn:2"], ["arc_challenge", "truthfulqa_mc2"],
                                  data_dir=data_dir, limit=1)
    assert failed == ["leaderboard|random:tiny|yarn:2|arc_challenge_local"], failed
    assert manifest.failed_cells()[failed[0]]["error"] == "LeaderboardTaskFailure: ValueError: lm-eval broke"
    assert set(store.read("leaderboard")["task"]) == {"truthfulqa_mc2_local"}


# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


def test_leaderboard_means_and_deltas():
    rows = [dict(model="m", method=m, factor=f, original_ctx=64, task=t, metric="acc", value=v, stderr=0.01,
                 num_fewshot=0, n_samples=100)
            for m, f, scores in (("base", 1.0, {"mmlu": 0.30, "hellaswag": 0.60}),
                                 ("yarn", 2.0, {"mmlu": 0.28}))
            for t, v in scores.items()]
    frame = pd.DataFrame(rows, columns=SCHEMAS["leaderboard"])
    assert leaderboard_columns(frame) == [("hellaswag", "acc"), ("mmlu", "acc")]
    means = leaderboard_means(frame).set_index("method")
    assert means.loc["base", "mean"] == pytest.approx(0.45) and means.loc["yarn", "n_tasks"] == 1
    (delta,) = leaderboard_deltas(frame, reference="base").to_dict("records")
    assert (delta["method"], delta["task"]) == ("yarn", "mmlu") and delta["delta"] == pytest.approx(-0.02)


def test_leaderboard_mean_counts_one_headline_metric_per_task():
    """A task reporting several metrics counts once in the mean, by the paper's metric (ARC-c
    acc_norm, MMLU acc_macro, TruthfulQA MC2 acc), other tasks by acc_norm before acc."""
    values = {("arc_challenge_local", "acc"): 0.30, ("arc_challenge_local", "acc_norm"): 0.34,
              ("mmlu_local", "acc_macro"): 0.20, ("mmlu_local", "acc_weighted"): 0.40,
              ("truthfulqa_mc2", "acc"): 0.48, ("mytask", "acc"): 0.10, ("mytask", "acc_norm"): 0.70,
              ("other", "f1"): 0.90, ("other", "bleu"): 0.50}
    frame = pd.DataFrame([dict(model="m", method="base", factor=1.0, original_ctx=64, task=t, metric=m, value=v,
                               stderr=0.01, num_fewshot=0, n_samples=10) for (t, m), v in values.items()],
                         columns=SCHEMAS["leaderboard"])
    (row,) = leaderboard_means(frame).to_dict("records")
    by_hand = (0.34 + 0.20 + 0.48 + 0.70 + 0.50) / 5  # "other": no preferred metric, the first sorted (bleu)
    assert row["n_tasks"] == 5 and row["mean"] == pytest.approx(by_hand)
    assert headline_metric("hellaswag", ["acc", "acc_norm"]) == "acc_norm"
    assert headline_metric("mmlu", ["acc_macro", "acc_weighted"]) == "acc_macro"


def test_subject_rows_stay_out_of_leaderboard_summaries():
    frame = pd.DataFrame({"task": ["mmlu_local", "mmlu_local_anatomy", "mmlu_local_virology", "arc_challenge_local",
                                   "truthfulqa_mc1_local", "truthfulqa_mc2_local"],
                          "metric": ["acc_macro", "acc", "acc", "acc_norm", "acc", "acc"]})
    kept = without_subtasks(frame)
    assert list(kept["task"]) == ["mmlu_local", "arc_challenge_local", "truthfulqa_mc1_local", "truthfulqa_mc2_local"]


def test_report_and_figure_name_truthfulqa_mc2_as_mc2():
    """TruthfulQA MC2's score is lm-eval's `acc`: the committed report's headers call it MC2, as the figure does."""
    from evalharness.leaderboard.analysis import metric_words

    assert metric_words("truthfulqa_mc2_local", "acc") == "MC2" and metric_words("arc_challenge", "acc") == "acc"
    text = (Path(__file__).resolve().parent.parent / "results" / "smollm2-135m-leaderboard" / "report.md").read_text()
    assert "TruthfulQA (local) (MC2, 0-shot, n=100)" in text and "TruthfulQA (local) (acc," not in text


def test_saved_lm_eval_results_name_no_absolute_path():
    """An installed task's YAML is named from site-packages, a file in a temporary copy by the copy's
    alias, a file under the home folder from `~`, a data file from the working folder."""
    from evalharness.leaderboard.extract import relative_paths

    body = {"configs": {"t": {"config_source": "/venv/site/lm_eval/tasks/ruler/vt.yaml",
                              "mirror": "/tmp/evalharness-tasks-abc/tasks/arc_local/arc.yaml",
                              "tokenizer": "/tmp/evalharness-ruler-xyz",
                              "model": "/home/u/.cache/evalharness/gguf/m-1",
                              "data_files": ["/home/u/repo/data/arc/test.jsonl", "/srv/data/arc/test.jsonl"],
                              "doc": "/ not a path\nx"}}}
    aliases = {"/tmp/evalharness-tasks-abc/tasks": "tasks/lm-eval", "/tmp/evalharness-ruler-xyz": "m tokenizer"}
    out = relative_paths(body, aliases, site_packages="/venv/site", cwd="/home/u/repo", home="/home/u")["configs"]["t"]
    assert out["config_source"] == "lm_eval/tasks/ruler/vt.yaml"
    assert out["mirror"] == "tasks/lm-eval/arc_local/arc.yaml" and out["tokenizer"] == "m tokenizer"
    assert out["model"] == "~/.cache/evalharness/gguf/m-1"
    assert out["data_files"] == ["data/arc/test.jsonl", "../../../srv/data/arc/test.jsonl"]
    assert out["doc"] == "/ not a path\nx"
    committed = Path(__file__).resolve().parent.parent / "results"
    texts = {p: p.read_text() for p in committed.glob("*/lm_eval/*.json")}
    machine_paths = [p for p, text in texts.items() if '": "/' in text or "/tmp/" in text or "evalharness-" in text]
    assert texts and not machine_paths, machine_paths


def test_a_data_file_that_is_not_json_is_named_with_its_line(tmp_path):
    """A mirror's .jsonl line or .json file that is not JSON fails the mirror's cells with the file and
    line named (what `datasets` reports is "An error occurred while generating the dataset")."""
    from evalharness.leaderboard.mirrors import MIRRORS, local_data_files
    from evalharness.leaderboard.protocol import LeaderboardError

    folder = tmp_path / "arc_challenge"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"id": 1}\n\n{"id": 2\n')
    (folder / "test.jsonl").write_text('{"id": 3}\n')
    with pytest.raises(LeaderboardError, match=r"train\.jsonl line 3 is not JSON"):
        local_data_files(MIRRORS["arc_challenge_local"], tmp_path)
    (folder / "train.jsonl").write_text('{"id": 1}\n')
    builder, files = local_data_files(MIRRORS["arc_challenge_local"], tmp_path)
    assert builder == "json" and [Path(f).name for f in files["test"]] == ["test.jsonl"]
