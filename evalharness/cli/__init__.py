"""Command line: arguments → run plan → tasks → tables. Subcommands (argparse) in `COMMANDS`, one
module each (`eval`, `methods`, `plot`, `compare`, `effective_context`); a first argument that is not
a command name means `eval`:

    python run_eval.py --model smollm2-135m --method base,pi,ntk,yarn --factor 2 \\
        --dataset coq-stdlib --lengths 2k:16k:2k --docs 2 --out results/run1
    python run_eval.py methods --model smollm2-135m --method yarn --factor 2
    python run_eval.py plot results/run1
    python run_eval.py compare results/run1      # next to the paper's published numbers
    python run_eval.py effective-context results/run1 results/run2   # effective context per method

Exit codes: 0 all cells done; 1 some cells failed (recorded in manifest.json, the rest ran);
2 bad input (one sentence on stderr, nothing computed); 3 a result file could not be written
(disk full; the rows written before are intact); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading

import transformers

from ..errors import EvalHarnessError, UsageError
from ..results import ResultWriteError
from ..taskfiles import apply_task_file, given_options, options_parser
from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_CELLS_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WRITE_FAILED,
    Command,
)
from .compare import add_compare_arguments, cmd_compare
from .effective_context import (
    add_effective_context_command_arguments,
    cmd_effective_context,
    effective_context_description,
)
from .eval import add_eval_arguments, cmd_eval
from .methods import add_methods_arguments, cmd_methods
from .plot import add_plot_arguments, cmd_plot


class Parser(argparse.ArgumentParser):
    """argparse whose errors are the harness's: one sentence (UsageError, exit 2), no usage dump."""

    def error(self, message: str):
        raise UsageError(one_sentence(message))


def one_sentence(message: str) -> str:
    """argparse's error `message` as one sentence naming the option and what is valid."""
    match = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.S)
    if not match:
        return message.rstrip(".") + "; see run_eval.py --help."
    flag, text = match.group(1).split("/")[-1], match.group(2)
    if text.startswith(flag):  # our own type functions write the whole sentence
        return text
    invalid = re.fullmatch(r"invalid (\w+) value: (.*)", text)
    if invalid:
        kind = {"int": "a whole number", "float": "a number"}.get(invalid.group(1), "valid")
        return f"{flag} {invalid.group(2)} is not {kind}."
    choice = re.fullmatch(r"invalid choice: (.*?) \(choose from (.*)\)", text)
    if choice:
        return f"{flag} {choice.group(1)} is not valid; choose from {choice.group(2)}."
    if text.startswith("expected one argument"):
        return f"{flag} needs a value."
    return f"{flag}: {text.rstrip('.')}."


# Subcommands; `eval` is the default (`run_eval.py --model ...` means `run_eval.py eval --model ...`).
COMMANDS: dict[str, Command] = {
    "eval": Command("run an evaluation (default)",
                    "Evaluate RoPE context-extension methods (PI, NTK, NTK-by-parts, YaRN, dynamic variants) with "
                    "the YaRN paper's protocols. Every option says its default in words.",
                    add_eval_arguments, cmd_eval),  # its examples: add_eval_arguments, from the registry
    "methods": Command("frequency tables of the methods",
                       "Print each method's frequency table summary: first/last inv_freq, ramp bounds, attention "
                       "scale (the columns are explained below the table).", add_methods_arguments, cmd_methods,
                       "examples:\n  run_eval.py methods --model smollm2-135m --method yarn,dynamic-yarn --factor 4\n"
                       "  run_eval.py methods --rotary-dim 128 --rope-theta 10000 --original-ctx 4096"),
    "plot": Command("figures and report.md from a run's tables",
                    "Figures (PNG + PDF under DIR/figures) and DIR/report.md from a run's tables.",
                    add_plot_arguments, cmd_plot,
                    "examples:\n  run_eval.py plot results/run1 --reference ntk:4"),
    "compare": Command("a run next to the paper's published numbers",
                       "Put a run's numbers next to the YaRN paper's published ones for the same model, with the "
                       "relative difference (run - paper) / paper.",
                       add_compare_arguments, cmd_compare,
                       "examples:\n  run_eval.py compare results/run1 --model yarn-llama-2-7b-64k --csv cmp.csv"),
    "effective-context": Command("effective context per method from one or more run folders",
                                 effective_context_description(),
                                 add_effective_context_command_arguments, cmd_effective_context,
                                 "examples:\n  run_eval.py effective-context results/run1 results/run2 --csv ec.csv"),
}


def build_parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="run_eval.py", description=COMMANDS["eval"].description,
        epilog="Without a command, `eval` is meant: `run_eval.py --model M ...` = `run_eval.py eval --model M ...` "
               "(`run_eval.py eval --help` lists its options).")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        # every help text states its default in words (argparse's ArgumentDefaultsHelpFormatter would
        # print "(default: None)"); the raw formatter keeps the examples' lines
        sub = commands.add_parser(name, help=command.summary, description=command.description,
                                  epilog=command.examples or None,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub)
    return top


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments of one invocation; a first argument that is no command name (nor -h) means `eval`."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["eval", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        options = options_parser(add_eval_arguments)
        given = given_options(options, argv[1:])  # what the user typed
        if args.task is not None:  # the task file's fields, under the given flags
            args = apply_task_file(args, given, options)
        args.given = tuple(given)
    return args


def quiet_libraries() -> None:
    """Our own progress bars and one-sentence errors; not the libraries' weight-loading bars."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def terminate_like_ctrl_c() -> None:
    """SIGTERM (a scheduler's polite kill) ends the run the way Ctrl-C does: the row being written
    is finished (writes hold signals), the manifest says `interrupted`, the exit code is 130."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)


def main(argv: list[str] | None = None) -> int:
    """Run one invocation; Ctrl-C (or SIGTERM) at any moment is one line and exit code 130; output
    piped into a reader that stops (`| head`) ends it quietly with exit code 141."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader is gone: later writes (and the flush at exit) go nowhere instead of raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def run(argv: list[str] | None) -> int:
    """One invocation: parse, dispatch to the subcommand; bad input exit 2, a failed write exit 3."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    terminate_like_ctrl_c()
    quiet_libraries()
    try:
        args = parse_args(argv)
        return COMMANDS[args.command].run(args)
    except EvalHarnessError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever a library's text held
        return EXIT_USAGE
    except ResultWriteError as exc:
        print(f"error: {exc.strerror}.", file=sys.stderr)
        return EXIT_WRITE_FAILED


__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "EXIT_CELLS_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE",
           "EXIT_WRITE_FAILED",
           "EvalHarnessError", "UsageError", "build_parser", "main", "parse_args"]
