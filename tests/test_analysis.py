"""The shared analysis (evalharness.analysis): labels and order, pivots, Wilson intervals, and that
tables and figures need no torch."""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from tables_data import doc_row, passkey_rows

from evalharness.analysis.display import method_display, ordered_groups, pivot_by_length, plural
from evalharness.analysis.stats import parse_reference, wilson_interval
from evalharness.leaderboard.analysis import task_display, task_sort_key
from evalharness.results import ResultStore

# ---- The tables layer: summaries and statistics against direct computations on hand-made tables.


ROOT = Path(__file__).resolve().parent.parent


Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


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


@pytest.mark.parametrize("method, factor, expected", [
    ("base", 1.0, "Base"), ("pi", 2.0, "PI s=2"), ("ntk", 2.0, "NTK s=2"),
    ("ntk-by-parts", 2.0, "NTK-by-parts s=2"),
    ("yarn", 2.0, "YaRN s=2"), ("yarn", 2.5, "YaRN s=2.5"), ("dynamic-yarn", 1.0, "Dynamic-YaRN"),
    ("dynamic-ntk", 1.0, "Dynamic-NTK"),
    ("yarn:attention_factor=1.1", 4.0, "YaRN s=4 (attention_factor=1.1)"),
    ("yarn:layers=all", 2.0, "YaRN s=2, local layers too"),
    ("yarn:attention_factor=1.1:layers=all", 2.0, "YaRN s=2, local layers too (attention_factor=1.1)"),
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


def test_pivot_by_length_has_series_rows_in_display_order():
    frame = pd.DataFrame([dict(model="m", method=m, factor=f, original_ctx=64, context_length=n, ppl=v)
                          for m, f, v0 in (("yarn", 2.0, 5.0), ("base", 1.0, 9.0)) for n, v in ((256, v0 + 1),
                                                                                                 (128, v0))])
    pivot = pivot_by_length(frame, "ppl")
    assert list(pivot.columns) == [128, 256]
    assert [key[1] for key in pivot.index] == ["base", "yarn"]
    assert pivot.to_numpy().tolist() == [[9.0, 10.0], [5.0, 6.0]]


def test_counts_read_as_words():
    assert plural(1, "prompt") == "1 prompt" and plural(3, "prompt") == "3 prompts"
    assert plural(0, "sample") == "0 samples"
