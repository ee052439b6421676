"""The effective context: per series, the longest tested length that passes each criterion.

One rule for every criterion (`longest_passing_length`): the longest tested length ℓ that passes,
also after a failing shorter one (the YaRN paper's definition for its retrieval test). What "passes" means is each
task's own criterion (a `Criterion` in its package's `analysis` module, reached through the
registry), with its thresholds among the `EffectiveContextRules` and its command-line options in the
effective-context argument group. `effective_context` loops over the criteria; a criterion without
rows for a series (not measured) has no row.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import pandas as pd

from .. import registry
from ..columns import KEY_COLUMNS
from .display import ordered_groups

EFFECTIVE_CONTEXT_COLUMNS = KEY_COLUMNS + ["criterion", "data", "threshold", "reference_length",
                                           "effective_context", "value_at_context", "shorter_failure",
                                           "max_length_tested"]


def longest_passing_length(passes: pd.Series) -> tuple[float, bool]:
    """The effective-context rule shared by every criterion: the longest tested length that passes.

    With T the tested lengths (the index of `passes`) and pass(ℓ) the criterion at ℓ:
    effective = max{ℓ ∈ T : pass(ℓ)}, NaN when no length passes. A length that passes after a failing
    shorter one counts (the YaRN paper's definition for its retrieval test).

    Returns:
        (effective, shorter_failure): shorter_failure is True when some ℓ ∈ T below the effective
        length fails (the criterion does not hold at every length up to it).
    """
    passes = passes.astype(bool)
    passing = [float(x) for x, ok in passes.items() if ok]
    if not passing:
        return math.nan, False
    effective = max(passing)
    return effective, any(float(x) < effective and not ok for x, ok in passes.items())


@dataclass(frozen=True)
class RuleOption:
    """One threshold of a criterion: its `EffectiveContextRules` field, default, command-line flag,
    help text, and valid range (`valid`, in words `valid_text`)."""

    name: str
    default: float | None
    flag: str
    help: str
    valid: Callable[[float], bool]
    valid_text: str


@dataclass(frozen=True)
class Criterion:
    """A task's effective-context criterion.

    Attributes:
        name: the `criterion` column value (the task's table).
        label: its column header in the effective-context table.
        load: a run folder → the table the criterion reads (empty when the folder has none).
        cells: the columns of one cell of that table (a cell in several folders is taken once).
        evaluate: (table, rules) → one row per series (and data) with `EFFECTIVE_CONTEXT_COLUMNS`.
        rule_line: (effective-context table, rules) → the rule in one markdown bullet.
        options: its thresholds (`RuleOption`).
        excludes: (option, option, message) pairs that exclude each other: given both, `message`;
            given one, a recorded other is dropped.
        gap_note, unmeasured_note: what its † and "—" mean beyond the shared wording.
        passes: what passing means, in a few words (the `effective-context` command's description).
        rule_source: where the shared rule (a length that passes after a failing shorter one counts)
            comes from, when it is this task's published definition (the report names it).
    """

    name: str
    label: str
    load: Callable[[str | os.PathLike], pd.DataFrame]
    cells: Sequence[str]
    evaluate: Callable[[pd.DataFrame, "EffectiveContextRules"], pd.DataFrame]
    rule_line: Callable[[pd.DataFrame, "EffectiveContextRules"], str]
    options: Sequence[RuleOption] = ()
    excludes: Sequence[tuple[str, str, str]] = ()
    gap_note: str = ""
    unmeasured_note: str = ""
    passes: str = ""
    rule_source: str = ""


def criteria() -> list[Criterion]:
    """Every registered task's criterion, in registry order."""
    return [m.CRITERION for m in registry.package_modules("analysis") if getattr(m, "CRITERION", None)]


def rule_options() -> list[RuleOption]:
    """Every criterion's thresholds, in registry order."""
    return [option for criterion in criteria() for option in criterion.options]


@dataclass(frozen=True, init=False)
class EffectiveContextRules:
    """The thresholds of the effective-context criteria by field name (the command-line options);
    the defaults are the criteria's own (`RuleOption.default`). Read a threshold as an attribute."""

    values: Mapping[str, float | None] = field(default_factory=dict)

    def __init__(self, **values: float | None) -> None:
        defaults = {option.name: option.default for option in rule_options()}
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise TypeError(f"unknown effective-context rule(s) {', '.join(unknown)}; known: {', '.join(defaults)}.")
        object.__setattr__(self, "values", {**defaults, **values})

    def __getattr__(self, name: str):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values.items())))


def load_effective_context_tables(folders: Sequence[str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """Each criterion's table of several run folders (criterion name → table), each the
    concatenation over the folders; a cell (`Criterion.cells`) found in more than one folder is
    taken from the first folder given. Series of different folders are the same series when their
    model, method, factor and original_ctx are equal."""
    out = {}
    for criterion in criteria():
        read = criterion.load
        frames = [frame for frame in (read(folder) for folder in folders) if not frame.empty]
        if not frames:
            out[criterion.name] = read(folders[0]) if folders else pd.DataFrame()
            continue
        frame = pd.concat(frames, ignore_index=True)
        cells = [c for c in criterion.cells if c in frame.columns]
        out[criterion.name] = frame[~frame[cells].astype(str).duplicated(keep="first")].reset_index(drop=True)
    return out


def effective_context(tables: Mapping[str, pd.DataFrame],
                      rules: EffectiveContextRules | None = None) -> pd.DataFrame:
    """The effective context of every series by every criterion it was measured on (tidy).

    `tables`: criterion name → its table (`load_effective_context_tables`; a missing name is not
    measured). One row per series × criterion (× data, where a criterion tells data apart); a
    measured criterion that no length passes has effective_context NaN.

    Returns:
        `EFFECTIVE_CONTEXT_COLUMNS` (with `run` first when the inputs have it): `data` names what
        the criterion measured on when it tells data apart, else ""; `threshold` is θ of the rule;
        `reference_length` is where the reference value was taken (NaN when the rule has none).
    """
    rules = EffectiveContextRules() if rules is None else rules
    parts = []
    for criterion in criteria():
        table = tables.get(criterion.name)
        if table is not None and not table.empty:
            parts.append(criterion.evaluate(table, rules))
    run = ["run"] if any("run" in p.columns for p in parts) else []
    columns = run + EFFECTIVE_CONTEXT_COLUMNS
    parts = [p.reindex(columns=columns) for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(parts, ignore_index=True)
    ordered = ordered_groups(frame, run + KEY_COLUMNS)
    return pd.concat([group for _, group in ordered], ignore_index=True)[columns]
