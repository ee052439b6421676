"""Convert the YaRN authors' published result files into the tidy tables `run_eval.py compare` reads.

    python scripts/convert_paper_results.py PAPER_RESULTS_DIR [evalharness/paper_data]

PAPER_RESULTS_DIR holds the authors' files (MIT licence, Copyright (c) 2023 Jeffrey Quesnelle and
Bowen Peng): perplexity curves `proofpile-long-small*.csv` and `govreport.csv` (one row per model,
one column per context length) and lm-eval 0.3 JSONs `<model>-<arc|hellaswag|mmlu|truthfulqa>.json`.
Written: `perplexity.csv` (model, dataset, protocol, context_length, ppl, source),
`leaderboard.csv` (model, task, metric, value, stderr, num_fewshot, n_subtasks, n_samples, source) in
the harness's task/metric names, and the licence. `leaderboard.csv` also gets the baseline rows of
the paper's Table 3 (`TABLE3_BASELINES`, typed in from the paper's text: no result file was published
for them). Run once by a maintainer; the package never reads PAPER_RESULTS_DIR.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

# lm-eval 0.3 file suffix → (harness task, harness metric, result key(s), metric key in the JSON)
LEADERBOARD_FILES = {
    "arc": ("arc_challenge", "acc_norm", "arc_challenge", "acc_norm"),
    "hellaswag": ("hellaswag", "acc_norm", "hellaswag", "acc_norm"),
    "mmlu": ("mmlu", "acc_macro", "hendrycksTest-", "acc"),  # unweighted mean over the subjects
    "truthfulqa": ("truthfulqa_mc2", "acc", "truthfulqa_mc", "mc2"),
}
# Table 3 of the paper (arXiv 2309.00071, "Performance of context window extensions methods on the Hugging
# Face Open LLM benchmark suite"), the rows of models the authors published no lm-eval JSON for, as
# printed there (percent, one decimal): ARC-c, HellaSwag, MMLU, TruthfulQA. The YaRN rows of the table
# are the JSONs' numbers cut (not rounded) to one decimal, so they come from the JSONs instead.
TABLE3_SOURCE = "paper Table 3 (arXiv 2309.00071)"
TABLE3_BASELINES = {
    "meta-llama/Llama-2-7b-hf": (53.1, 77.8, 43.8, 39.0),  # "Llama 2", 7B, 4k, no extension
    "togethercomputer/LLaMA-2-7B-32K": (47.6, 76.1, 43.3, 39.2),  # "Together", 32k, PI
    "NousResearch/CodeLlama-7b-hf": (39.9, 60.8, 31.1, 37.8),  # "Code Llama", 7B, 100k, NTK
    "meta-llama/Llama-2-13b-hf": (59.4, 82.1, 55.8, 37.4),  # "Llama 2", 13B
    "NousResearch/CodeLlama-13b-hf": (40.9, 63.4, 32.8, 43.8),  # "Code Llama", 13B
}
TABLE3_COLUMNS = ("arc", "hellaswag", "mmlu", "truthfulqa")  # the table's column order, as file suffixes
TASK_SHOTS = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}  # paper §4.3.3
PERPLEXITY_FILES = {"proofpile-long-small": ("proofpile", "truncated"), "govreport": ("govreport", "sliding")}


def perplexity_rows(folder: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(folder.glob("*.csv")):
        prefix = next((p for p in PERPLEXITY_FILES if path.stem.startswith(p)), None)
        if prefix is None:
            continue
        dataset, protocol = PERPLEXITY_FILES[prefix]
        wide = pd.read_csv(path, index_col=0)
        long = wide.reset_index(names="model").melt(id_vars="model", var_name="context_length", value_name="ppl")
        long = long.dropna(subset=["ppl"])
        frames.append(long.assign(dataset=dataset, protocol=protocol, source=path.name))
    table = pd.concat(frames, ignore_index=True)
    table["context_length"] = table["context_length"].astype(int)
    # the same model appears in two files (Mistral-7B-v0.1, Yarn-Mistral-7b-*): keep the first, with org
    table["key"] = table["model"].str.rsplit("/", n=1).str[-1].str.lower()
    table = table.sort_values("model", key=lambda s: ~s.str.contains("/"), kind="stable")
    table = table.drop_duplicates(["key", "dataset", "protocol", "context_length"]).drop(columns="key")
    columns = ["model", "dataset", "protocol", "context_length", "ppl", "source"]
    return table[columns].sort_values(["dataset", "model", "context_length"]).reset_index(drop=True)


def evaluated_size(results: dict) -> int:
    """How many examples the JSON's numbers average over, recovered from a 0/1 metric's stderr: lm-eval
    0.3 reports stderr = sqrt(p(1 − p) / (n − 1)) (sample standard deviation over sqrt(n)), so
    n = p(1 − p) / stderr² + 1, summed over the subtasks (`acc`, or TruthfulQA's `mc1`)."""
    total = 0.0
    for entry in results.values():
        metric = "acc" if "acc" in entry else "mc1"
        p, stderr = entry[metric], entry[f"{metric}_stderr"]
        total += p * (1 - p) / stderr**2 + 1
    if abs(total - round(total)) > 0.01:
        raise ValueError(f"the stderrs give a non-integer evaluated size {total}")
    return round(total)


def table3_rows(sizes: dict[str, int]) -> list[dict]:
    """`TABLE3_BASELINES` as fractions (the harness's unit) with the task's full evaluation size."""
    rows = []
    for model, percents in TABLE3_BASELINES.items():
        for suffix, percent in zip(TABLE3_COLUMNS, percents):
            task, metric, result_key, _ = LEADERBOARD_FILES[suffix]
            rows.append(dict(model=model, task=task, metric=metric, value=round(percent / 100, 4), stderr=None,
                             num_fewshot=TASK_SHOTS[task], n_subtasks=57 if result_key.endswith("-") else 1,
                             n_samples=sizes[task], source=TABLE3_SOURCE))
    return rows


def leaderboard_rows(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("*.json")):
        model, _, suffix = path.stem.rpartition("-")
        task, metric, result_key, json_metric = LEADERBOARD_FILES[suffix]
        data = json.loads(path.read_text())
        results = {k: v for k, v in data["results"].items()
                   if (k.startswith(result_key) if result_key.endswith("-") else k == result_key)}
        values = [r[json_metric] for r in results.values()]
        value = sum(values) / len(values)
        stderr = None if len(values) > 1 else next(iter(results.values())).get(f"{json_metric}_stderr")
        rows.append(dict(model=model, task=task, metric=metric, value=value, stderr=stderr,
                         num_fewshot=data["config"]["num_fewshot"], n_subtasks=len(values),
                         n_samples=evaluated_size(results), source=path.name))
        if data["config"]["limit"] is not None or data["config"]["num_fewshot"] != TASK_SHOTS[task]:
            raise ValueError(f"{path.name} is not a full-set {TASK_SHOTS[task]}-shot run")
    sizes = {}
    for row in rows:
        if sizes.setdefault(row["task"], row["n_samples"]) != row["n_samples"]:
            raise ValueError(f"the JSONs disagree on the size of {row['task']}")
    rows += table3_rows(sizes)
    return pd.DataFrame(rows).sort_values(["model", "task"]).reset_index(drop=True)


def main(argv: list[str]) -> None:
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "evalharness" / "paper_data"
    out.mkdir(parents=True, exist_ok=True)
    perplexity_rows(source).to_csv(out / "perplexity.csv", index=False)
    leaderboard_rows(source).to_csv(out / "leaderboard.csv", index=False)
    shutil.copyfile(source / "LICENSE", out / "LICENSE")


if __name__ == "__main__":
    main(sys.argv[1:])
