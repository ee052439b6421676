"""Offline mirrors: lm-eval's own task YAMLs, through lm-eval's `include:`, with only the data source
replaced by local files in the original datasets' column layouts.

The YAMLs shipped in `tasks/lm-eval/` (`taskfiles.lm_eval_mirrors_dir`) name lm-eval's task file as
`include: "LM_EVAL_TASKS/<path in lm_eval/tasks>"` and hold no data source. Contract: `copy_tasks`
copies the folder and resolves LM_EVAL_TASKS/ to the installed lm-eval's task folder;
`point_mirror` writes the data source (`dataset_path: json|parquet`, `dataset_name: null`,
`dataset_kwargs.data_files` with absolute paths of the files under DIR/<dataset>/, or the shipped
`_data.yaml` defaults) into that mirror's YAML in the copy, and for mmlu_local one task YAML per
subject present in the data. The data keys are appended to the YAML that includes lm-eval's (one
`include:` per file: lm-eval versions merge several includes in different orders). Bad data
raises `LeaderboardError` with one sentence.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lm_eval
import yaml

from ..taskfiles import lm_eval_mirrors_dir
from .protocol import LeaderboardError

TASKS_DIR = lm_eval_mirrors_dir()
LM_EVAL_TASKS = "LM_EVAL_TASKS/"  # placeholder for the installed lm-eval's task folder in shipped YAMLs
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Mirror:
    """An offline task shipped in tasks/lm-eval/: lm-eval name, the paper task it mirrors (if any), its
    folder there, its folder under the data dir, the splits it reads, their columns, and the
    YAML in its folder that receives the data source."""

    task: str
    paper: str | None
    folder: str
    data_subdir: str
    splits: tuple[str, ...]
    columns: str
    data_yaml: str


MIRRORS: dict[str, Mirror] = {m.task: m for m in (
    Mirror("arc_challenge_local", "arc_challenge", "arc_challenge_local", "arc_challenge", ("train", "test"),
           "id, question, choices {text, label}, answerKey", "arc_challenge_local.yaml"),
    Mirror("hellaswag_local", "hellaswag", "hellaswag_local", "hellaswag", ("train", "validation"),
           "ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label",
           "hellaswag_local.yaml"),
    Mirror("mmlu_local", "mmlu", "mmlu_local", "mmlu", ("dev", "test"), "question, subject, choices, answer",
           "_subject_template.yaml"),
    Mirror("truthfulqa_mc2_local", "truthfulqa_mc2", "truthfulqa_local", "truthfulqa", ("validation",),
           "question, mc1_targets {choices, labels}, mc2_targets {choices, labels}", "truthfulqa_mc2_local.yaml"),
    Mirror("truthfulqa_mc1_local", None, "truthfulqa_local", "truthfulqa", ("validation",),
           "question, mc1_targets {choices, labels}, mc2_targets {choices, labels}", "truthfulqa_mc1_local.yaml"),
    Mirror("passkey_local", None, "passkey_local", "passkey", ("test",),
           "prompt, passkey, context_length, prompt_tokens, depth, trial, seed", "passkey_local.yaml"),
)}
LOCAL_MIRROR_OF = {m.paper: m.task for m in MIRRORS.values() if m.paper}


def split_files(folder: Path, split: str) -> list[Path]:
    """Files of one split in a data folder: `<split>.jsonl|.json|.parquet` or shards named
    `<split>-*` / `<split>_*` with those extensions (the hub's `test-00000-of-00001.parquet`)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix not in DATA_FORMATS:
            continue
        stem = path.name[: -len(path.suffix)]
        if stem == split or re.match(rf"{re.escape(split)}[-_.]", stem):
            found.append(path)
    return found


def check_json_file(mirror: Mirror, path: Path) -> None:
    """LeaderboardError naming the file and line when a .jsonl line or a .json file is not JSON
    (`datasets` would say only "An error occurred while generating the dataset"); Parquet is left to
    its reader."""
    if path.suffix not in (".jsonl", ".json"):
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LeaderboardError(f"{mirror.task}: {path} is not UTF-8 text (byte {exc.start}).") from None
    lines = enumerate(text.splitlines(), 1) if path.suffix == ".jsonl" else [(1, text)]
    for number, line in lines:
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                where = f"line {number}" if path.suffix == ".jsonl" else f"line {exc.lineno}"
                raise LeaderboardError(f"{mirror.task}: {path} {where} is not JSON ({exc.msg}).") from None


def local_data_files(mirror: Mirror, data_dir: str | os.PathLike) -> tuple[str, dict[str, list[str]]]:
    """(datasets builder, {split: [absolute file paths]}) of a mirror's data under data_dir;
    LeaderboardError (one sentence) when a split is missing or formats are mixed."""
    folder = Path(data_dir).expanduser().resolve() / mirror.data_subdir
    files: dict[str, list[str]] = {}
    builders = set()
    for split in mirror.splits:
        paths = split_files(folder, split)
        if not paths:
            raise LeaderboardError(
                f"{mirror.task}: no {split!r} split in {folder}/ (expected {split}.jsonl, {split}.json or "
                f"{split}.parquet, or shards {split}-*.parquet, with columns {mirror.columns}); see "
                "tasks/lm-eval/README.md."
            )
        builders.update(DATA_FORMATS[p.suffix] for p in paths)
        for path in paths:
            check_json_file(mirror, path)
        files[split] = [str(p) for p in paths]
    if len(builders) > 1:
        raise LeaderboardError(f"{mirror.task}: {folder}/ mixes json and parquet files; keep one format per dataset.")
    return builders.pop(), files


def _yaml_dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's task folder (what LM_EVAL_TASKS/ stands for)."""
    return Path(lm_eval.__file__).resolve().parent / "tasks"


def resolve_lm_eval_includes(folder: str | os.PathLike) -> None:
    """Replace LM_EVAL_TASKS/ by the installed lm-eval's task folder in every YAML under folder;
    LeaderboardError when lm-eval lacks a task file a mirror includes."""
    tasks = lm_eval_tasks_dir()
    for path in sorted(Path(folder).rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if LM_EVAL_TASKS not in text:
            continue
        for included in re.findall(rf'"{re.escape(LM_EVAL_TASKS)}([^"]+)"', text):
            if not (tasks / included).is_file():
                raise LeaderboardError(f"{path.name} includes lm-eval's {included}, which the installed lm-eval "
                                       f"({tasks}) does not have; install the lm-eval version in pyproject.toml.")
        path.write_text(text.replace(f'"{LM_EVAL_TASKS}', f'{json.dumps(str(tasks))[:-1]}/'), encoding="utf-8")


def copy_tasks(out_dir: str | os.PathLike, tasks_dir: str | os.PathLike | None = None) -> Path:
    """Copy the harness's lm-eval task folder (tasks/lm-eval/) to out_dir and resolve its lm-eval includes."""
    source = Path(tasks_dir) if tasks_dir else TASKS_DIR
    if not source.is_dir():
        raise LeaderboardError(f"the harness's task folder {source} is missing; pass tasks_dir or run from the "
                               f"repository.")
    out = Path(out_dir)
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    resolve_lm_eval_includes(out)
    return out


def point_mirror(tasks_copy: str | os.PathLike, name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """In a copy of tasks/lm-eval/, point one mirror at the files under data_dir (without data_dir: the
    shipped `_data.yaml` defaults): its data source is appended to the mirror's YAML (and written
    to `_data.yaml` for the record); for mmlu_local, generate its per-subject tasks. Returns
    {"dataset_path", "data_files"[, "subjects"]}."""
    mirror = MIRRORS[name]
    folder = Path(tasks_copy) / mirror.folder
    if data_dir is not None:
        builder, files = local_data_files(mirror, data_dir)
        config = {"dataset_path": builder, "dataset_kwargs": {"data_files": files}}
        origin = f"--leaderboard-data {Path(data_dir).expanduser().resolve()}"
        (folder / "_data.yaml").write_text(f"# written by evalharness.leaderboard from {origin}\n" + _yaml_dump(config))
    else:
        config = yaml.safe_load((folder / "_data.yaml").read_text())
        origin = "the shipped _data.yaml"
    source = {"dataset_path": config["dataset_path"], "dataset_name": None,
              "dataset_kwargs": {"data_files": config["dataset_kwargs"]["data_files"]}}
    with (folder / mirror.data_yaml).open("a", encoding="utf-8") as fh:
        fh.write(f"# data source, written by evalharness.leaderboard.point_mirror from {origin}\n" + _yaml_dump(source))
    used = {"dataset_path": config["dataset_path"], "data_files": config["dataset_kwargs"]["data_files"]}
    if name == "mmlu_local":
        subjects = _mmlu_subjects(config)
        used["subjects"] = len(subjects)
        write_mmlu_subject_tasks(folder, subjects)
    return used


def _mmlu_subjects(data_config: dict) -> list[str]:
    """Subjects present in the test split (read with the same datasets builder lm-eval uses)."""
    import datasets  # lazy: ≈ 1.3 s, only for mmlu_local's subject list

    files = data_config["dataset_kwargs"]["data_files"]
    try:
        test = datasets.load_dataset(data_config["dataset_path"], data_files={"test": files["test"]}, split="test")
    except Exception as exc:  # noqa: BLE001 - any reader error becomes one sentence
        raise LeaderboardError(f"mmlu_local: cannot read its test split {files.get('test')} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
    if "subject" not in test.column_names:
        raise LeaderboardError(f"mmlu_local: the test split has no 'subject' column (columns: "
                               f"{', '.join(test.column_names)}).")
    subjects = sorted(set(test["subject"]))
    bad = [s for s in subjects if not re.fullmatch(r"[a-z0-9_]+", str(s))]
    if bad:
        raise LeaderboardError(f"mmlu_local: subject names must be lower-case words joined by '_' like cais/mmlu's; "
                               f"got {bad[:3]}.")
    return subjects


def write_mmlu_subject_tasks(folder: Path, subjects: Sequence[str]) -> None:
    """One small YAML per subject next to mmlu_local/utils.py (its `!function` resolves there)."""
    for old in folder.glob("mmlu_local_*.yaml"):
        old.unlink()
    for subject in subjects:
        about = subject.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {about}.\n\n"
        (folder / f"mmlu_local_{subject}.yaml").write_text(
            "include: _subject_template.yaml\n"
            f"task: mmlu_local_{subject}\n"
            f"task_alias: {subject}\n"
            "tag: mmlu_local_subjects\n"
            f"description: {json.dumps(description)}\n"
            f"process_docs: !function utils.only_{subject}\n"
        )

