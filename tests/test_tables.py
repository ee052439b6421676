"""The tables layer: summaries and statistics against direct computations on hand-made tables."""
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalharness.analysis.display import method_display, ordered_groups, pivot_by_length
from evalharness.analysis.stats import paired_accuracy_difference_interval, parse_reference, wilson_interval
from evalharness.cli.eval import print_summary
from evalharness.leaderboard.analysis import (
    headline_metric,
    leaderboard_columns,
    leaderboard_deltas,
    leaderboard_means,
    task_display,
    task_sort_key,
    without_subtasks,
)
from evalharness.method_facts import METHOD_FACTS, yarn_mscale
from evalharness.passkey.analysis import passkey_accuracy, passkey_differences, passkey_effective_context
from evalharness.perplexity.analysis import (
    aggregate_perplexity,
    bootstrap_ppl_interval,
    paired_ppl_ratio_interval,
    perplexity_ratios,
    temperature_sweep,
)
from evalharness.results import SCHEMAS, ResultStore, read_table

ROOT = Path(__file__).resolve().parent.parent
Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


# ---------------------------------------------------------------------------------------------
# Hand-made tables
# ---------------------------------------------------------------------------------------------

def doc_row(doc_id, length, tokens, nll_sum, method="yarn", factor=2.0, window_nll_sum=None, model="m"):
    window_nll_sum = 3 * nll_sum / tokens if window_nll_sum is None else window_nll_sum
    return dict(model=model, method=method, factor=factor, original_ctx=64, dataset="d", doc_id=doc_id,
                doc_tokens=1000, protocol="sliding", window_bos="every", context_length=length, stride=16,
                scored_tokens=tokens, nll_sum=nll_sum, n_windows=3, window_nll_sum=window_nll_sum,
                ppl=math.exp(nll_sum / tokens), ppl_paper=math.exp(window_nll_sum / 3))


def passkey_rows(curves, depths=(0.5,), trials=10):
    """One row per prompt; `curves`: {(method, factor): {length: accuracy}} with accuracy·trials
    correct prompts (the first ones) per depth."""
    rows = []
    for (method, factor), curve in curves.items():
        for length, accuracy in curve.items():
            for depth in depths:
                for trial in range(trials):
                    rows.append(dict(model="m", method=method, factor=factor, original_ctx=4096,
                                     context_length=length, prompt_tokens=length - 2, depth=depth,
                                     trial=trial, seed=0, scoring="generate", passkey=12345, continuation="",
                                     correct=trial < round(accuracy * trials)))
    return pd.DataFrame(rows, columns=SCHEMAS["passkey"])


# ---------------------------------------------------------------------------------------------
# Without torch
# ---------------------------------------------------------------------------------------------

def test_tables_plots_and_registry_facts_work_with_torch_unimportable(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.append("perplexity_docs", [doc_row(d, n, 100, 150.0 + n / 10 + i, method=m, factor=f)
                                     for i, d in enumerate("ab") for n in (64, 128)
                                     for m, f in (("base", 1.0), ("yarn", 2.0))])
    prompts = passkey_rows({("base", 1.0): {4096: 0.9, 8192: 0.3}}, trials=5)
    store.append("passkey", prompts.to_dict("records"))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # `import torch` now raises ImportError
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        from evalharness import method_facts, report
        from evalharness.analysis import display, stats
        from evalharness.passkey import analysis as passkey_analysis
        from evalharness.perplexity import analysis as perplexity_analysis, figures as perplexity_figures
        from evalharness.results import read_table
        facts = method_facts.METHOD_FACTS
        assert facts["yarn"].uses_factor and facts["dynamic-yarn"].dynamic and not facts["base"].uses_factor
        assert abs(method_facts.yarn_mscale(4.0) - (0.1 * __import__("math").log(4.0) + 1)) < 1e-15
        assert display.method_display("yarn", 2.0) == "YaRN s=2"
        assert display.method_display("dynamic-ntk", 1.0) == "Dynamic-NTK"
        assert stats.wilson_interval(0, 10)[0] == 0.0
        ppl = perplexity_analysis.load_perplexity({str(tmp_path / 'run')!r})
        assert len(ppl) == 4, ppl
        assert passkey_analysis.passkey_effective_context(read_table({str(tmp_path / 'run')!r}, "passkey"))[
            "effective_context"].tolist() == [4096.0]
        figure = perplexity_figures.plot_perplexity(ppl)
        assert [line.get_label() for line in figure.axes[0].lines if line.get_gid() == "series"] == [
            "Base", "YaRN s=2"]
        text = report.build_report({str(tmp_path / 'run')!r})
        assert "## Passkey retrieval" in text and "Ratio to Base" in text
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_registry_facts_agree_with_the_methods_that_use_them():
    from evalharness.methods import METHODS, ScalingSpec

    assert list(METHODS) == list(METHOD_FACTS)
    for name, facts in METHOD_FACTS.items():
        entry = METHODS[name]
        assert entry.facts is facts
        # a method that reads the factor keeps it; the others are normalised to 1 in result rows
        assert (ScalingSpec(name, factor=2.0, original_ctx=64).factor == 2.0) == facts.uses_factor
        assert ScalingSpec(name, factor=2.0, original_ctx=64).is_dynamic == facts.dynamic
    # the attention factor of the math is the facts' formula
    from evalharness.methods import rope_frequencies

    _, attention = rope_frequencies(ScalingSpec("yarn", 4.0, original_ctx=64), 8, 10000.0)
    assert attention == pytest.approx(yarn_mscale(4.0)) == pytest.approx(0.1 * math.log(4) + 1)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, factor, expected", [
    ("base", 1.0, "Base"), ("pi", 2.0, "PI s=2"), ("ntk", 2.0, "NTK s=2"),
    ("ntk-by-parts", 2.0, "NTK-by-parts s=2"),
    ("yarn", 2.0, "YaRN s=2"), ("yarn", 2.5, "YaRN s=2.5"), ("dynamic-yarn", 1.0, "Dynamic-YaRN"),
    ("dynamic-ntk", 1.0, "Dynamic-NTK"),
    ("yarn:attention_factor=1.1", 4.0, "YaRN s=4 (attention_factor=1.1)"),
    ("mystery", 1.0, "mystery"), ("mystery", 3.0, "mystery s=3"),
])
def test_method_display(method, factor, expected):
    assert method_display(method, factor) == expected


def test_series_come_in_registry_order_and_references_parse():
    frame = pd.DataFrame({"method": ["dynamic-yarn", "yarn", "base", "yarn", "pi"],
                          "factor": [1.0, 4.0, 1.0, 2.0, 2.0], "x": range(5)})
    order = [(k["method"], k["factor"]) for k, _ in ordered_groups(frame, ["method", "factor"])]
    assert order == [("base", 1.0), ("pi", 2.0), ("yarn", 2.0), ("yarn", 4.0), ("dynamic-yarn", 1.0)]
    assert parse_reference("base") == ("base", None)
    assert parse_reference("yarn:2") == ("yarn", 2.0)
    assert parse_reference("yarn:2:attention_factor=1.1") == ("yarn:attention_factor=1.1", 2.0)
    with pytest.raises(ValueError, match="not a factor"):
        parse_reference("yarn:two")
    assert task_display("arc_challenge_local") == "ARC-c (local)"
    assert task_display("hellaswag") == "HellaSwag"
    tasks = sorted(["mmlu", "other", "arc_challenge_local"], key=task_sort_key)
    assert tasks == ["arc_challenge_local", "mmlu", "other"]


# ---------------------------------------------------------------------------------------------
# Statistics against direct computations
# ---------------------------------------------------------------------------------------------

def naive_percentile(values, level=0.95):
    values = sorted(values)
    b = len(values)
    return values[math.floor(0.025 * (b - 1))], values[math.ceil(0.975 * (b - 1))]


def test_bootstrap_ppl_interval_is_the_seeded_percentile_bootstrap_over_documents():
    nll, tokens = [100.0 + 13.7 * i + 40 * (i % 3) for i in range(12)], [100 + 7 * i for i in range(12)]
    rng = random.Random(7)
    values = []
    for _ in range(1000):
        picks = [rng.randrange(12) for _ in range(12)]
        values.append(math.exp(sum(nll[i] for i in picks) / sum(tokens[i] for i in picks)))
    assert bootstrap_ppl_interval(nll, tokens, seed=7) == naive_percentile(values)  # identical, not approx
    assert bootstrap_ppl_interval(nll, tokens, seed=7) != bootstrap_ppl_interval(nll, tokens, seed=8)
    assert bootstrap_ppl_interval([50.0], [25], seed=0) == (math.exp(2), math.exp(2))


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (2, 3), (7, 20), (1, 1)])
def test_wilson_interval_solves_the_score_equation(k, n):
    # The Wilson bounds are the roots p of (p̂ − p)² = z²·p(1−p)/n, i.e. of
    # (1 + z²/n)·p² − (2p̂ + z²/n)·p + p̂² = 0.
    p_hat = k / n
    a, b, c = 1 + Z95 ** 2 / n, -(2 * p_hat + Z95 ** 2 / n), p_hat ** 2
    root = math.sqrt(b * b - 4 * a * c)
    expected = ((-b - root) / (2 * a), (-b + root) / (2 * a))
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)


def test_wilson_interval_worked_by_hand():
    # 0 of 10: low = 0, high = z²/(n + z²) = 3.84146/13.84146
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277532), abs=1e-6)
    # 2 of 3: z² = 3.841459; centre (2/3 + z²/6)/(1 + z²/3) = 1.306910/2.280486 = 0.573084,
    # half z·√(2/27 + z²/36)/(1 + z²/3) = 1.959964·0.425184/2.280486 = 0.365425
    assert wilson_interval(2, 3) == pytest.approx((0.207660, 0.938508), abs=2e-6)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(7, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(7, 20) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_paired_ppl_ratio_matches_a_naive_loop_with_the_same_seed():
    nll_a, tok_a = [120.0, 260.0, 85.0, 390.0, 160.0, 70.0], [100, 120, 80, 300, 90, 60]
    nll_b, tok_b = [110.0, 270.0, 80.0, 400.0, 150.0, 75.0], [100, 120, 80, 300, 90, 60]
    ratio, low, high = paired_ppl_ratio_interval(nll_a, tok_a, nll_b, tok_b, seed=3)
    direct = math.exp(sum(nll_a) / sum(tok_a)) / math.exp(sum(nll_b) / sum(tok_b))
    assert ratio == pytest.approx(direct, rel=1e-12)
    rng = random.Random(3)
    ratios = []
    for _ in range(1000):
        picks = [rng.randrange(6) for _ in range(6)]
        ppl_a = math.exp(sum(nll_a[i] for i in picks) / sum(tok_a[i] for i in picks))
        ppl_b = math.exp(sum(nll_b[i] for i in picks) / sum(tok_b[i] for i in picks))
        ratios.append(ppl_a / ppl_b)
    assert (low, high) == pytest.approx(naive_percentile(ratios), rel=1e-12)
    assert low <= ratio <= high


def test_pairing_cancels_the_documents_own_difficulty():
    # The method is 2 % better on every token of every document; documents differ a lot.
    tokens = [100, 400, 50, 250]
    nll_b = [100.0, 900.0, 20.0, 600.0]
    nll_a = [x + math.log(0.98) * t for x, t in zip(nll_b, tokens)]
    ratio, low, high = paired_ppl_ratio_interval(nll_a, tokens, nll_b, tokens, seed=0)
    assert (ratio, low, high) == pytest.approx((0.98, 0.98, 0.98), rel=1e-12)
    unpaired = bootstrap_ppl_interval(nll_a, tokens, seed=0)
    assert unpaired[1] / unpaired[0] > 1.5  # each method alone is very uncertain
    with pytest.raises(ValueError, match="differ in length"):
        paired_ppl_ratio_interval(nll_a, tokens, nll_b[:3], tokens[:3], seed=0)


def test_paired_accuracy_difference_matches_a_naive_loop_with_the_same_seed():
    a = [1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    b = [1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0]
    diff, low, high = paired_accuracy_difference_interval(a, b, seed=11)
    assert diff == pytest.approx(sum(a) / 12 - sum(b) / 12)
    rng = random.Random(11)
    diffs = []
    for _ in range(1000):
        picks = [rng.randrange(12) for _ in range(12)]
        diffs.append(sum(a[i] for i in picks) / 12 - sum(b[i] for i in picks) / 12)
    assert (low, high) == pytest.approx(naive_percentile(diffs), abs=1e-12)
    assert paired_accuracy_difference_interval(a, a, seed=0) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Perplexity tables
# ---------------------------------------------------------------------------------------------

def test_aggregate_is_token_weighted_and_keeps_the_authors_mean():
    docs = pd.DataFrame([doc_row("a", 128, 100, 200.0, window_nll_sum=6.0),
                         doc_row("b", 128, 300, 300.0, window_nll_sum=3.0)])
    (row,) = aggregate_perplexity(docs).to_dict("records")
    assert row["n_docs"] == 2 and row["scored_tokens"] == 400 and row["n_windows"] == 6
    assert row["ppl"] == pytest.approx(math.exp(500 / 400))  # not the mean of exp(2) and exp(1)
    assert row["ppl_paper"] == pytest.approx(math.exp(9 / 6))  # mean over all 6 windows
    expected = bootstrap_ppl_interval([200.0, 300.0], [100, 300], seed=0)
    assert (row["ppl_ci_low"], row["ppl_ci_high"]) == expected
    assert list(aggregate_perplexity(docs).columns) == SCHEMAS["perplexity"]


def test_perplexity_ratios_pair_documents_with_the_reference():
    rows = []
    for length in (128, 256):
        for doc, (tokens, base_nll) in {"a": (100, 200.0), "b": (300, 450.0), "c": (50, 90.0)}.items():
            rows.append(doc_row(doc, length, tokens, base_nll, method="base", factor=1.0))
            rows.append(doc_row(doc, length, tokens, base_nll * 0.9, method="yarn", factor=2.0))
            if doc != "c":  # pi lacks document c: only a and b pair
                rows.append(doc_row(doc, length, tokens, base_nll * 1.1, method="pi", factor=2.0))
    docs = pd.DataFrame(rows)
    ratios = perplexity_ratios(docs, reference="base")
    cells = [(r.method, r.context_length) for r in ratios.itertuples()]
    assert cells == [("pi", 128), ("pi", 256), ("yarn", 128), ("yarn", 256)]
    pi = ratios[ratios["method"] == "pi"].iloc[0]
    assert pi["n_docs"] == 2
    assert pi["ratio"] == pytest.approx(math.exp(1.1 * 650 / 400) / math.exp(650 / 400))
    yarn = ratios[ratios["method"] == "yarn"].iloc[0]
    assert yarn["n_docs"] == 3 and yarn["ratio"] == pytest.approx(math.exp(-0.1 * 740 / 450))
    assert yarn["ratio_ci_low"] <= yarn["ratio"] <= yarn["ratio_ci_high"] < 1
    # against pi as the reference, base is now a row and pi is not
    assert set(perplexity_ratios(docs, reference="pi:2")["method"]) == {"base", "yarn"}
    assert perplexity_ratios(docs, reference="ntk").empty
    twice = pd.concat([docs, docs.assign(factor=4.0)[docs["method"] == "yarn"]])
    with pytest.raises(ValueError, match="more than one series"):
        perplexity_ratios(twice, reference="yarn")


def test_pivot_by_length_has_series_rows_in_display_order():
    frame = pd.DataFrame([dict(model="m", method=m, factor=f, original_ctx=64, context_length=n, ppl=v)
                          for m, f, v0 in (("yarn", 2.0, 5.0), ("base", 1.0, 9.0)) for n, v in ((256, v0 + 1),
                                                                                                 (128, v0))])
    pivot = pivot_by_length(frame, "ppl")
    assert list(pivot.columns) == [128, 256]
    assert [key[1] for key in pivot.index] == ["base", "yarn"]
    assert pivot.to_numpy().tolist() == [[9.0, 10.0], [5.0, 6.0]]


# ---------------------------------------------------------------------------------------------
# Passkey tables
# ---------------------------------------------------------------------------------------------

CURVES = {("yarn", 16.0): {8192: 1.0, 16384: 0.9, 32768: 0.8, 65536: 0.3},
          ("base", 1.0): {8192: 0.5, 16384: 0.0, 32768: 0.0, 65536: 0.0},
          ("pi", 2.0): {8192: 0.7, 16384: 0.9, 32768: 0.1, 65536: 0.0}}


def test_passkey_accuracy_counts_prompts_with_wilson_intervals():
    frame = passkey_rows(CURVES)
    acc = passkey_accuracy(frame, by=("context_length",))
    assert [(k["method"], k["factor"]) for k, _ in ordered_groups(acc, ["method", "factor"])] == [
        ("base", 1.0), ("pi", 2.0), ("yarn", 16.0)]
    assert (acc["n"] == 10).all() and len(acc) == 12
    yarn = acc[acc["method"] == "yarn"].set_index("context_length")
    assert yarn["accuracy"].to_dict() == pytest.approx({8192: 1.0, 16384: 0.9, 32768: 0.8, 65536: 0.3})
    assert yarn.loc[65536, "correct"] == 3
    assert (yarn.loc[65536, "ci_low"], yarn.loc[65536, "ci_high"]) == wilson_interval(3, 10)
    overall = passkey_accuracy(frame, by=()).set_index("method")
    assert overall.loc["yarn", "n"] == 40 and overall.loc["yarn", "accuracy"] == pytest.approx(30 / 40)
    # CSV text ("True"/"False") must not all read as True
    as_text = frame.assign(correct=frame["correct"].map(str))
    assert passkey_accuracy(as_text).equals(passkey_accuracy(frame))


def test_effective_context_is_the_longest_length_at_or_above_80_percent():
    ctx = passkey_effective_context(passkey_rows(CURVES)).set_index("method")
    assert ctx.loc["yarn", "effective_context"] == 32768
    assert ctx.loc["yarn", "accuracy_at_context"] == pytest.approx(0.8)
    assert ctx.loc["pi", "effective_context"] == 16384  # the longest passing length, not the first failure
    assert math.isnan(ctx.loc["base", "effective_context"])
    assert math.isnan(ctx.loc["base", "accuracy_at_context"])
    assert (ctx["max_length_tested"] == 65536).all()
    assert passkey_effective_context(passkey_rows(CURVES), threshold=0.95).set_index("method").loc[
        "yarn", "effective_context"] == 8192


def test_passkey_differences_pair_the_same_prompts():
    frame = passkey_rows({("base", 1.0): {4096: 0.5}, ("yarn", 2.0): {4096: 0.8}}, depths=(0.0, 1.0))
    (row,) = passkey_differences(frame, reference="base", seed=0).to_dict("records")
    assert row["method"] == "yarn" and row["n"] == 20 and row["difference"] == pytest.approx(0.3)
    pairs = frame.pivot_table(index=["depth", "trial"], columns="method", values="correct", aggfunc="first")
    expected = paired_accuracy_difference_interval(pairs["yarn"].astype(float).tolist(),
                                                     pairs["base"].astype(float).tolist(), seed=0)
    assert (row["difference"], row["difference_ci_low"], row["difference_ci_high"]) == pytest.approx(expected)
    # every prompt yarn gets right base gets right too: the difference is never negative
    assert row["difference_ci_low"] >= 0


def test_rerotated_rows_pair_with_the_reference_paper_rows_and_teacher_forced_ones_do_not():
    frame = passkey_rows({("base", 1.0): {4096: 0.5}, ("dynamic-yarn", 1.0): {4096: 0.8}}, depths=(0.0, 1.0))
    dynamic = frame["method"] == "dynamic-yarn"
    mixed = pd.concat([frame.assign(scoring=np.where(dynamic, "paper-rerotate", "paper")),
                       frame[dynamic].assign(scoring="teacher-forced")])
    rows = passkey_differences(mixed, reference="base", seed=0)
    (row,) = rows.to_dict("records")
    assert row["scoring"] == "paper-rerotate" and row["n"] == 20 and row["difference"] == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------
# Leaderboard tables
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Attention temperature
# ---------------------------------------------------------------------------------------------

def test_temperature_sweep_curves_have_their_minimum_and_the_formula():
    rows = []
    for s, best in ((2.0, 1.1), (4.0, 1.2)):
        for x in (1.0, 1.1, 1.2, 1.3):
            for length in (128, 256):
                value = 10 + 100 * (x - best) ** 2 if length == 256 else 50.0
                rows.append(dict(model="m", method=f"yarn:attention_factor={x}", factor=s, original_ctx=64,
                                 dataset="d", protocol="truncated", context_length=length, ppl=value))
        rows.append(dict(model="m", method="yarn", factor=s, original_ctx=64, dataset="d",
                         protocol="truncated", context_length=256, ppl=7.0 + s))
    rows.append(dict(model="m", method="base", factor=1.0, original_ctx=64, dataset="d", protocol="truncated",
                     context_length=256, ppl=30.0))
    length, curves = temperature_sweep(pd.DataFrame(rows))
    assert length == 256  # the largest length every s has
    assert [(k["factor"]) for k, _ in ordered_groups(curves, ["factor", "variant"])] == [2.0, 4.0]
    two = curves[curves["factor"] == 2.0]
    assert two["sqrt_inv_t"].tolist() == pytest.approx(sorted([1.0, 1.1, 1.2, 1.3, 0.1 * math.log(2) + 1]))
    assert (two["formula"] == yarn_mscale(2.0)).all()
    # plain `yarn` sits at the formula's √(1/t) with its own perplexity, and is the minimum here
    (best,) = two[two["best"]].to_dict("records")
    assert best["sqrt_inv_t"] == pytest.approx(0.1 * math.log(2) + 1) and best["value"] == 9.0
    four = curves[(curves["factor"] == 4.0) & curves["best"]]
    assert four["value"].item() == 10.0 and four["sqrt_inv_t"].item() == pytest.approx(1.2)
    length, at_128 = temperature_sweep(pd.DataFrame(rows), context_length=128)
    assert length == 128 and (at_128["value"] == 50.0).all()
    assert temperature_sweep(pd.DataFrame(rows[-1:]))[1].empty  # base only: nothing to sweep
    assert temperature_sweep(pd.DataFrame(rows), context_length=512)[1].empty


def test_subject_rows_stay_out_of_leaderboard_summaries():
    frame = pd.DataFrame({"task": ["mmlu_local", "mmlu_local_anatomy", "mmlu_local_virology", "arc_challenge_local",
                                   "truthfulqa_mc1_local", "truthfulqa_mc2_local"],
                          "metric": ["acc_macro", "acc", "acc", "acc_norm", "acc", "acc"]})
    kept = without_subtasks(frame)
    assert list(kept["task"]) == ["mmlu_local", "arc_challenge_local", "truthfulqa_mc1_local", "truthfulqa_mc2_local"]


def test_report_compares_with_every_reference_given_on_the_command_line(tmp_path, capsys):
    from evalharness import cli

    # two documents, three series; nll sums chosen so the ratios are worked by hand:
    # ratio(yarn / ntk) = exp(Σ nll_yarn / Σ tok − Σ nll_ntk / Σ tok) = exp((200 + 220 − 210 − 230) / 200)
    nll = {("base", 1.0): (300.0, 320.0), ("ntk", 2.0): (210.0, 230.0), ("yarn", 2.0): (200.0, 220.0)}
    store = ResultStore(tmp_path / "run")
    store.append("perplexity_docs", [doc_row(d, 128, 100, sums[i], method=m, factor=f)
                                     for (m, f), sums in nll.items() for i, d in enumerate("ab")])
    store.replace("perplexity", aggregate_perplexity(read_table(tmp_path / "run", "perplexity_docs")))
    assert cli.main(["plot", str(tmp_path / "run"), "--reference", "ntk:2,pi:7"]) == 0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "Ratio to Base on the same documents" in text
    block = text.split("Ratio to NTK s=2 on the same documents:")[1].split("\n\n", 3)[2]
    yarn_row = next(line for line in block.splitlines() if line.startswith("| YaRN s=2 |"))
    assert yarn_row.startswith(f"| YaRN s=2 | {math.exp(-20 / 200):.3f} [")
    assert "| NTK s=2 |" not in block  # the reference itself is not a row of its own table
    assert "No perplexity series matches --reference 'pi:7'." in text
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path / "run"), "--reference", "ntk:x"]) == 2
    assert "--reference: reference 'ntk:x': 'x' is not a factor" in capsys.readouterr().err


def test_end_of_run_summary_uses_the_report_labels_in_registry_order(tmp_path, capsys):

    store = ResultStore(tmp_path / "run")
    series = [("yarn", 2.0), ("base", 1.0), ("dynamic-yarn", 1.0), ("ntk", 2.0), ("pi", 2.0)]
    store.append("perplexity_docs", [doc_row("a", 128, 100, 150.0 + i, method=m, factor=f)
                                     for i, (m, f) in enumerate(series)])
    store.replace("perplexity", aggregate_perplexity(read_table(tmp_path / "run", "perplexity_docs")))
    store.append("passkey", passkey_rows({("yarn", 2.0): {4096: 1.0}, ("base", 1.0): {4096: 0.5}}).to_dict("records"))
    print_summary(store)
    lines = capsys.readouterr().out.splitlines()
    ppl_rows = [line.split()[0:3] for line in lines[lines.index("perplexity — d, sliding (token-weighted)") + 3:][:5]]
    assert [" ".join(r[:2]) if r[1].startswith("s=") else r[0] for r in ppl_rows] == [
        "Base", "PI s=2", "NTK s=2", "YaRN s=2", "Dynamic-YaRN"]
    # each row holds its own series' perplexity (nll 150 + i over 100 tokens)
    expected = {"Base": 151.0, "PI s=2": 154.0, "NTK s=2": 153.0, "YaRN s=2": 150.0, "Dynamic-YaRN": 152.0}
    for row in ppl_rows:
        label = " ".join(row[:2]) if row[1].startswith("s=") else row[0]
        assert float(row[-1] if row[1].startswith("s=") else row[1]) == pytest.approx(
            math.exp(expected[label] / 100), abs=5e-4)
    passkey = lines[lines.index(next(line for line in lines if line.startswith("passkey accuracy"))) + 3:]
    assert passkey[0].split()[0] == "Base" and passkey[1].split()[:2] == ["YaRN", "s=2"]
