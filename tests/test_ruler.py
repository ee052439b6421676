"""RULER through lm-eval: task names, the per-cell score and its stderr, the KV-cache rule of lm-eval's
generation under dynamic scaling, the paired differences, figures and report, and an offline
end-to-end run whose ruler.csv equals lm-eval's own result JSON and per-sample log."""
import contextlib
import io
import json
import math
import random
import statistics
from pathlib import Path

import numpy
import pandas as pd
import pytest
import torch
from conftest import break_lm_eval_once, raise_bug

from evalharness import cli
from evalharness.results import SCHEMAS
from evalharness.ruler.analysis import ruler_differences
from evalharness.ruler.engine import (
    MAX_GEN_TOKENS,
    OFFLINE_TASKS,
    RulerTaskFailure,
    cell_scores,
    generator_problem,
    mean_and_stderr,
    resolve_tasks,
    vt_stall_reason,
)
from evalharness.ruler.figures import plot_ruler_heatmap, plot_ruler_mean

LENGTH = 1024  # niah_single_1 and fwe fit their prompts + 128 tokens of the byte tokenizer
LENGTH_CWE = 3072  # cwe's smallest prompt (10 words) needs about 2k bytes


def test_resolve_tasks():
    assert resolve_tasks("ruler") == list(OFFLINE_TASKS)
    assert resolve_tasks("vt,niah_single_1,ruler_vt") == ["ruler_vt", "niah_single_1"]
    with pytest.raises(cli.UsageError, match="'niah_single_9' is not a RULER task"):
        resolve_tasks("niah_single_9")


def test_mean_and_stderr_against_statistics():
    scores = [1.0, 0.0, 0.5, 1.0, 0.25]
    mean, stderr = mean_and_stderr(scores)
    assert mean == pytest.approx(statistics.fmean(scores))
    assert stderr == pytest.approx(statistics.stdev(scores) / math.sqrt(len(scores)))
    assert math.isnan(mean_and_stderr([1.0])[1])


def test_cell_scores_checks_lm_eval_aggregate():
    samples = [{"doc_id": 1, "4096": 0.0}, {"doc_id": 0, "4096": 1.0}]
    results = {"samples": {"t": samples}, "results": {"t": {"4096,none": 0.5}}}
    scores, mean, _ = cell_scores(results, "t", 4096)
    assert scores == [(0, 1.0), (1, 0.0)] and mean == 0.5
    results["results"]["t"]["4096,none"] = 0.75
    with pytest.raises(RulerTaskFailure, match="differs from lm-eval's aggregate 0.75"):
        cell_scores(results, "t", 4096)
    with pytest.raises(RulerTaskFailure, match="no per-sample metric '512'"):
        cell_scores(results, "t", 512)


def _naive_paired_bootstrap(a, b, seed, n_resamples=1000):
    """Percentile bootstrap of mean(a − b), written out: seeded index draws, floor/ceil order statistics."""
    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b)]
    values = sorted(sum(diffs[rng.randrange(len(diffs))] for _ in diffs) / len(diffs) for _ in range(n_resamples))
    return values[math.floor(0.025 * (n_resamples - 1))], values[math.ceil(0.975 * (n_resamples - 1))]


def test_ruler_differences_pair_samples_by_task_length_and_doc():
    key = {"model": "m", "original_ctx": 256}
    rows = []
    base = {("a", 0): 1.0, ("a", 1): 0.0, ("a", 2): 1.0, ("b", 0): 0.5, ("b", 1): 0.25}
    yarn = {("a", 0): 1.0, ("a", 1): 1.0, ("a", 2): 0.0, ("b", 0): 1.0, ("b", 1): 0.75, ("b", 7): 1.0}
    for method, factor, scores in (("base", 1.0, base), ("yarn", 2.0, yarn)):
        for (task, doc), score in scores.items():
            rows.append(dict(key, method=method, factor=factor, task=task, context_length=512, doc_id=doc, score=score))
    frame = pd.DataFrame(rows, columns=SCHEMAS["ruler_samples"])
    out = ruler_differences(frame, "base", seed=3)
    assert list(out["task"]) == ["a", "b", "all"] and set(out["method"]) == {"yarn"}
    pooled = out.set_index("task").loc["all"]
    pairs = sorted(set(base) & set(yarn))  # ("b", 7) has no base sample: left out
    assert pooled["n"] == len(pairs) == 5
    assert pooled["difference"] == pytest.approx(statistics.fmean(yarn[p] - base[p] for p in pairs))
    low, high = _naive_paired_bootstrap([yarn[p] for p in pairs], [base[p] for p in pairs], seed=3)
    assert (pooled["difference_ci_low"], pooled["difference_ci_high"]) == pytest.approx((low, high))
    assert out.set_index("task").loc["b", "difference"] == pytest.approx(0.5)


@contextlib.contextmanager
def decoder_forward_lengths(model):
    """The list of token counts of the decoder's forwards while inside (a pre-hook on `model.model`)."""
    spans = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: spans.append(int((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                       else args[0]).shape[1])), with_kwargs=True)
    try:
        yield spans
    finally:
        hook.remove()


def test_generation_reuses_the_kv_cache_only_within_one_scale(tiny):
    """lm-eval's generation (HarnessLM._model_generate) for dynamic YaRN gives the tokens of
    passkey.greedy_decode (the paper's rule, tested against transformers' cache-free generate); the
    decoder's forwards show the rule: within L one prefill then one-token steps on the KV cache,
    across L a full forward over the whole sequence at every step."""
    from evalharness.leaderboard.lm import wrap_model
    from evalharness.passkey.engine import greedy_decode
    from evalharness.scaling import apply_scaling

    model, tokenizer, _ = tiny
    apply_scaling(model, "dynamic-yarn:2")
    lm = wrap_model(model, tokenizer, 512, 1, show_progress=False, use_kv_cache=False)
    generator = torch.Generator().manual_seed(0)
    try:
        with decoder_forward_lengths(model) as spans:
            for prompt, new in ((100, 40), (230, 60)):  # within L = 256; across it
                ids = torch.randint(3, 259, (1, prompt), generator=generator)
                spans.clear()
                out = lm._model_generate(ids, prompt + new, stop=[], do_sample=False, temperature=0.0)
                produced, forwards = out[0, prompt:].tolist(), list(spans)
                expected = list(greedy_decode(model, tokenizer, ids, max_new_tokens=new,
                                              stop_when_decided=False).token_ids)
                assert produced[:len(expected)] == expected
                assert produced[len(expected):] in ([], [tokenizer.eos_token_id])
                steps = len(produced)
                if prompt + new <= 256:
                    assert forwards == [prompt] + [1] * (steps - 1)
                else:
                    assert forwards == [prompt + i for i in range(steps)]
    finally:
        apply_scaling(model, "base")


def test_generation_on_the_kv_cache_prefills_in_chunks(tiny):
    """With `prefill_chunk` C, lm-eval's generation on the plain KV cache prefills the prompt in
    chunks of C tokens (the decoder's forwards: C, C, …, the rest, then one token per step) and
    generates the tokens of the one-shot prefill; a prompt no longer than C is one forward."""
    from evalharness.leaderboard.lm import wrap_model
    from evalharness.scaling import apply_scaling

    model, tokenizer, _ = tiny
    apply_scaling(model, "yarn:2")
    ids = torch.randint(3, 259, (1, 300), generator=torch.Generator().manual_seed(4))
    try:
        with decoder_forward_lengths(model) as spans:
            outputs = {}
            for chunk in (None, 128, 512):
                lm = wrap_model(model, tokenizer, 512, 1, show_progress=False, prefill_chunk=chunk)
                spans.clear()
                generated = lm._model_generate(ids, 300 + 12, stop=[], do_sample=False, temperature=0.0)
                outputs[chunk] = generated[0].tolist()
                steps = len(outputs[chunk]) - 300
                prefill = [128, 128, 44] if chunk == 128 else [300]
                assert spans == prefill + [1] * (steps - 1), chunk
            assert outputs[128] == outputs[None] == outputs[512]
    finally:
        apply_scaling(model, "base")


def test_chunked_prefill_of_a_left_padded_batch_generates_what_one_shot_does(tiny):
    """lm-eval pads a batch on the left (batch size > 1, static methods): the chunked prefill keeps
    each row's tokens equal to the one-shot prefill's."""
    from evalharness.leaderboard.lm import wrap_model
    from evalharness.scaling import apply_scaling

    model, tokenizer, _ = tiny
    generator = torch.Generator().manual_seed(5)
    ids = torch.zeros(2, 300, dtype=torch.long)
    mask = torch.zeros(2, 300, dtype=torch.long)
    ids[0], mask[0] = torch.randint(3, 259, (300,), generator=generator), 1
    ids[1, 100:], mask[1, 100:] = torch.randint(3, 259, (200,), generator=generator), 1
    apply_scaling(model, "yarn:2")
    try:
        outputs = [wrap_model(model, tokenizer, 512, 2, show_progress=False, prefill_chunk=chunk)._model_generate(
                       ids, 300 + 8, stop=[], attention_mask=mask, do_sample=False, temperature=0.0)
                   for chunk in (None, 64)]
    finally:
        apply_scaling(model, "base")
    assert torch.equal(outputs[0], outputs[1])


def _string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's metric, written out: the fraction of references contained in the prediction (case-insensitive)."""
    text = prediction.strip().lower()
    return sum(r.lower() in text for r in references) / len(references)


def _check_run(out, tasks, length, tokenizer):
    """ruler.csv and ruler_samples.csv of a base + dynamic-yarn run equal lm-eval's results JSON and
    per-sample log; the per-sample metric equals RULER's string_match_all recomputed from the logged
    output; both methods saw the same prompts (each generated by its own invocation)."""
    table = pd.read_csv(out / "ruler.csv")
    samples = pd.read_csv(out / "ruler_samples.csv")
    assert list(table.columns) == SCHEMAS["ruler"] and list(samples.columns) == SCHEMAS["ruler_samples"]
    assert len(table) == 2 * len(tasks) and set(table["task"]) == set(tasks)
    prompts = {}
    for row in table.to_dict("records"):
        stem = f"{row['method']}_{row['factor']:g}_{row['task']}_{length}"
        saved = json.loads((out / "lm_eval" / f"{stem}.json").read_text())
        assert saved["evalharness"]["max_length"] == length + MAX_GEN_TOKENS
        # the tokenizer lm-eval read was a temporary copy: named, not pointed at
        assert saved["configs"][row["task"]]["metadata"]["tokenizer"] == f"{row['model']} tokenizer (temporary copy)"
        assert row["score"] == pytest.approx(saved["results"][row["task"]][f"{length},none"])
        logged = [json.loads(line) for line in (out / "lm_eval" / f"{stem}_samples.jsonl").read_text().splitlines()]
        assert row["n"] == len(logged) == 2
        for item in logged:
            doc = item["doc"]
            assert doc["max_length"] == length and doc["outputs"]
            if row["task"].startswith("niah"):  # sized by the model's own (byte) tokenizer
                assert doc["length"] == len(tokenizer(doc["input"]).input_ids) + MAX_GEN_TOKENS <= length
            assert float(item[str(length)]) == pytest.approx(_string_match_all(item["filtered_resps"][0],
                                                                               doc["outputs"]))
        scores = [float(item[str(length)]) for item in logged]
        assert row["score"] == pytest.approx(statistics.fmean(scores))
        assert row["stderr"] == pytest.approx(statistics.stdev(scores) / math.sqrt(2))
        mine = samples[(samples["method"] == row["method"]) & (samples["task"] == row["task"])]
        assert sorted(mine["doc_id"]) == sorted(item["doc_id"] for item in logged)
        assert sorted(mine["score"]) == pytest.approx(sorted(scores))
        prompts.setdefault(row["task"], []).append([item["doc"]["input"] for item in logged])
    for task, (base_prompts, dynamic_prompts) in prompts.items():
        assert base_prompts == dynamic_prompts, f"{task}: the methods saw different prompts"


def _ruler_argv(out, tasks, length, methods="base,dynamic-yarn"):
    return ["--model", "random:tiny", "--method", methods, "--factor", "2", "--tasks", "ruler",
            "--ruler-tasks", ",".join(tasks), "--lengths", str(length), "--ruler-samples", "2", "--save-samples",
            "--out", str(out), "--no-progress"]


def _run_base_then_both(out, tasks, length, *extra) -> None:
    """Base in one invocation, then base + dynamic-yarn into the same folder (only dynamic-yarn runs):
    the methods' prompts come from separate generations, as in a resumed run."""
    assert cli.main(_ruler_argv(out, tasks, length, "base") + ["--no-plots", *extra]) == cli.EXIT_OK
    assert cli.main(_ruler_argv(out, tasks, length) + list(extra)) == cli.EXIT_OK


def test_ruler_cli_offline_scores_equal_lm_eval(tmp_path, monkeypatch, capsys, tiny):
    out, tasks = tmp_path / "run", ["niah_single_1", "ruler_fwe"]
    argv = _ruler_argv(out, tasks, LENGTH)
    _run_base_then_both(out, tasks, LENGTH)
    captured = capsys.readouterr()
    summary = captured.out
    assert "Generating synthetic samples" not in captured.err and "it/s" not in captured.err  # lm-eval's bars off
    assert "RULER mean score over tasks" in summary and "Dynamic-YaRN" in summary
    _check_run(out, tasks, LENGTH, tiny[1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(name.startswith("ruler|") and cell["status"] == "done" for name, cell in manifest["cells"].items()) == 4
    for name, cell in manifest["cells"].items():  # the provenance path is inside the run folder, relative
        if name.startswith("ruler|"):
            assert not Path(cell["lm_eval_json"]).is_absolute() and (out / cell["lm_eval_json"]).is_file()
    for figure in ("ruler.png", "ruler_mean.png"):
        assert (out / "figures" / figure).exists()
    report = (out / "report.md").read_text()
    assert "## RULER" in report and "Difference to Base on the same samples" in report

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr("lm_eval.simple_evaluate", must_not_run)
    assert cli.main(argv + ["--no-plots"]) == cli.EXIT_OK
    assert len(pd.read_csv(out / "ruler.csv")) == 4
    capsys.readouterr()
    more = [item if item != "2" or argv[i - 1] != "--ruler-samples" else "3" for i, item in enumerate(argv)]
    assert cli.main(more + ["--no-plots"]) == cli.EXIT_USAGE  # done cells would keep their 2 samples
    assert "computed with --ruler-samples 2; this run gives 3" in capsys.readouterr().err
    assert len(pd.read_csv(out / "ruler.csv")) == 4


@pytest.mark.slow
def test_every_offline_task_the_byte_tokenizer_allows(tmp_path, tiny):
    """niah_single_1, niah_multikey_2/3, cwe and fwe at 3k (ruler_vt cannot run with a byte-level
    tokenizer: `test_generator_problems`)."""
    out, tasks = tmp_path / "run", [t for t in OFFLINE_TASKS if t != "ruler_vt"]
    _run_base_then_both(out, tasks, 3072, "--no-plots")
    _check_run(out, tasks, 3072, tiny[1])


def test_cwe_prompts_do_not_depend_on_earlier_cells(tiny, tmp_path):
    """lm-eval's cwe generator keeps a module-level random.Random(42) that each generation advances:
    without `fresh_generator` a second cell (another method) gets other prompts."""
    from lm_eval.tasks import TaskManager

    from evalharness.ruler.engine import fresh_generator, lm_eval_task_folder

    tiny[1].save_pretrained(tmp_path / "tok")
    manager = TaskManager(include_path=str(lm_eval_task_folder()), include_defaults=False,
                          metadata={"tokenizer": str(tmp_path / "tok"), "max_seq_lengths": [LENGTH_CWE]})

    def prompts(fresh: bool) -> list[str]:
        if fresh:
            fresh_generator("ruler_cwe")
        random.seed(0)
        numpy.random.seed(1234)
        task = manager.load(["ruler_cwe"])["tasks"]["ruler_cwe"]
        return [doc["input"] for doc in list(task.test_docs())[:2]]

    first = prompts(fresh=True)
    assert prompts(fresh=False) != first
    assert prompts(fresh=True) == first


def _word_tokenizer():
    """One token per word or punctuation mark (tokenizers' WordLevel, every word its unknown token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")


def test_generator_problems(tiny):
    """lm-eval's vt generator loops forever when its few-shot example exceeds 500 tokens (byte
    tokenizer) or the smallest prompt exceeds the length; a word-level tokenizer fits at 4k."""
    words = _word_tokenizer()
    assert vt_stall_reason(words, 4096) is None
    assert "run ruler_vt at longer --lengths" in vt_stall_reason(words, 200)
    assert "a byte-level tokenizer cannot run ruler_vt" in vt_stall_reason(tiny[1], 4096)
    assert "run ruler_cwe at longer --lengths" in generator_problem("ruler_cwe", tiny[1], 1024)
    assert generator_problem("ruler_cwe", tiny[1], 2048) is None
    assert generator_problem("niah_single_1", tiny[1], 1024) is None
    from lm_eval.tasks.ruler import vt_utils

    with contextlib.redirect_stdout(io.StringIO()):  # the guard's "fits" is lm-eval's: it returns
        samples = vt_utils.sys_vartrack_w_noise_random(words, num_samples=2, max_seq_length=4096,
                                                       icl_example=vt_utils.sys_vartrack_w_noise_random(
                                                           words, 1, 500, incremental=5)[0])
    assert len(samples) == 2 and all(s["length"] <= 4096 for s in samples)


def test_unreachable_or_stalling_tasks_fail_their_cells_as_one_sentence(tmp_path):
    out = tmp_path / "run"
    argv = ["--model", "random:tiny", "--method", "base", "--tasks", "ruler", "--ruler-tasks", "niah_single_2,vt",
            "--lengths", str(LENGTH), "--ruler-samples", "1", "--out", str(out), "--no-progress", "--no-plots"]
    assert cli.main(argv) == cli.EXIT_CELLS_FAILED
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    errors = {name.split("|")[3]: cell["error"] for name, cell in cells.items() if cell["status"] == "failed"}
    assert "niah_single_2: its data (essays, SQuAD or HotpotQA) must be downloaded" in errors["niah_single_2"]
    assert "a byte-level tokenizer cannot run ruler_vt" in errors["ruler_vt"]
    assert not any("\n" in error for error in errors.values())


def test_dry_run_lists_ruler_cells_with_memory(tmp_path, capsys):
    argv = ["--model", "random:tiny", "--method", "base,dynamic-yarn", "--original-ctx", "1024", "--tasks", "ruler",
            "--ruler-tasks", "vt,fwe", "--lengths", "512,4096", "--ruler-samples", "3", "--out", str(tmp_path / "r"),
            "--dry-run"]
    assert cli.main(argv) == cli.EXIT_OK
    lines = [line for line in capsys.readouterr().out.splitlines() if "ruler|" in line]
    assert len(lines) == 2 * 2 * 2

    def tokens(method: str, task: str, length: int) -> int:
        line = next(line for line in lines if f"|{method}|" in line and line.endswith(f"|{task}|{length}"))
        assert "GiB" in line  # the peak-memory estimate
        return int(line.split()[2])

    assert tokens("base", "ruler_vt", 4096) == 3 * 4096  # with the KV cache: ≤ length tokens per sample
    assert tokens("dynamic-yarn", "ruler_fwe", 512) == 3 * 512  # 512 + 128 ≤ L: one scale, the cache holds
    assert tokens("dynamic-yarn", "ruler_fwe", 4096) == 3 * 4096 * MAX_GEN_TOKENS  # a full forward per step
    assert not (tmp_path / "r").exists()


def test_dry_run_shows_which_ruler_cells_prefill_in_chunks(tmp_path, capsys):
    """`--prefill-chunk` applies to cells that generate on the plain KV cache; a dynamic method's cell
    that generates by full forwards, or on the re-rotated cache, prefills one-shot."""
    def plans(*extra):
        argv = ["--model", "random:tiny", "--method", "base,dynamic-yarn", "--original-ctx", "1024", "--tasks",
                "ruler", "--ruler-tasks", "fwe", "--lengths", "512,4096", "--prefill-chunk", "256",
                "--out", str(tmp_path / "r"), "--dry-run", *extra]
        assert cli.main(argv) == cli.EXIT_OK
        lines = [line for line in capsys.readouterr().out.splitlines() if "ruler|" in line]
        return {tuple(line.split()[-1].split("|")[2:5:2]): ("chunk 256" in line) for line in lines}

    assert plans() == {("base", "512"): True, ("base", "4096"): True,
                       ("dynamic-yarn", "512"): True, ("dynamic-yarn", "4096"): False}
    assert plans("--dynamic-cache", "rerotate") == {("base", "512"): True, ("base", "4096"): True,
                                                    ("dynamic-yarn", "512"): False, ("dynamic-yarn", "4096"): False}


@pytest.mark.parametrize("extra, message", [
    (["--ruler-tasks", "nope"], "'nope' is not a RULER task"),
    (["--ruler-samples", "0"], "--ruler-samples 0 must be ≥ 1"),
    (["--lengths", "128"], "is not longer than the 128 tokens"),
])
def test_bad_ruler_options_exit_2(tmp_path, capsys, extra, message):
    argv = ["--model", "random:tiny", "--tasks", "ruler", "--lengths", "512", "--out", str(tmp_path / "r")] + extra
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def _hand_made_ruler() -> pd.DataFrame:
    rows = []
    for method, factor, shift in (("base", 1.0, 0.0), ("yarn", 2.0, 0.1), ("dynamic-yarn", 2.0, 0.05)):
        for task, level in (("niah_single_1", 0.9), ("ruler_fwe", 0.5)):
            for length, drop in ((512, 0.0), (1024, 0.3)):
                rows.append(dict(model="m", method=method, factor=factor, original_ctx=512, task=task,
                                 context_length=length, score=level - drop + shift, n=4 if task == "ruler_fwe" else 3,
                                 stderr=0.1))
    return pd.DataFrame(rows, columns=SCHEMAS["ruler"])


def test_ruler_figures_from_the_table():


    table = _hand_made_ruler()
    heatmap = plot_ruler_heatmap(table)
    panels = [ax for ax in heatmap.axes if ax.get_gid() != "colorbar"]
    assert [ax.get_title() for ax in panels] == ["Base", "YaRN s=2", "Dynamic-YaRN"]
    texts = [t.get_text() for t in panels[1].texts if t.get_gid() == "annotation"]
    assert texts == ["1.00\nn=3", "0.70\nn=3", "0.60\nn=4", "0.30\nn=4"]  # task rows × length columns
    figure = plot_ruler_mean(table)
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_gid() == "series"}
    assert list(lines) == ["Base", "YaRN s=2", "Dynamic-YaRN"]
    assert list(lines["YaRN s=2"].get_ydata()) == pytest.approx([(1.0 + 0.6) / 2, (0.7 + 0.3) / 2])
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "original_ctx"] == [512]


def test_report_ruler_section_against_each_reference(tmp_path):
    table = _hand_made_ruler()
    table.to_csv(tmp_path / "ruler.csv", index=False)
    rows = []
    for row in table.to_dict("records"):
        for doc in range(int(row["n"])):
            rows.append({**{k: row[k] for k in SCHEMAS["ruler_samples"] if k in row}, "doc_id": doc,
                         "score": float(doc < round(row["score"] * row["n"]))})
    pd.DataFrame(rows, columns=SCHEMAS["ruler_samples"]).to_csv(tmp_path / "ruler_samples.csv", index=False)
    from evalharness.report import build_report

    report = build_report(tmp_path, references=("yarn:2", "ntk"))
    assert "## RULER" in report
    assert "| YaRN s=2 | 80.0 (2) | 50.0 (2) |" in report  # mean over the two tasks, tasks counted
    assert "Difference to Base on the same samples" in report
    assert "Difference to YaRN s=2 on the same samples" in report
    assert "No RULER series matches --reference 'ntk'." in report


def test_dynamic_cache_rerotate_generates_on_the_rerotated_cache(tmp_path, monkeypatch, capsys, tiny):
    """`--dynamic-cache rerotate`: dynamic-yarn's generations past L run on a RerotatingCache that
    re-rotates (one per sample), the cell records the mode, the scores still equal lm-eval's own, and
    the folder refuses a later run with the other mode."""
    from evalharness.leaderboard import lm as harness_lm

    made = []

    def spy(model):
        cache = real(model)
        made.append(cache)
        return cache

    real = harness_lm.rerotating_cache
    monkeypatch.setattr(harness_lm, "rerotating_cache", spy)  # the name the lm-eval wrapper calls
    out, tasks = tmp_path / "run", ["niah_single_1"]
    _run_base_then_both(out, tasks, LENGTH, "--dynamic-cache", "rerotate")
    _check_run(out, tasks, LENGTH, tiny[1])
    caches = [cache for cache in made if cache is not None]
    assert len(caches) == 2 and all(cache.rerotations > 0 for cache in caches)
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    modes = {name.split("|")[2]: cell.get("dynamic_cache") for name, cell in cells.items() if name.startswith("ruler|")}
    assert modes == {"dynamic-yarn": "rerotate", "base": None}
    capsys.readouterr()
    assert cli.main(_ruler_argv(out, tasks, LENGTH) + ["--no-plots"]) == cli.EXIT_USAGE
    assert "was generated with --dynamic-cache rerotate" in capsys.readouterr().err
    # rerunning the static-only command into this folder resumes (nothing to do), whatever the mode
    before = (out / "ruler.csv").read_bytes()
    assert cli.main(_ruler_argv(out, tasks, LENGTH, "base") + ["--no-plots"]) == cli.EXIT_OK
    assert (out / "ruler.csv").read_bytes() == before


def test_report_lists_tasks_in_ruler_order(tmp_path):
    """The per-task table follows RULER's task order (vt before cwe), not the alphabet."""
    rows = [dict(model="m", method="base", factor=1.0, original_ctx=512, task=task, context_length=512, score=0.5,
                 n=2, stderr=0.1) for task in ("ruler_cwe", "ruler_vt", "niah_single_1")]
    pd.DataFrame(rows, columns=SCHEMAS["ruler"]).to_csv(tmp_path / "ruler.csv", index=False)
    from evalharness.report import build_report

    report = build_report(tmp_path)
    positions = [report.index(f"| Base | {task} |") for task in ("niah_single_1", "ruler_vt", "ruler_cwe")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("target", ["evalharness.scaling.ScaledRotaryEmbedding.frequencies",
                                    "evalharness.ruler.engine.cell_scores"])
def test_a_bug_in_harness_code_surfaces_instead_of_failing_the_cell(tmp_path, monkeypatch, target):
    """A ValueError raised in evalharness's own code (the scaled rotary module inside the model that
    lm-eval's generation calls; the scoring after lm-eval returned) propagates out of cli.main and no
    cell is recorded as failed: the failure policy files only lm-eval's own failures."""
    monkeypatch.setattr(target, raise_bug)
    out = tmp_path / "run"
    argv = ["--model", "random:tiny", "--method", "yarn", "--factor", "2", "--tasks", "ruler", "--ruler-tasks",
            "niah_single_1", "--lengths", str(LENGTH), "--ruler-samples", "1", "--out", str(out), "--no-progress",
            "--no-plots"]
    with pytest.raises(ValueError, match="^bug$"):
        cli.main(argv)
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    assert not any(cell["status"] == "failed" for cell in cells.values()), cells


def test_an_lm_eval_failure_fails_its_cell_and_the_run_goes_on(tmp_path, monkeypatch):
    """A ValueError raised inside lm-eval (its `evaluate`, under the real `simple_evaluate`) fails
    that cell with one sentence; the next cell runs and is written."""
    break_lm_eval_once(monkeypatch)
    out = tmp_path / "run"
    argv = ["--model", "random:tiny", "--method", "base,yarn", "--factor", "2", "--tasks", "ruler", "--ruler-tasks",
            "niah_single_1", "--lengths", str(LENGTH), "--ruler-samples", "1", "--out", str(out), "--no-progress",
            "--no-plots"]
    assert cli.main(argv) == cli.EXIT_CELLS_FAILED
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    status = {name.split("|")[2]: (cell["status"], cell.get("error")) for name, cell in cells.items()
              if name.startswith("ruler|")}
    assert status["base"] == ("failed", "RulerTaskFailure: niah_single_1: ValueError: lm-eval broke"), status
    assert status["yarn:2"][0] == "done", status
    assert list(pd.read_csv(out / "ruler.csv")["method"]) == ["yarn"]
