"""The YaRN paper's published numbers, and a run's tables put next to them.

Contract: `published(kind)` reads the package data in `evalharness/paper_data/` (converted once from
the authors' MIT-licensed result files by `scripts/convert_paper_results.py`; see its README for
the attribution); nothing outside the package is read. `compare_run(folder)` matches the run's
model to a published model by name — the last path component, case-insensitive, so
`NousResearch/Yarn-Llama-2-7b-64k`, `/models/Yarn-Llama-2-7b-64k` and the authors' file stem
`Yarn-Llama-2-7b-64k` are the same model — and returns one row per number both have:

- perplexity: the run's `perplexity.csv` rows of a Proof-pile (truncated) or GovReport (sliding)
  dataset against the published curve at the same context length. The run's `ppl_paper` (the
  authors' aggregation) when the table has it, else its token-weighted `ppl`;
- passkey: the run's effective passkey context (`tables.passkey_effective_context`) against Table 5;
- leaderboard: the run's `leaderboard.csv` metric against the published lm-eval number of the same
  task and metric (`arc_challenge` acc_norm, `hellaswag` acc_norm, `mmlu` acc_macro,
  `truthfulqa_mc2` acc; offline mirrors `*_local` count as their task).

`rel_diff` = (run − paper) / paper.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd

PAPER_DATA = "paper_data"
COLUMNS = ["table", "model", "method", "setting", "metric", "run", "paper", "rel_diff", "paper_source"]
KINDS = ("perplexity", "leaderboard", "passkey")


class CompareError(ValueError):
    """A run folder that cannot be compared (missing, no tables, no published model of that name)."""


def published(kind: str) -> pd.DataFrame:
    """The shipped table `paper_data/<kind>.csv` (kind: perplexity, leaderboard, passkey)."""
    if kind not in KINDS:
        raise ValueError(f"unknown published table {kind!r}; valid: {', '.join(KINDS)}.")
    with resources.files(__package__).joinpath(PAPER_DATA, f"{kind}.csv").open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


def model_key(name: str) -> str:
    """`NousResearch/Yarn-Llama-2-7b-64k` → `yarn-llama-2-7b-64k` (last path component, lower case)."""
    return re.split(r"[\\/]", str(name).strip().rstrip("/\\"))[-1].lower()


def dataset_key(name: str) -> str | None:
    """The published dataset a run's dataset name stands for: proofpile, govreport or None."""
    flat = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for key in ("proofpile", "govreport"):
        if key in flat:
            return key
    return None


def published_models() -> list[str]:
    names = pd.concat([published(kind)["model"] for kind in KINDS])
    return sorted({model_key(n) for n in names})


def _method_text(method: str, factor) -> str:
    """`yarn s=16`, `base`, `native (yarn s=16)`: the run's method as a reader names it."""
    from .methods import METHODS, native_display

    name = str(method).split(":")[0]
    if name == "native":
        return native_display(str(method).partition("rope_type=")[2] or None, factor)
    if name in METHODS and METHODS[name].uses_factor:
        return f"{method} s={float(factor):g}"
    return str(method)


def _with_rel_diff(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rel_diff"])
    frame["rel_diff"] = (frame["run"] - frame["paper"]) / frame["paper"]
    return frame[COLUMNS]


def compare_perplexity(run: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Rows of `perplexity.csv` next to the published curve of the same model, dataset and length."""
    paper = published("perplexity")
    paper["key"] = paper["model"].map(model_key)
    value = "ppl_paper" if "ppl_paper" in run.columns else "ppl"
    rows = []
    for _, row in run.iterrows():
        key = model_key(model or row["model"])
        dataset = dataset_key(row["dataset"])
        match = paper[(paper.key == key) & (paper.dataset == dataset) & (paper.protocol == row["protocol"])
                      & (paper.context_length == int(row["context_length"]))]
        if match.empty:
            continue
        ref = match.iloc[0]
        rows.append(dict(table="perplexity", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=f"{dataset} {row['protocol']} {int(row['context_length'])}", metric=value,
                         run=float(row[value]), paper=float(ref["ppl"]), paper_source=ref["source"]))
    return _with_rel_diff(rows)


def compare_passkey(run: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The run's passkey context (per method) next to the paper's Table 5."""
    from .tables import passkey_effective_context

    paper = published("passkey")
    paper["key"] = paper["model"].map(model_key)
    rows = []
    for _, row in passkey_effective_context(run).iterrows():
        match = paper[(paper.key == model_key(model or row["model"])) & (paper.metric == "passkey_context")]
        if match.empty:
            continue
        ref = match.iloc[0]
        rows.append(dict(table="passkey", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=f"lengths ≤ {int(row['max_length_tested'])}", metric="passkey_context",
                         run=float(row["effective_context"]), paper=float(ref["value"]), paper_source=ref["source"]))
    return _with_rel_diff(rows)


def compare_leaderboard(run: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """Rows of `leaderboard.csv` next to the published lm-eval number of the same task and metric."""
    paper = published("leaderboard")
    paper["key"] = paper["model"].map(model_key)
    rows = []
    for _, row in run.iterrows():
        task = str(row["task"]).removesuffix("_local")
        match = paper[(paper.key == model_key(model or row["model"])) & (paper.task == task)
                      & (paper.metric == row["metric"])]
        if match.empty:
            continue
        ref = match.iloc[0]
        rows.append(dict(table="leaderboard", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=f"{task} ({int(ref['num_fewshot'])}-shot)", metric=row["metric"],
                         run=float(row["value"]), paper=float(ref["value"]), paper_source=ref["source"]))
    return _with_rel_diff(rows)


COMPARERS = {"perplexity": compare_perplexity, "passkey": compare_passkey, "leaderboard": compare_leaderboard}


def compare_run(folder: str | Path, model: str | None = None) -> pd.DataFrame:
    """Every number of the run in `folder` that the paper also published (see the module doc).
    `model` compares the run as that published model (e.g. a local copy under another name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"run folder {str(folder)!r} does not exist; give a run's --out folder.")
    tables = {kind: folder / f"{kind}.csv" for kind in COMPARERS if (folder / f"{kind}.csv").is_file()}
    if not tables:
        raise CompareError(f"run folder {str(folder)!r} has no perplexity.csv, passkey.csv or leaderboard.csv.")
    frames, names = [], set()
    for kind, path in tables.items():
        run = pd.read_csv(path)
        if run.empty:
            continue
        names |= set(run["model"].astype(str))
        frames.append(COMPARERS[kind](run, model))
    found = [f for f in frames if not f.empty]
    if not found:
        asked = model or ", ".join(sorted(names)) or "(no rows)"
        raise CompareError(f"no published number matches model {asked} in this run's tables; published models: "
                           f"{', '.join(published_models())} (Proof-pile/GovReport perplexity, passkey, leaderboard; "
                           "--model NAME compares the run as one of them).")
    return pd.concat(found, ignore_index=True)


def format_comparison(frame: pd.DataFrame) -> str:
    """The comparison as a fixed-width text table (relative difference in percent)."""
    shown = frame.drop(columns=["paper_source"]).copy()
    shown["run"] = shown["run"].map(lambda v: f"{v:.4g}")
    shown["paper"] = shown["paper"].map(lambda v: f"{v:.4g}")
    shown["rel_diff"] = shown["rel_diff"].map(lambda v: f"{100 * v:+.2f}%")
    return shown.to_string(index=False)
