"""The statistics every task's tables share: seeded resampling, percentile and Wilson intervals,
the paired bootstrap of a difference, and the one pairing of a table's rows with a reference series.

Every resampling takes a seed; the same inputs and seed give the same interval.
"""
from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..columns import KEY_COLUMNS

CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
REFERENCE_METHOD = "base"  # the series every comparison is made against by default


def resampled_indices(n: int, n_resamples: int, seed: int) -> Iterator[list[int]]:
    """`n_resamples` draws of n indices in [0, n) with replacement, from `random.Random(seed)`."""
    rng = random.Random(seed)
    for _ in range(n_resamples):
        yield [rng.randrange(n) for _ in range(n)]

def percentile_interval(values: list[float], level: float) -> tuple[float, float]:
    """The (1−level)/2 and (1+level)/2 order statistics of the resampled values (index floor /
    ceil of q·(B−1), no interpolation)."""
    values = sorted(values)
    tail = (1 - level) / 2
    low = values[int(math.floor(tail * (len(values) - 1)))]
    high = values[int(math.ceil((1 - tail) * (len(values) - 1)))]
    return low, high

def wilson_interval(successes: int, n: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion p̂ = k/n (Wilson 1927).

    (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z the (1+level)/2 normal quantile
    (1.96 for 95 %). (NaN, NaN) when n = 0.
    """
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not ±1 ulp
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high

def paired_accuracy_difference_interval(correct: Sequence[float], reference_correct: Sequence[float],
                                        seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                                        level: float = CONFIDENCE_LEVEL) -> tuple[float, float, float]:
    """Accuracy difference method − reference on the same prompts, with a paired bootstrap CI.

    Position i of both sequences is the same prompt (1 = key retrieved, 0 = not). Each resample
    draws prompt indices with replacement (seeded) and takes mean(method) − mean(reference) over
    the drawn prompts. Returns (difference, low, high); one prompt gives a degenerate interval.
    """
    n = len(correct)
    if n != len(reference_correct):
        raise ValueError(f"paired sequences differ in length: {n} and {len(reference_correct)}.")
    if n == 0:
        return math.nan, math.nan, math.nan
    diffs = [float(a) - float(b) for a, b in zip(correct, reference_correct)]
    value = sum(diffs) / n
    if n == 1:
        return value, value, value
    resampled = [sum(diffs[i] for i in picks) / n for picks in resampled_indices(n, n_resamples, seed)]
    low, high = percentile_interval(resampled, level)
    return value, low, high

def parse_reference(text: str) -> tuple[str, float | None]:
    """A reference series as `method[:factor][:key=value...]` (the `--method` syntax) →
    (the `method` column value, factor or None). `yarn:2:attention_factor=1.1` →
    ("yarn:attention_factor=1.1", 2.0); `base` → ("base", None)."""
    parts = [p.strip() for p in str(text).split(":")]
    factor = None
    if len(parts) > 1 and "=" not in parts[1]:
        try:
            factor = float(parts[1])
        except ValueError:
            raise ValueError(f"reference {text!r}: {parts[1]!r} is not a factor; "
                             "write method[:factor][:key=value], e.g. yarn:2.") from None
        del parts[1]
    return ":".join(parts), factor

def reference_rows(frame: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The rows of `frame` that belong to the series `reference` (`parse_reference` syntax)."""
    label, factor = parse_reference(reference)
    chosen = frame[frame["method"].astype(str) == label]
    if factor is not None:
        chosen = chosen[np.isclose(chosen["factor"].astype(float), factor)]
    return chosen

def pair_with_reference(frame: pd.DataFrame, reference: str, join: Sequence[str], values: dict[str, str],
                        unit: str, how: str = "inner") -> pd.DataFrame | None:
    """The one pairing of every table's comparison with a reference series: the rows of every
    series other than `reference`, each joined on `join` (the unit both measured: a document, a
    prompt, a task, a sample) with the reference's columns `values` renamed (column → new name).
    None when the frame or the reference has no rows; ValueError when `reference` matches more than
    one series per unit."""
    ref = reference_rows(frame, reference)
    if frame.empty or ref.empty:
        return None
    ref_values = ref[list(join) + list(values)].rename(columns=values)
    if ref_values.duplicated(list(join)).any():
        raise ValueError(f"reference {reference!r} matches more than one series per {unit}; "
                         "name its factor or options (e.g. yarn:2).")
    ref_ids = set(map(tuple, ref[KEY_COLUMNS].astype(str).to_numpy()))
    others = frame[[tuple(r) not in ref_ids for r in frame[KEY_COLUMNS].astype(str).to_numpy()]]
    return others.merge(ref_values, on=list(join), how=how)
