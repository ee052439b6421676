"""Offline mirrors: the lm-eval task YAMLs shipped in `tasks/` (package data) that read local files
in the original datasets' column layouts, and pointing a copy of them at a data folder.

Contract: `copy_tasks` copies the shipped folder; `point_mirror` rewrites one mirror's `_data.yaml`
in that copy to the files found under DIR/<dataset>/ (absolute paths; lm-eval YAMLs cannot expand
environment variables) and, for mmlu_local, writes one task YAML per subject present in the data.
Bad data raises `LeaderboardError` with one sentence.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .protocol import LeaderboardError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Mirror:
    """An offline task shipped in tasks/: lm-eval name, the paper task it mirrors (if any), its
    folder in tasks/, its folder under the data dir, and the splits it reads."""

    task: str
    paper: str | None
    folder: str
    data_subdir: str
    splits: tuple[str, ...]
    columns: str


MIRRORS: dict[str, Mirror] = {m.task: m for m in (
    Mirror("arc_challenge_local", "arc_challenge", "arc_challenge_local", "arc_challenge", ("train", "test"),
           "id, question, choices {text, label}, answerKey"),
    Mirror("hellaswag_local", "hellaswag", "hellaswag_local", "hellaswag", ("train", "validation"),
           "ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label"),
    Mirror("mmlu_local", "mmlu", "mmlu_local", "mmlu", ("dev", "test"), "question, subject, choices, answer"),
    Mirror("truthfulqa_mc2_local", "truthfulqa_mc2", "truthfulqa_local", "truthfulqa", ("validation",),
           "question, mc1_targets {choices, labels}, mc2_targets {choices, labels}"),
    Mirror("truthfulqa_mc1_local", None, "truthfulqa_local", "truthfulqa", ("validation",),
           "question, mc1_targets {choices, labels}, mc2_targets {choices, labels}"),
    Mirror("passkey_local", None, "passkey_local", "passkey", ("test",),
           "prompt, passkey, context_length, prompt_tokens, depth, trial, seed"),
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
                f"{split}.parquet, or shards {split}-*.parquet, with columns {mirror.columns}); see tasks/README.md."
            )
        builders.update(DATA_FORMATS[p.suffix] for p in paths)
        files[split] = [str(p) for p in paths]
    if len(builders) > 1:
        raise LeaderboardError(f"{mirror.task}: {folder}/ mixes json and parquet files; keep one format per dataset.")
    return builders.pop(), files


def _yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def copy_tasks(out_dir: str | os.PathLike, tasks_dir: str | os.PathLike | None = None) -> Path:
    """Copy the harness's task folder (tasks/) to out_dir."""
    source = Path(tasks_dir) if tasks_dir else TASKS_DIR
    if not source.is_dir():
        raise LeaderboardError(f"the harness's task folder {source} is missing; pass tasks_dir or run from the repository.")
    out = Path(out_dir)
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def point_mirror(tasks_copy: str | os.PathLike, name: str, data_dir: str | os.PathLike | None = None) -> dict:
    """In a copy of tasks/, point one mirror at the files under data_dir (rewrite its
    `_data.yaml`; without data_dir keep the location written there) and, for mmlu_local, generate
    its per-subject tasks. Returns {"dataset_path", "data_files"[, "subjects"]}."""
    import yaml

    mirror = MIRRORS[name]
    data_yaml = Path(tasks_copy) / mirror.folder / "_data.yaml"
    if data_dir is not None:
        builder, files = local_data_files(mirror, data_dir)
        data_yaml.write_text(
            f"# written by evalharness.leaderboard from {Path(data_dir).expanduser().resolve()}\n"
            + _yaml_dump({"dataset_path": builder, "dataset_kwargs": {"data_files": files}}))
    config = yaml.safe_load(data_yaml.read_text())
    used = {"dataset_path": config["dataset_path"], "data_files": config["dataset_kwargs"]["data_files"]}
    if name == "mmlu_local":
        subjects = _mmlu_subjects(config)
        used["subjects"] = len(subjects)
        write_mmlu_subject_tasks(Path(tasks_copy) / mirror.folder, subjects)
    return used


def _mmlu_subjects(data_config: dict) -> list[str]:
    """Subjects present in the test split (read with the same datasets builder lm-eval uses)."""
    import datasets

    files = data_config["dataset_kwargs"]["data_files"]
    try:
        test = datasets.load_dataset(data_config["dataset_path"], data_files={"test": files["test"]}, split="test")
    except Exception as exc:  # noqa: BLE001 - any reader error becomes one sentence
        raise LeaderboardError(f"mmlu_local: cannot read its test split {files.get('test')} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
    if "subject" not in test.column_names:
        raise LeaderboardError(f"mmlu_local: the test split has no 'subject' column (columns: {', '.join(test.column_names)}).")
    subjects = sorted(set(test["subject"]))
    bad = [s for s in subjects if not re.fullmatch(r"[a-z0-9_]+", str(s))]
    if bad:
        raise LeaderboardError(f"mmlu_local: subject names must be lower-case words joined by '_' like cais/mmlu's; got {bad[:3]}.")
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

