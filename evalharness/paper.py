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

`rel_diff` = (run − paper) / paper. `differs` lists every setting in which the run's evaluation is
not the one behind the published number (empty when it is), `name value (paper value)` joined by
`; `, and `name unknown` where the run folder does not record the setting:

- perplexity: the authors' evaluation of the dataset as its task file says (`PAPER_TASK_FILES`:
  `tasks/yarn-paper/govreport.yaml`, sliding window with its stride, BOS placement, length filter
  and document count; `tasks/yarn-paper/proofpile.yaml`, truncated, where stride and BOS placement
  are moot; the Solar and 70B Proof-pile curves, not in the authors' eval.sh, are taken to be the
  same by their name). `window_bos`, `stride` and `n_docs` come from `perplexity.csv`; the document
  filter and whether the documents were the first N or a random sample from the folder's
  `manifest.json` (the runs of that dataset and protocol);
- leaderboard: the run's `num_fewshot` against the published shots, and its `n_samples` against the
  full evaluation set (`subset n=50 of 1172`), the published row's `n_samples`;
- passkey: the lengths and prompts per length (depths × trials) of `tasks/yarn-paper/passkey.yaml`.
"""
from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from . import taskfiles
from .errors import EvalHarnessError
from .options import parse_count, parse_lengths

PAPER_DATA = "paper_data"
COLUMNS = ["table", "model", "method", "setting", "metric", "run", "paper", "rel_diff", "differs", "paper_source"]
KINDS = ("perplexity", "leaderboard", "passkey")
# The task files of the authors' evaluations behind the published numbers (module doc).
PAPER_TASK_FILES = {"proofpile": "yarn-paper/proofpile", "govreport": "yarn-paper/govreport",
                    "passkey": "yarn-paper/passkey"}
DIFFERS_NOTE = ("differs: the settings in which the run's evaluation is not the published one "
                "(name run (paper)); empty = the authors' protocol.")


class CompareError(EvalHarnessError, ValueError):
    """A run folder that cannot be compared (missing, no tables, a table that cannot be read, no
    published model of that name)."""


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


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != ""


def _number(value):
    """A table cell as an int when it is a whole number (CSV round trips make 256 read as 256.0)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else number


def setting_difference(name: str, run_value, paper_value) -> list[str]:
    """`[]` when the run used the paper's value, `["name run (paper P)"]` when not, `["name unknown"]`
    when the run did not record it."""
    if not _known(run_value):
        return [f"{name} unknown"]
    run_value = _number(run_value)
    return [] if run_value == paper_value else [f"{name} {run_value} (paper {paper_value})"]


def _differs_text(differences: list[str]) -> str:
    return "; ".join(differences)


def perplexity_selection(folder: Path | None, dataset: str, protocol: str) -> dict:
    """How the run in `folder` chose its documents for `dataset` and `protocol`, from the args its
    `manifest.json` records: `min_tokens` (the length filter, the CLI's default applied when none was
    given) and `sample` (True for a random sample, False for the first N). A value is None (unknown)
    when no recorded run of that dataset and protocol says it or the runs disagree."""
    from .corpora import default_min_tokens
    from .results import read_manifest

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


def paper_passkey() -> tuple[tuple[int, ...], int]:
    """The authors' passkey grid from its task file: (lengths, prompts per length = depths × trials)."""
    fields = taskfiles.load(PAPER_TASK_FILES["passkey"]).fields
    return tuple(parse_lengths(str(fields["lengths"]))), int(fields["depths"]) * int(fields["trials"])


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


def compare_perplexity(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """Rows of `perplexity.csv` next to the published curve of the same model, dataset and length,
    each with the settings in which the run's evaluation differs from the authors' (module doc)."""
    paper = published("perplexity")
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
        rows.append(dict(table="perplexity", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=f"{dataset} {row['protocol']} {int(row['context_length'])}", metric=value,
                         run=float(row[value]), paper=float(ref["ppl"]), differs=_differs_text(differs),
                         paper_source=ref["source"]))
    return _with_rel_diff(rows)


def passkey_differences(prompts_per_length: pd.Series) -> list[str]:
    """How a series' passkey grid (`prompts_per_length`: prompts indexed by context length) differs
    from the paper's (`paper_passkey`: 10 prompts at each of 8k…128k step 8k)."""
    found = []
    paper_lengths, paper_prompts = paper_passkey()
    lengths = tuple(int(n) for n in prompts_per_length.index)
    if lengths != paper_lengths:
        step = paper_lengths[1] - paper_lengths[0] if len(paper_lengths) > 1 else 0
        found.append(f"lengths {', '.join(map(str, lengths))} (paper {paper_lengths[0]}…{paper_lengths[-1]} "
                     f"step {step})")
    counts = sorted({int(n) for n in prompts_per_length})
    if counts != [paper_prompts]:
        shown = "–".join(map(str, (counts[0], counts[-1]))) if len(counts) > 1 else str(counts[0])
        found.append(f"prompts/length {shown} (paper {paper_prompts})")
    return found


def compare_passkey(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """The run's passkey context (per method) next to the paper's Table 5."""
    from .passkey.analysis import passkey_accuracy, passkey_effective_context

    paper = published("passkey")
    paper["key"] = paper["model"].map(model_key)
    per_length, effective = passkey_accuracy(run, by=("context_length",)), passkey_effective_context(run)
    series = [c for c in effective.columns if c in per_length.columns]  # the series' identifying columns
    rows = []
    for _, row in effective.iterrows():
        match = paper[(paper.key == model_key(model or row["model"])) & (paper.metric == "passkey_context")]
        if match.empty:
            continue
        ref = match.iloc[0]
        mine = per_length[(per_length[series].astype(str) == row[series].astype(str)).all(axis=1)]
        differs = passkey_differences(mine.set_index(mine["context_length"].astype(float))["n"].sort_index())
        rows.append(dict(table="passkey", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=f"lengths ≤ {int(row['max_length_tested'])}", metric="passkey_context",
                         run=float(row["effective_context"]), paper=float(ref["value"]),
                         differs=_differs_text(differs), paper_source=ref["source"]))
    return _with_rel_diff(rows)


def leaderboard_differences(row: pd.Series, ref: pd.Series) -> list[str]:
    """How one `leaderboard.csv` row's evaluation differs from the published one `ref`: the shots,
    and the examples evaluated against the full set (`subset n=50 of 1172` under `--limit`)."""
    found = setting_difference("shots", row.get("num_fewshot"), int(ref["num_fewshot"]))
    full, n = int(ref["n_samples"]), row.get("n_samples")
    if not _known(n):
        found.append("n unknown")
    elif int(n) < full:
        found.append(f"subset n={int(n)} of {full}")
    elif int(n) != full:
        found.append(f"n={int(n)} (paper {full})")
    return found


def compare_leaderboard(run: pd.DataFrame, model: str | None = None, folder: Path | None = None) -> pd.DataFrame:
    """Rows of `leaderboard.csv` next to the published lm-eval number of the same task and metric;
    `setting` names the run's own shot count."""
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
        shots = row.get("num_fewshot")
        setting = f"{task} ({int(float(shots))}-shot)" if _known(shots) else f"{task} (shots unknown)"
        rows.append(dict(table="leaderboard", model=ref["model"], method=_method_text(row["method"], row["factor"]),
                         setting=setting, metric=row["metric"], run=float(row["value"]), paper=float(ref["value"]),
                         differs=_differs_text(leaderboard_differences(row, ref)), paper_source=ref["source"]))
    return _with_rel_diff(rows)


COMPARERS = {"perplexity": compare_perplexity, "passkey": compare_passkey, "leaderboard": compare_leaderboard}


def read_run_table(folder: Path, kind: str) -> pd.DataFrame:
    """The run's `kind` table through the results layer's reader (`ResultStore.read`: a row cut off
    at the end is dropped with a warning; a file that is not UTF-8 or not a table raises the folder
    error, one sentence); any other unreadable file raises CompareError naming it."""
    from .results import ResultStore

    path = folder / f"{kind}.csv"
    try:
        return ResultStore(folder).read(kind)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompareError(f"{path} cannot be read as a {kind} table ({reason}); move it away or "
                           "regenerate it.") from None


def compare_run(folder: str | Path, model: str | None = None) -> pd.DataFrame:
    """Every number of the run in `folder` that the paper also published (see the module doc).
    `model` compares the run as that published model (e.g. a local copy under another name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"run folder {str(folder)!r} does not exist; give a run's --out folder.")
    tables = {kind: folder / f"{kind}.csv" for kind in COMPARERS if (folder / f"{kind}.csv").is_file()}
    if not tables:
        raise CompareError(f"run folder {str(folder)!r} has no perplexity.csv, passkey.csv or leaderboard.csv.")
    frames, names, runs = [], set(), {}
    for kind, path in tables.items():
        run = read_run_table(folder, kind)
        if run.empty:
            continue
        names |= set(run["model"].astype(str))
        runs[kind] = run
        frames.append(COMPARERS[kind](run, model, folder))
    found = [f for f in frames if not f.empty]
    if not names:
        files = ", ".join(path.name for path in tables.values())
        raise CompareError(f"run folder {str(folder)!r}: {files} {'holds' if len(tables) == 1 else 'hold'} no "
                           "complete row, so there is nothing to compare.")
    if not found:
        asked = model or ", ".join(sorted(names)) or "(no rows)"
        reasons = [r for kind, run in runs.items() for r in [mismatch_reason(kind, run, model)] if r]
        if reasons:
            raise CompareError(f"no published number matches this run as {asked}: " + "; ".join(reasons) + ".")
        raise CompareError(f"no published number matches model {asked} in this run's tables; published models: "
                           f"{', '.join(published_models())} (Proof-pile/GovReport perplexity, passkey, leaderboard; "
                           "--model NAME compares the run as one of them).")
    return pd.concat(found, ignore_index=True)


def _lengths_text(lengths) -> str:
    return ", ".join(str(int(n)) for n in sorted(set(lengths)))


def mismatch_reason(kind: str, run: pd.DataFrame, model: str | None = None) -> str | None:
    """Why no published `kind` number matches a run table whose model the paper did publish: the
    data set, protocol, lengths, tasks or metric that differ (one clause); None when the paper
    has no `kind` number of that model at all."""
    paper = published(kind)
    keys = {model_key(model or m) for m in run["model"].astype(str)}
    paper = paper[paper["model"].map(model_key).isin(keys)]
    if paper.empty:
        return None
    if kind == "perplexity":
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
            clauses.append(f"{dataset} {protocol} perplexity is published at {_lengths_text(same['context_length'])} "
                           f"tokens, this run measured {_lengths_text(lengths)}")
        return "; ".join(clauses)
    if kind == "passkey":
        return None if (paper["metric"] == "passkey_context").any() else "no passkey context is published"
    mine = {(str(t).removesuffix("_local"), str(m)) for t, m in zip(run["task"], run["metric"])}
    theirs = {(str(t), str(m)) for t, m in zip(paper["task"], paper["metric"])}
    return (f"leaderboard numbers are published for {', '.join(f'{t} {m}' for t, m in sorted(theirs))}, this run "
            f"has {', '.join(f'{t} {m}' for t, m in sorted(mine))}")


def _number_text(value: float) -> str:
    return "none" if pd.isna(value) else f"{value:.4g}"


def format_comparison(frame: pd.DataFrame) -> str:
    """The comparison as a fixed-width text table (relative difference in percent, `differs` last)."""
    shown = frame.drop(columns=["paper_source"]).copy()
    shown["run"] = shown["run"].map(_number_text)  # NaN: e.g. a passkey context no length reaches
    shown["paper"] = shown["paper"].map(_number_text)
    shown["rel_diff"] = shown["rel_diff"].map(lambda v: "—" if pd.isna(v) else f"{100 * v:+.2f}%")
    width = int(shown["differs"].str.len().max()) if len(shown) else 0
    return shown.to_string(index=False, formatters={"differs": lambda v: f"{v:<{width}}"})
