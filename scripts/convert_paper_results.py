"""Convert the YaRN authors' published result files into the tidy tables `run_eval.py compare` reads.

    python scripts/convert_paper_results.py PAPER_RESULTS_DIR [evalharness/paper_data]

PAPER_RESULTS_DIR holds the authors' files (MIT licence, Copyright (c) 2023 Jeffrey Quesnelle and
Bowen Peng): perplexity curves `proofpile-long-small*.csv` and `govreport.csv` (one row per model,
one column per context length) and lm-eval 0.3 JSONs `<model>-<arc|hellaswag|mmlu|truthfulqa>.json`.
Written: `perplexity.csv` (model, dataset, protocol, context_length, ppl, source),
`leaderboard.csv` (model, task, metric, value, stderr, num_fewshot, n_subtasks, source) in the
harness's task/metric names, and the licence. Run once by a maintainer; the package never reads
PAPER_RESULTS_DIR.
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
                         num_fewshot=data["config"]["num_fewshot"], n_subtasks=len(values), source=path.name))
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
