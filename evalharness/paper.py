"""The YaRN paper's published numbers, and a run's tables put next to them: the task-free skeleton of
the `compare` subcommand.

Contract: `published(kind)` reads the package data in `evalharness/paper_data/` (converted once from
the authors' MIT-licensed result files by `scripts/convert_paper_results.py`; see its README for
the attribution); nothing outside the package is read. `compare_run(folder)` matches the run's
model to a published model by name — the last path component, case-insensitive, so
`NousResearch/Yarn-Llama-2-7b-64k`, `/models/Yarn-Llama-2-7b-64k` and the authors' file stem
`Yarn-Llama-2-7b-64k` are the same model — and returns one row per number both have, from each task
package that has a `paper` module (`registry.package_modules("paper", required=False)`): its `TABLE`
(the run table it reads, and the published table of the same name), `PUBLISHED` (how the error
names what is published), `compare(run, model, folder)` (the rows) and `mismatch_reason(run, paper)`.

`rel_diff` = (run − paper) / paper. `differs` lists every setting in which the run's evaluation is
not the one behind the published number (empty when it is), `name value (paper value)` joined by
`; `, and `name unknown` where the run folder does not record the setting; each package's module
says which settings it checks, reading the authors' protocol from the task files under
`tasks/yarn-paper/`.
"""
from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from . import registry
from .errors import EvalHarnessError
from .method_facts import METHOD_FACTS, native_display
from .results import ResultStore

PAPER_DATA = "paper_data"
COLUMNS = ["table", "model", "method", "setting", "metric", "run", "paper", "rel_diff", "differs", "paper_source"]
DIFFERS_NOTE = ("differs: the settings in which the run's evaluation is not the published one "
                "(name run (paper)); empty = the authors' protocol.")


class CompareError(EvalHarnessError, ValueError):
    """A run folder that cannot be compared (missing, no tables, a table that cannot be read, no
    published model of that name)."""


def comparers() -> dict:
    """Each task package's `paper` module by its `TABLE`, in registry order."""
    return {module.TABLE: module for module in registry.package_modules("paper", required=False)}


def published(kind: str) -> pd.DataFrame:
    """The shipped table `paper_data/<kind>.csv` (kind: a `TABLE` of `comparers()`)."""
    if kind not in comparers():
        raise ValueError(f"unknown published table {kind!r}; valid: {', '.join(comparers())}.")
    with resources.files(__package__).joinpath(PAPER_DATA, f"{kind}.csv").open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


def model_key(name: str) -> str:
    """`NousResearch/Yarn-Llama-2-7b-64k` → `yarn-llama-2-7b-64k` (last path component, lower case)."""
    return re.split(r"[\\/]", str(name).strip().rstrip("/\\"))[-1].lower()


def published_models() -> list[str]:
    """Every published model's key (`model_key`), sorted."""
    names = pd.concat([published(kind)["model"] for kind in comparers()])
    return sorted({model_key(n) for n in names})


def method_text(method: str, factor) -> str:
    """`yarn s=16`, `base`, `native (yarn s=16)`: the run's method as a reader names it."""
    name = str(method).split(":")[0]
    if name == "native":
        return native_display(str(method).partition("rope_type=")[2] or None, factor)
    if name in METHOD_FACTS and METHOD_FACTS[name].uses_factor:
        return f"{method} s={float(factor):g}"
    return str(method)


def with_rel_diff(rows: list[dict]) -> pd.DataFrame:
    """Comparison rows (every column but `rel_diff`) as the table `compare_run` returns."""
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rel_diff"])
    frame["rel_diff"] = (frame["run"] - frame["paper"]) / frame["paper"]
    return frame[COLUMNS]


def is_known(value) -> bool:
    """Whether a recorded setting has a value (not None, NaN or empty)."""
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
    if not is_known(run_value):
        return [f"{name} unknown"]
    run_value = _number(run_value)
    return [] if run_value == paper_value else [f"{name} {run_value} (paper {paper_value})"]


def differs_text(differences: list[str]) -> str:
    """The `differs` cell: the differences joined by `; ` (empty: the authors' protocol)."""
    return "; ".join(differences)


def read_run_table(folder: Path, kind: str) -> pd.DataFrame:
    """The run's `kind` table through the results layer's reader (`ResultStore.read`: a row cut off
    at the end is dropped with a warning; a file that is not UTF-8 or not a table raises the folder
    error, one sentence); any other unreadable file raises CompareError naming it."""
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
        state = "is not a folder" if folder.exists() else "does not exist"
        raise CompareError(f"run folder {str(folder)!r} {state}; give a run's --out folder.")
    modules = comparers()
    tables = {kind: folder / f"{kind}.csv" for kind in modules if (folder / f"{kind}.csv").is_file()}
    if not tables:
        files = [f"{kind}.csv" for kind in modules]
        raise CompareError(f"run folder {str(folder)!r} has no {', '.join(files[:-1])} or {files[-1]}.")
    frames, names, runs = [], set(), {}
    for kind, path in tables.items():
        run = read_run_table(folder, kind)
        if run.empty:
            continue
        names |= set(run["model"].astype(str))
        runs[kind] = run
        frames.append(modules[kind].compare(run, model, folder))
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
                           f"{', '.join(published_models())} ({', '.join(m.PUBLISHED for m in modules.values())}; "
                           "--model NAME compares the run as one of them).")
    return pd.concat(found, ignore_index=True)


def lengths_text(lengths) -> str:
    """`4096, 8192`: the distinct lengths, sorted, as a reader lists them."""
    return ", ".join(str(int(n)) for n in sorted(set(lengths)))


def mismatch_reason(kind: str, run: pd.DataFrame, model: str | None = None) -> str | None:
    """Why no published `kind` number matches a run table whose model the paper did publish (the
    task package's `mismatch_reason`: one clause); None when the paper has no `kind` number of that
    model at all."""
    paper = published(kind)
    keys = {model_key(model or m) for m in run["model"].astype(str)}
    paper = paper[paper["model"].map(model_key).isin(keys)]
    if paper.empty:
        return None
    return comparers()[kind].mismatch_reason(run, paper)


def _number_text(value: float) -> str:
    return "none" if pd.isna(value) else f"{value:.4g}"


def format_comparison(frame: pd.DataFrame) -> str:
    """The comparison as a fixed-width text table (relative difference in percent, `differs` last)."""
    shown = frame.drop(columns=["paper_source"]).copy()
    shown["run"] = shown["run"].map(_number_text)  # NaN: e.g. an effective context no length reaches
    shown["paper"] = shown["paper"].map(_number_text)
    shown["rel_diff"] = shown["rel_diff"].map(lambda v: "—" if pd.isna(v) else f"{100 * v:+.2f}%")
    width = int(shown["differs"].str.len().max()) if len(shown) else 0
    return shown.to_string(index=False, formatters={"differs": lambda v: f"{v:<{width}}"})
