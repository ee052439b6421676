"""What the subcommands share: the subcommand record, method × factor specs, the report options
(`--reference`, effective-context rules), checks of folders named on the command line, and the
figures-and-report step."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import plots
from ..errors import UsageError
from ..methods import ScalingSpec, canonical_method
from ..options import finite_number, parse_factors
from ..report import RULE_FIELDS, write_report
from ..results import SCHEMAS
from ..tables import EffectiveContextRules, parse_reference

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE_FAILED = 3


@dataclass(frozen=True)
class Command:
    """A subcommand: one line for the command list, its description, its arguments and its handler."""

    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str = ""


def build_specs(methods: str, factors: str, original_ctx: int | None) -> list:
    """The method × factor grid as ScalingSpecs (methods that ignore the factor appear once).
    A method written with its own factor (`yarn:16`) keeps it."""
    specs, seen = [], set()
    defaults = {"original_ctx": original_ctx} if original_ctx else {}
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        has_own_factor = len(method.split(":")) > 1 and "=" not in method.split(":")[1]
        for factor in [None] if has_own_factor else parse_factors(factors):
            spec = ScalingSpec.parse(method, **defaults) if factor is None else ScalingSpec.parse(
                method, factor=factor, **defaults)
            if spec not in seen:
                seen.add(spec)
                specs.append(spec)
    if not specs:
        raise UsageError("--method names no method.")
    return specs


def add_reference_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default=None, metavar="SPECS",
                   help="report.md: also compare every method with these series, paired on the same "
                        "documents and prompts (--method syntax, comma-separated, e.g. ntk:2,yarn:2); "
                        "base is always a reference (default: base only, or what the folder recorded)")


def parse_references(text: str | None) -> tuple[str, ...]:
    """`--reference` → the reference series (`tables.parse_reference` syntax); UsageError naming a bad one."""
    references = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    for reference in references:
        try:
            canonical_method(parse_reference(reference)[0].split(":")[0])
        except ValueError as exc:
            raise UsageError(f"--reference: {exc}") from None
    return references


def add_effective_context_arguments(p: argparse.ArgumentParser) -> None:
    """The thresholds of the effective-context table (report.md and `effective-context`)."""
    defaults = EffectiveContextRules()
    g = p.add_argument_group("effective context: the longest length each method passes")
    g.add_argument("--ppl-tolerance", type=finite_number("--ppl-tolerance"), default=None,
                   help="perplexity rule: ppl(l) <= (1 + tolerance) * best ppl at lengths <= L "
                        f"(default: {defaults.ppl_tolerance:g})")
    g.add_argument("--passkey-threshold", type=finite_number("--passkey-threshold"), default=None,
                   help=f"passkey rule: accuracy >= threshold (default: {defaults.passkey_threshold:g})")
    g.add_argument("--ruler-fraction", type=finite_number("--ruler-fraction"), default=None,
                   help="RULER rule: mean score >= fraction * base's mean at the longest length <= L/2 "
                        f"(default: {defaults.ruler_fraction:g})")
    g.add_argument("--ruler-threshold", type=finite_number("--ruler-threshold"), default=None,
                   help="RULER rule with an absolute threshold on the mean score instead, 0-1 (default: none, "
                        "the relative rule)")


def effective_context_rules(args: argparse.Namespace) -> EffectiveContextRules:
    """`tables.EffectiveContextRules` from the options of `add_effective_context_arguments`;
    UsageError (one sentence) for a value outside its range."""
    defaults = EffectiveContextRules()
    checks = [("--ppl-tolerance", args.ppl_tolerance, lambda v: 0 <= v < math.inf,
               "a number >= 0 (0.10 = 10 %)"),
              ("--passkey-threshold", args.passkey_threshold, lambda v: 0 < v <= 1, "in (0, 1]"),
              ("--ruler-fraction", args.ruler_fraction, lambda v: 0 < v < math.inf, "a number > 0"),
              ("--ruler-threshold", args.ruler_threshold, lambda v: 0 < v <= 1, "in (0, 1]")]
    for flag, value, valid, text in checks:
        if value is not None and not valid(value):
            raise UsageError(f"{flag} {value:g} is out of range; give {text}.")
    if args.ruler_fraction is not None and args.ruler_threshold is not None:
        raise UsageError("--ruler-fraction (relative to base) and --ruler-threshold (absolute) exclude each "
                         "other; give one.")
    return EffectiveContextRules(
        ppl_tolerance=defaults.ppl_tolerance if args.ppl_tolerance is None else args.ppl_tolerance,
        passkey_threshold=(defaults.passkey_threshold if args.passkey_threshold is None
                           else args.passkey_threshold),
        ruler_fraction=defaults.ruler_fraction if args.ruler_fraction is None else args.ruler_fraction,
        ruler_threshold=args.ruler_threshold)


def given_report_options(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict]:
    """The report options this command line gives (checked): `--reference` (None when absent) and
    the effective-context options given, by name; what is not given is read from the folder."""
    effective_context_rules(args)  # checks the values
    references = parse_references(args.reference) if args.reference is not None else None
    return references, {name: getattr(args, name) for name in RULE_FIELDS if getattr(args, name) is not None}


def check_csv_destination(path: str | None) -> None:
    """`--csv FILE`: FILE's folder exists and is writable and FILE is no folder (checked before the work)."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} {state}; give a file in an existing folder.")
    if Path(path).is_dir():
        raise UsageError(f"--csv {path!r} is a folder; give a file name.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} is not writable; give a file in a folder "
                         "you can write.")


def check_run_folder_given(folder: Path) -> None:
    """A folder named on the command line is a run folder: a manifest.json or a result table."""
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"run folder {str(folder)!r} {state}; give a run's --out folder.")
    if not (folder / "manifest.json").exists() and not any((folder / f"{t}.csv").exists() for t in SCHEMAS):
        raise UsageError(f"{str(folder)!r} is not a run folder (no manifest.json and no result table); "
                         "give a run's --out folder.")


def write_figures_and_report(folder: Path, report: bool = True) -> list[Path]:
    """Figures, then report.md with the report options recorded in the folder
    (`report.record_options`)."""
    paths = plots.plot_run(folder)
    if report:
        paths.append(write_report(folder, figures=False))
    return paths
