"""Task files: an evaluation's settings as data, YAML files under the top-level `tasks/` folder.

Contract: a task file is a YAML mapping (`yaml.SafeLoader`; a key written twice is refused).
`description` and `source` (text) say what it evaluates and where its settings come from; `paper`
(a mapping, optional) records facts of a published evaluation that are no option (an lm-eval
group's shots and headline metric per task); every other key is an option of `run_eval.py eval`
under its destination name (`min_tokens` for `--min-tokens`) with the text the flag takes (`lengths: 2k:128k:2k`,
`stride: 256`; a list is joined with commas, a mapping written `key=value,...`, `true` gives a
switch, `null` leaves the option at its default). `load(name)` finds a file by name
(`yarn-paper/govreport` is `tasks/yarn-paper/govreport.yaml`) or by the path of a `.yaml` file;
`apply_task_file` merges it into a parsed command line: a flag given on the command line beats the
file's field, which beats the option's default. Each field goes through the flag's own argparse
parser, so a file accepts exactly what the flag accepts. A bad name or field raises
`TaskFileError` (one sentence naming the bad value and the valid ones).

The folder ships in the wheel as `evalharness/tasks` (pyproject's package-dir mapping); in a source
checkout it is the repository's `tasks/`. Its `lm-eval/` subfolder holds lm-eval task YAMLs (the
offline mirrors of lm-eval's tasks), which are not task files of the harness.
"""
from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .errors import UsageError

LM_EVAL_FOLDER = "lm-eval"  # the offline lm-eval mirrors inside tasks/
INFO_FIELDS = ("description", "source", "paper")  # the fields that are no option
NOT_FIELDS = ("command", "task")  # options a task file cannot set
_UNSET = object()  # an option the parsed arguments did not give


class TaskFileError(UsageError):
    """A task name that names no task file, or a task file that cannot be read or has a bad field."""


def tasks_root() -> Path:
    """The task folder: `evalharness/tasks` of an installed wheel, else the checkout's `tasks/`."""
    package = Path(__file__).resolve().parent
    installed = package / "tasks"
    return installed if installed.is_dir() else package.parent / "tasks"


def lm_eval_mirrors_dir() -> Path:
    """The folder of the offline lm-eval mirrors (`tasks/lm-eval`)."""
    return tasks_root() / LM_EVAL_FOLDER


def task_names() -> list[str]:
    """Every task file under the task folder by name (`yarn-paper/govreport`), sorted."""
    root = tasks_root()
    paths = (p.relative_to(root) for p in root.rglob("*.yaml"))
    return sorted(p.with_suffix("").as_posix() for p in paths if p.parts[0] != LM_EVAL_FOLDER)


@dataclass(frozen=True)
class TaskFile:
    """One task file: its name (as the run named it), path, text fields, the published facts
    (`paper`) and its option fields as written (`fields`, destination name → YAML value)."""

    name: str
    path: Path
    description: str = ""
    source: str = ""
    paper: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)

    def arguments(self, key: str) -> list[str]:
        """The command-line arguments that field `key` stands for (`stride: 256` → `--stride 256`)."""
        return field_arguments(key, self.fields[key])


def field_arguments(key: str, value: Any) -> list[str]:
    """A field's value as the flag's arguments: a list joined with commas, a mapping as
    `key=value,...`, `true` the bare switch, `false`/`null` nothing."""
    flag = "--" + key.replace("_", "-")
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, Mapping):
        return [flag, ",".join(f"{k}={v}" for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, str(value)]


def resolve(name: str) -> tuple[str, Path]:
    """(name, path) of a task: a name under the task folder, or the path of a .yaml/.yml file."""
    text = str(name).strip()
    valid = f"valid: {', '.join(task_names())}, or the path of a .yaml task file"
    if text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            raise TaskFileError(f"task file {text!r} {state}; {valid}.")
        return text, path
    if text not in task_names():
        raise TaskFileError(f"unknown task {text!r}; {valid}.")
    return text, tasks_root() / f"{text}.yaml"


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently; YAML 1.2 says keys are unique)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise RepeatedField(", ".join(repeated))
        return super().construct_mapping(node, deep=deep)


class RepeatedField(ValueError):
    """A key written twice in one mapping of a task file (the key is the message)."""


def load(name: str) -> TaskFile:
    """The task file `name` (a name under the task folder or a .yaml path), its fields split into
    text, `paper` and options (not yet checked against the options: `apply_task_file` does that)."""
    name, path = resolve(name)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # safe: SafeLoader's tags
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TaskFileError(f"task file {name} cannot be read as YAML ({reason}); fix the file.") from None
    except RepeatedField as exc:
        raise TaskFileError(f"task file {name} writes the field {exc} twice; keep one.") from None
    if not isinstance(data, dict):
        raise TaskFileError(f"task file {name} holds {type(data).__name__}, not a mapping of fields like "
                            "`lengths: 2k:16k:2k`; fix the file.")
    paper = data.get("paper") or {}
    if not isinstance(paper, dict):
        raise TaskFileError(f"task file {name}: field paper must be a mapping, not {paper!r}.")
    return TaskFile(name, path, str(data.get("description") or ""), str(data.get("source") or ""), paper,
                    {str(k): v for k, v in data.items() if k not in INFO_FIELDS})


class _Checking(argparse.ArgumentParser):
    """An options parser that raises instead of printing usage and exiting (argparse's documented
    way: override `error`)."""

    def error(self, message):
        raise TaskFileError(re.sub(r"^argument [^:]+: ", "", message).rstrip("."))


def options_parser(add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """A parser of the options `add_arguments` adds that raises TaskFileError on a bad value."""
    parser = _Checking(add_help=False)
    add_arguments(parser)
    return parser


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """The destination names of the parser's options a task file may set."""
    return [name for name in vars(parser.parse_args([])) if name not in NOT_FIELDS]


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """The options `argv` gives explicitly, parsed (a fresh namespace that holds a marker for every
    option: argparse sets a default only where a name is missing, so what changed was given)."""
    names = list(vars(parser.parse_args([])))
    parsed = parser.parse_args(list(argv), namespace=argparse.Namespace(**dict.fromkeys(names, _UNSET)))
    return {name: value for name, value in vars(parsed).items() if value is not _UNSET}


def file_options(task: TaskFile, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The task file's option fields parsed by the flags' own parser; TaskFileError (one sentence)
    for a field that is no option or a value the flag refuses."""
    valid = option_names(parser)
    values: dict[str, Any] = {}
    for key, value in task.fields.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TaskFileError(f"task file {task.name} has an unknown field {key!r}{hint}; valid fields: "
                                f"{', '.join(INFO_FIELDS)} and the options {', '.join(valid)}.")
        try:
            values.update(given_options(parser, task.arguments(key)))
        except TaskFileError as exc:
            raise TaskFileError(f"task file {task.name}: field {key}: {value!r} is not valid ({exc}); "
                                f"fix the field or override it with --{key.replace('_', '-')}.") from None
    return values


def apply_task_file(args: argparse.Namespace, given: Mapping[str, Any],
                    parser: argparse.ArgumentParser) -> argparse.Namespace:
    """A new namespace: `args` with the fields of its task file `args.task` in place of every option
    not in `given` (what the command line gave: `given_options(parser, argv)`); `parser` is the
    `options_parser` of those options."""
    from_file = file_options(load(args.task), parser)
    merged = dict(vars(args))
    merged.update({name: value for name, value in from_file.items() if name not in given})
    return argparse.Namespace(**merged)
