"""What the subcommands share: the subcommand record, method × factor specs, the report options
(`--reference`, effective-context rules), checks of folders named on the command line, and the
figures-and-report step."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import plots
from ..analysis.effective_context import EffectiveContextRules, criteria
from ..analysis.stats import parse_reference
from ..errors import UsageError
from ..methods import ScalingSpec
from ..options import comma_items, finite_number, parse_factors
from ..report import optional_figures_recorded, rule_fields, write_report
from ..results import SCHEMAS, atomic_write_text

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE_FAILED = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process a closed pipe ended


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
    for method in comma_items(methods, "--method"):
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
    """`--reference` → the reference series (`analysis.stats.parse_reference` syntax); UsageError naming a bad one."""
    references = tuple(comma_items(text, "--reference"))
    for reference in references:
        try:
            ScalingSpec.parse(reference)  # the whole spec, as --method would take it
            parse_reference(reference)
        except ValueError as exc:
            raise UsageError(f"--reference: {exc}") from None
    return references


def add_effective_context_arguments(p: argparse.ArgumentParser) -> None:
    """The thresholds of the effective-context table (report.md and `effective-context`): each
    registered criterion's options (`analysis.effective_context.RuleOption`), in registry order."""
    g = p.add_argument_group("effective context: the longest length each method passes")
    for criterion in criteria():
        for option in criterion.options:
            g.add_argument(option.flag, dest=option.name, type=finite_number(option.flag), default=None,
                           help=option.help)


def effective_context_rules(args: argparse.Namespace) -> EffectiveContextRules:
    """`EffectiveContextRules` from the options of `add_effective_context_arguments` (a criterion's
    default where an option is absent); UsageError (one sentence) for a value outside its range or
    two options that exclude each other."""
    values = {}
    for criterion in criteria():
        for option in criterion.options:
            value = getattr(args, option.name)
            if value is not None and not option.valid(value):
                raise UsageError(f"{option.flag} {value:g} is out of range; give {option.valid_text}.")
            if value is not None:
                values[option.name] = value
        for first, second, message in criterion.excludes:
            if getattr(args, first) is not None and getattr(args, second) is not None:
                raise UsageError(message)
    return EffectiveContextRules(**values)


def given_report_options(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict]:
    """The report options this command line gives (checked): `--reference` (None when absent) and
    the effective-context options given, by name; what is not given is read from the folder."""
    effective_context_rules(args)  # checks the values
    references = parse_references(args.reference) if args.reference is not None else None
    return references, {name: getattr(args, name) for name in rule_fields() if getattr(args, name) is not None}


# Kernel file systems: writable by root, but no place for results.
PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def in_pseudo_file_system(path: Path) -> bool:
    """Whether `path` (resolved) lies in /proc, /sys or /dev."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == p or p in resolved.parents for p in PSEUDO_FILE_SYSTEMS)


def check_csv_destination(path: str | None) -> None:
    """`--csv FILE`: FILE's folder exists and is writable, on disk, and FILE is no folder (checked
    before the work)."""
    if path is None:
        return
    if in_pseudo_file_system(Path(path)):
        raise UsageError(f"--csv {path!r} is inside a kernel file system "
                         f"({', '.join(map(str, PSEUDO_FILE_SYSTEMS))}); give a file on disk.")
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} {state}; give a file in an existing folder.")
    if Path(path).expanduser().is_dir():
        raise UsageError(f"--csv {path!r} is a folder; give a file name.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--csv {path!r}: the folder {str(folder)!r} is not writable; give a file in a folder "
                         "you can write.")


def write_csv(path: str, table) -> None:
    """`--csv FILE` written atomically (a full disk is `ResultWriteError`: exit 3, nothing half-written)."""
    atomic_write_text(Path(path).expanduser(), table.to_csv(index=False))


def check_run_folder_given(folder: Path) -> None:
    """A folder named on the command line is a run folder: a manifest.json or a result table."""
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"run folder {str(folder)!r} {state}; give a run's --out folder.")
    if not (folder / "manifest.json").exists() and not any((folder / f"{t}.csv").exists() for t in SCHEMAS):
        raise UsageError(f"{str(folder)!r} is not a run folder (no manifest.json and no result table); "
                         "give a run's --out folder.")


def write_figures_and_report(folder: Path, report: bool = True) -> list[Path]:
    """Figures (the optional ones too when the folder records `--optional-figures`), then report.md
    with the report options recorded in the folder (`report.record_options`)."""
    paths = plots.plot_run(folder, optional=optional_figures_recorded(folder))
    if report:
        paths.append(write_report(folder, figures=False))
    return paths
