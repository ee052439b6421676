"""Parsers of command-line values (pure; no torch): token counts, length grids, factors, number
grids. Each raises `UsageError` with one sentence naming the bad text and the valid forms, except
`positive_count`, an argparse `type` helper, which raises `argparse.ArgumentTypeError` with the
caller's sentence (argparse prints it and exits with code 2)."""
from __future__ import annotations

import argparse
import math
import re

from .errors import UsageError

# The largest count any option takes: 2^24 = 16,777,216 tokens (16384k), 128 times the longest context
# the YaRN paper evaluates; a larger number is a typo, and numbers like 10^20 would otherwise reach
# torch or the allocator as an overflow or a hang.
MAX_COUNT = 2**24
MAX_GRID_POINTS = 1000  # values in a start:stop:step grid of floats
MAX_FACTOR = 4096.0  # scale factors: s·L beyond 2^24 tokens for any L ≥ 4096 already
MAX_SEED = 2**32 - 1  # numpy's and lm-eval's seeds are 32-bit


def parse_count(text: str) -> int:
    """'16384', '16k' (×1024), '128K' → int in 0..MAX_COUNT (ASCII digits only)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kK]?)\s*", str(text))
    if not match:
        raise UsageError(f"{text!r} is not a token count; write e.g. 4096 or 4k.")
    value = int(match.group(1)) * (1024 if match.group(2) else 1)
    if value > MAX_COUNT:
        raise UsageError(f"{text!r} is more than {MAX_COUNT:,} (16384k), the largest count the harness takes.")
    return value


def positive_count(text: str, error: str) -> int:
    """`text` as a count ≥ 1 in `parse_count`'s forms (`7`, `4096`, `4k`); anything else raises
    `argparse.ArgumentTypeError(error)`, `error` being the option's one-sentence message."""
    try:
        count = parse_count(text)
    except UsageError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(error)
    return count


def bounded_count(flag: str, minimum: int = 1, maximum: int = MAX_COUNT):
    """An argparse `type` for `flag`: a whole number in `minimum..maximum` in `parse_count`'s forms
    (`7`, `4096`, `4k`); anything else raises `argparse.ArgumentTypeError` with one sentence naming
    `flag`, the value and what is valid."""
    def parse(text: str) -> int:
        match = re.fullmatch(r"\s*([-+]?[0-9]+)\s*([kK]?)\s*", str(text))
        if not match:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a whole number; give one ≥ {minimum} "
                                             "(e.g. 4096 or 4k).")
        value = int(match.group(1)) * (1024 if match.group(2) else 1)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be ≥ {minimum}.")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be ≤ {maximum:,}.")
        return value

    parse.__name__ = flag  # argparse names a type by its function
    return parse


def finite_number(flag: str, maximum: float = math.inf):
    """An argparse `type` for `flag`: a finite float ≤ `maximum` (`nan`, `inf`, text and larger values
    are refused with one sentence naming `flag` and the value)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a finite number.")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be ≤ {maximum:g}.")
        return value

    parse.__name__ = flag
    return parse


def checked_text(flag: str, parse):
    """An argparse `type` for `flag` that keeps the text as given but refuses what `parse` refuses
    (its UsageError sentence), so a task file's field is checked, and named, like the flag."""
    def check(text: str) -> str:
        try:
            parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    check.__name__ = flag
    return check


PREFILL_AUTO, PREFILL_OFF = "auto", "off"  # the non-numeric values of --prefill-chunk
DEFAULT_PREFILL_CHUNK = 2048  # the chunk `auto` uses when the one-shot plan does not fit


def parse_prefill_chunk(text: str) -> int | str:
    """`--prefill-chunk` (an argparse `type`): a positive number of tokens (`k` = 1024), `auto` or
    `off`; anything else raises `argparse.ArgumentTypeError` naming the bad value (exit 2)."""
    value = str(text).strip().lower()
    if value in (PREFILL_AUTO, PREFILL_OFF):
        return value
    return positive_count(value, f"--prefill-chunk {text!r} is not valid; give a positive number of tokens "
                                 "(e.g. 2048 or 2k), auto or off.")


def lengths_count(text: str) -> int:
    """One count of `--lengths` (`parse_count`), its error naming the option."""
    try:
        return parse_count(text)
    except UsageError as exc:
        raise UsageError(f"--lengths: {exc}") from None


def comma_items(text: str | None, what: str) -> list[str]:
    """The stripped items of a comma list (empty text: none); UsageError naming `what` and the text
    when an item is empty (`64,128,`, `a,,b`): a slip, never a value to drop silently."""
    text = "" if text is None else str(text)
    if not text.strip():
        return []
    items = [part.strip() for part in text.split(",")]
    if not all(items):
        raise UsageError(f"{what} {text!r} has an empty item (a comma too many); separate the values with "
                         "single commas.")
    return items


def parse_lengths(text: str) -> list[int]:
    """'2k:16k:2k' (start:stop:step, stop included) or '4096,8192' → strictly increasing lengths."""
    text = str(text).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"lengths {text!r} must be start:stop:step (e.g. 2k:16k:2k) or a comma list.")
        start, stop, step = (lengths_count(p) for p in parts)
        if step <= 0 or start <= 0 or stop < start:
            raise UsageError(f"lengths {text!r} need 0 < start <= stop and step > 0.")
        count = (stop - start) // step + 1
        if count > MAX_GRID_POINTS:
            raise UsageError(f"lengths {text!r} name {count:,} lengths; at most {MAX_GRID_POINTS} (use a larger "
                             "step).")
        lengths = list(range(start, stop + 1, step))
    else:
        lengths = [lengths_count(p) for p in comma_items(text, "length list")]
    if not lengths:
        raise UsageError(f"lengths {text!r} name no length.")
    if any(n < 2 for n in lengths):
        raise UsageError(f"lengths {text!r} must all be ≥ 2 tokens.")
    if any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise UsageError(f"lengths {text!r} must be strictly increasing.")
    return lengths


def parse_factors(text: str) -> list[float]:
    factors = []
    for part in comma_items(text, "factor list") or [str(text)]:
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"factor {part.strip()!r} is not a number; "
                             "write e.g. --factor 2 or --factor 2,4,8.") from None
        if not value > 0:
            raise UsageError(f"factor {part.strip()!r} must be > 0.")
        if not math.isfinite(value) or value > MAX_FACTOR:
            raise UsageError(f"factor {part.strip()!r} must be a finite number > 0 and ≤ {MAX_FACTOR:g}.")
        factors.append(value)
    return factors


def parse_grid(text: str) -> list[float]:
    """'1.0:1.5:0.05' (start:stop:step, stop included) or '1.0,1.1' → floats (rounded to 6 places)."""
    items = [] if ":" in text else comma_items(text, "grid")
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
        else:
            values = [float(p) for p in items]
    except ValueError:
        raise UsageError(f"grid {text!r} must be start:stop:step or a comma list of numbers.") from None
    if ":" in text:
        if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start:
            raise UsageError(f"grid {text!r} needs finite start <= stop and step > 0 (e.g. 1.0:1.4:0.05).")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_GRID_POINTS:
            raise UsageError(f"grid {text!r} has {count:,} points; at most {MAX_GRID_POINTS} (use a larger step).")
        return [round(start + i * step, 6) for i in range(count)]
    if not values or not all(map(math.isfinite, values)):
        raise UsageError(f"grid {text!r} must name finite numbers (start:stop:step or a comma list).")
    if len(values) > MAX_GRID_POINTS:
        raise UsageError(f"grid {text!r} has {len(values):,} points; at most {MAX_GRID_POINTS}.")
    return values


class StoreGiven(argparse.Action):
    """Store the value and note that the option was given on the command line (`<dest>_given`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)
