"""Perplexity next to the YaRN paper's published curves (the `compare` subcommand's perplexity part).

Contract: `compare(run, model, folder)` puts the run's `perplexity.csv` rows of a Proof-pile
(truncated) or GovReport (sliding) dataset next to the published curve of the same model at the same
context length: the run's `ppl_paper` (the authors' aggregation) when the table has it, else its
token-weighted `ppl`. `differs` names the settings in which the run's evaluation is not the authors'
evaluation of the dataset as its task file says (`PAPER_TASK_FILES`: `tasks/yarn-paper/govreport.yaml`,
sliding window with its stride, BOS placement, length filter and document count;
`tasks/yarn-paper/proofpile.yaml`, truncated, where stride and BOS placement are moot; the Solar and
70B Proof-pile curves, not in the authors' eval.sh, are taken to be the same by their name).
`window_bos`, `stride` and `n_docs` come from `perplexity.csv`; the document filter and whether the
documents were the first N or a random sample from the folder's `manifest.json` (the runs of that
dataset and protocol).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import taskfiles
from ..options import parse_count, parse_lengths
from ..paper import differs_text, lengths_text, method_text, model_key, published, setting_difference, with_rel_diff
from ..results import read_manifest

TABLE = "perplexity"
PUBLISHED = "Proof-pile/GovReport perplexity"
# The task files of the authors' evaluations behind the published numbers (module doc).
PAPER_TASK_FILES = {"proofpile": "yarn-paper/proofpile", "govreport": "yarn-paper/govreport"}


def dataset_key(name: str) -> str | None:
    """The published dataset a run's dataset name stands for: proofpile, govreport or None."""
    flat = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for key in ("proofpile", "govreport"):
        if key in flat:
            return key
    return None


def perplexity_selection(folder: Path | None, dataset: str, protocol: str) -> dict:
    """How the run in `folder` chose its documents for `dataset` and `protocol`, from the args its
    `manifest.json` records: `min_tokens` (the length filter, the CLI's default applied when none was
    given) and `sample` (True for a random sample, False for the first N). A value is None (unknown)
    when no recorded run of that dataset and protocol says it or the runs disagree."""
    from ..corpora import default_min_tokens  # corpora imports torch; this module needs none

    found: dict[str, set] = {"min_tokens": set(), "sample": set()}
    runs = read_manifest(folder / "manifest.json").get("runs", []) if folder is not None else []
    for run in runs:
        args = run.get("args") or {}
        if ("perplexity" not in str(args.get("tasks", "")).split(",") or args.get("protocol") != protocol
                or dataset_key(args.get("dataset", "")) != dataset):
            continue
        min_tokens = args.get("min_tokens")
        bos = (run.get("model_info") or {}).get("bos_token_id", "missing")
        if min_tokens is None and bos != "missing" and args.get("lengths"):
            min_tokens = default_min_tokens(protocol, parse_lengths(args["lengths"]), bos is not None)
        found["min_tokens"].add(min_tokens)
        found["sample"].add(args.get("sample") is not None if "sample" in args else None)
    return {name: next(iter(values)) if len(values) == 1 else None for name, values in found.items()}


def paper_perplexity(dataset: str) -> dict:
    """The authors' perplexity evaluation of a published dataset (proofpile, govreport), from its task
    file: `protocol`, `n_docs`, `min_tokens`, and for the sliding protocol `window_bos` and `stride`."""
    fields = taskfiles.load(PAPER_TASK_FILES[dataset]).fields
    paper = dict(protocol=str(fields["protocol"]), n_docs=int(fields["docs"]),
                 min_tokens=parse_count(str(fields["min_tokens"])))
    if paper["protocol"] == "sliding":
        paper.update(window_bos=str(fields["window_bos"]), stride=parse_count(str(fields["stride"])))
    return paper


def perplexity_differences(row: pd.Series, dataset: str, selection: dict) -> list[str]:
    """The settings of one `perplexity.csv` row (and its documents' `selection`) that are not the
    authors' evaluation of `dataset` (`paper_perplexity`)."""
    paper = paper_perplexity(dataset)
    found = []
    if paper["protocol"] == "sliding":
        found += setting_difference("window_bos", row.get("window_bos"), paper["window_bos"])
        found += setting_difference("stride", row.get("stride"), paper["stride"])
    found += setting_difference("docs", row.get("n_docs"), paper["n_docs"])
    if selection["sample"] is None:
        found.append("document choice unknown")
    elif selection["sample"]:
        found.append("docs a random sample (paper the first N)")
    found += setting_difference("min_tokens", selection["min_tokens"], paper["min_tokens"])
    return found


def compare(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """Rows of `perplexity.csv` next to the published curve of the same model, dataset and length,
    each with the settings in which the run's evaluation differs from the authors' (module doc)."""
    paper = published(TABLE)
    paper["key"] = paper["model"].map(model_key)
    value = "ppl_paper" if "ppl_paper" in run.columns else "ppl"
    rows, selections = [], {}
    for _, row in run.iterrows():
        key = model_key(model or row["model"])
        dataset = dataset_key(row["dataset"])
        match = paper[(paper.key == key) & (paper.dataset == dataset) & (paper.protocol == row["protocol"])
                      & (paper.context_length == int(row["context_length"]))]
        if match.empty:
            continue
        ref = match.iloc[0]
        if (dataset, row["protocol"]) not in selections:
            selections[dataset, row["protocol"]] = perplexity_selection(folder, dataset, row["protocol"])
        differs = perplexity_differences(row, dataset, selections[dataset, row["protocol"]])
        rows.append(dict(table=TABLE, model=ref["model"], method=method_text(row["method"], row["factor"]),
                         setting=f"{dataset} {row['protocol']} {int(row['context_length'])}", metric=value,
                         run=float(row[value]), paper=float(ref["ppl"]), differs=differs_text(differs),
                         paper_source=ref["source"]))
    return with_rel_diff(rows)


def mismatch_reason(run: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Why no published curve (`paper`: the published rows of the run's model) matches the run's
    `perplexity.csv`: the data set, protocol or lengths that differ (one clause)."""
    mine = {(dataset_key(d), str(p)) for d, p in zip(run["dataset"], run["protocol"])}
    published_at = {(d, str(p)) for d, p in zip(paper["dataset"], paper["protocol"])}
    if not {d for d, _ in mine} & {d for d, _ in published_at}:
        return (f"perplexity is published on {', '.join(sorted({d for d, _ in published_at}))}, this run "
                f"measured {', '.join(sorted(str(d) for d, _ in mine))}")
    clauses = []
    for dataset, protocol in sorted(mine, key=str):
        same = paper[(paper["dataset"] == dataset) & (paper["protocol"] == protocol)]
        if same.empty:
            others = sorted(set(paper.loc[paper["dataset"] == dataset, "protocol"]))
            clauses.append(f"{dataset} perplexity is published with the {', '.join(others)} protocol, this run "
                           f"used {protocol}")
            continue
        lengths = run.loc[(run["dataset"].map(dataset_key) == dataset) & (run["protocol"] == protocol),
                          "context_length"]
        clauses.append(f"{dataset} {protocol} perplexity is published at {lengths_text(same['context_length'])} "
                       f"tokens, this run measured {lengths_text(lengths)}")
    return "; ".join(clauses)
