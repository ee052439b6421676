"""The lm-eval bridge: Open LLM leaderboard tasks (YaRN paper, Table 3) on the scaled model.

The model that `scaling.apply_scaling` scaled is handed to lm-eval's `HFLM` as the object itself
(never reloaded), with an explicit `max_length`: lm-eval otherwise reads
`config.max_position_embeddings`, which knows nothing of the scaling.

Paper protocol (`PAPER_TASKS`): arc_challenge 25-shot acc_norm, hellaswag 10-shot acc_norm, mmlu
5-shot accuracy as the UNWEIGHTED mean of its subject accuracies (`acc_macro`; lm-eval's own group
number is weighted by subject size and is kept as `acc_weighted`), truthfulqa_mc2 0-shot `acc`
(the MC2 score). Each task is its own `lm_eval.simple_evaluate` call (the `openllm` group is not
reliable across lm-eval versions). Any other lm-eval task or group name, or the path of a task
YAML, passes through with its own defaults and all of its metrics recorded.

Offline use: the harness ships lm-eval task YAMLs under `tasks/` that read local files in the
original datasets' column layouts (`MIRRORS`). With `data_dir` (CLI `--leaderboard-data DIR`) each
paper task whose folder DIR/<dataset>/ exists runs as its mirror on the files found there (see
tasks/README.md); the YAMLs are copied to a temporary folder and their `_data.yaml` rewritten to
point at the files.
A hub task whose dataset is neither cached nor reachable fails as one cell with one sentence that
says how to get it; the other tasks still run. When the Hub cannot be reached, datasets/hub
offline mode is switched on for the duration of the lm-eval call, so the failure takes a second
instead of datasets' ~25 s of retries per dataset.

Context length (`default_max_length`): static methods (pi, ntk, ntk-by-parts, yarn) get the extended
context factor × L; base and dynamic methods get L. Dynamic scaling is the identity for sequences
≤ L, so with the default a dynamic-X cell equals base; pass `max_length` to let longer prompts
through. lm-eval truncates longer prompts from the left. Dynamic methods run with batch size 1 (a
padded batch would set the scale from the longest sequence) and generate without KV cache (cached
keys would keep an earlier length's scale).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

# name → (num_fewshot, metric of the paper's table)
PAPER_TASKS: dict[str, tuple[int, str]] = {
    "arc_challenge": (25, "acc_norm"),
    "hellaswag": (10, "acc_norm"),
    "mmlu": (5, "acc_macro"),
    "truthfulqa_mc2": (0, "acc"),
}

# Tasks whose headline number is the unweighted mean over their leaf tasks (subjects).
MACRO_GROUPS = ("mmlu", "mmlu_local")

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
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

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


class LeaderboardError(ValueError):
    """A leaderboard task cannot run (missing local data, unknown task, dataset offline)."""


# ---------------------------------------------------------------------------------------------
# Context length
# ---------------------------------------------------------------------------------------------

def default_max_length(spec) -> int:
    """lm-eval's max_length for a resolved spec: factor × L for static methods (the extended
    context), L for base and dynamic methods."""
    if spec.method == "base" or spec.is_dynamic:
        return int(spec.original_ctx)
    return int(round(spec.factor * spec.original_ctx))


# ---------------------------------------------------------------------------------------------
# Local data: find files, prepare a task folder
# ---------------------------------------------------------------------------------------------

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


def prepare_tasks(out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                  mirrors: Sequence[str] | None = None, tasks_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Copy the harness's task YAMLs to out_dir and point the mirrors (default: all) at data_dir;
    return {mirror: {"dataset_path", "data_files"[, "subjects"]}}. Raises LeaderboardError."""
    out = copy_tasks(out_dir, tasks_dir)
    return {name: point_mirror(out, name, data_dir) for name in (list(MIRRORS) if mirrors is None else mirrors)}


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


# ---------------------------------------------------------------------------------------------
# Passkey prompts (the paper's text) for the passkey_local task
# ---------------------------------------------------------------------------------------------

def passkey_documents(tokenizer, lengths: Sequence[int], trials: int = 5, seed: int = 0) -> list[dict]:
    """Rows for the passkey_local task: the prompts of `evalharness.passkey.build_prompt` (the
    paper's text, at most `length` tokens with BOS, seeded 5-digit keys) at a uniformly random
    depth per trial, as in the paper."""
    import random

    from .passkey import build_prompt

    rng = random.Random(seed)
    docs = []
    for length in lengths:
        for trial in range(trials):
            prompt = build_prompt(tokenizer, int(length), round(rng.random(), 6), seed=seed, trial=trial)
            docs.append({"prompt": prompt.text, "passkey": str(prompt.passkey), "context_length": int(length),
                         "prompt_tokens": prompt.prompt_tokens, "depth": prompt.depth, "trial": trial, "seed": seed})
    return docs


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Task plans
# ---------------------------------------------------------------------------------------------

@dataclass
class TaskPlan:
    """How one requested task runs: lm-eval name, where lm-eval finds it, the paper protocol."""

    requested: str
    name: str  # lm-eval task/group name, also the `task` column
    kind: str  # "hub" (lm-eval's built-in tasks), "mirror" (tasks/), "yaml" (a user's YAML)
    num_fewshot: int | None = None
    metric: str | None = None  # the headline metric (None: every metric lm-eval reports)
    yaml_dir: Path | None = None
    error: str | None = None
    info: dict = field(default_factory=dict)


def plan_tasks(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[TaskPlan]:
    """Resolve requested names. A paper task runs as its local mirror when data_dir has that
    dataset's folder (DIR/arc_challenge/, DIR/hellaswag/, DIR/mmlu/, DIR/truthfulqa/), else as
    lm-eval's hub task. Names of shipped mirrors run from tasks/; `.yaml`/`.yml` paths load through
    lm-eval's TaskManager with their folder as include_path; anything else is an lm-eval task or
    group name."""
    plans = []
    for requested in tasks:
        requested = str(requested).strip()
        if not requested:
            continue
        if requested.endswith((".yaml", ".yml")):
            plans.append(_yaml_plan(requested))
            continue
        name = requested
        mirror = LOCAL_MIRROR_OF.get(requested)
        if mirror and data_dir is not None and (Path(data_dir).expanduser() / MIRRORS[mirror].data_subdir).is_dir():
            name = mirror
        if name in MIRRORS:
            paper = MIRRORS[name].paper
            shots, metric = PAPER_TASKS[paper] if paper else (None, None)
            plans.append(TaskPlan(requested, name, "mirror", shots, metric))
        else:
            shots, metric = PAPER_TASKS.get(name, (None, None))
            plans.append(TaskPlan(requested, name, "hub", shots, metric))
    return plans


def check_task_names(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[TaskPlan]:
    """Plans for the requested tasks, or LeaderboardError naming every task lm-eval does not know
    and every YAML that cannot be read (checked before any model is loaded)."""
    plans = plan_tasks(tasks, data_dir)
    problems = [p.error for p in plans if p.error]
    hub = [p for p in plans if p.kind == "hub"]
    if hub:
        known = set(_builtin_task_manager().all_tasks)
        unknown = [p.requested for p in hub if p.name not in known]
        if unknown:
            problems.append(f"unknown lm-eval task {', '.join(map(repr, unknown))} (see `lm_eval --tasks list`; "
                            f"shipped offline mirrors: {', '.join(sorted(MIRRORS))}; or give a task YAML path).")
    if not plans:
        problems.append("--leaderboard-tasks names no task.")
    if problems:
        raise LeaderboardError(" ".join(problems))
    return plans


def _yaml_plan(path_text: str) -> TaskPlan:
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path_text).expanduser()
    if not path.is_file():
        return TaskPlan(path_text, path.stem, "yaml", error=f"task YAML {path_text} does not exist.")
    try:
        config = load_yaml(path, resolve_func=False)  # read only: `!function` tags stay unresolved
    except Exception as exc:  # noqa: BLE001
        return TaskPlan(path_text, path.stem, "yaml", error=f"cannot read task YAML {path_text} ({type(exc).__name__}: {exc}).")
    name = config.get("group") or config.get("task")
    if not isinstance(name, str):
        return TaskPlan(path_text, path.stem, "yaml", error=f"task YAML {path_text} names no `task` or `group`.")
    shots, metric = PAPER_TASKS.get(name, (None, None))
    plan = TaskPlan(path_text, name, "yaml", shots, metric, yaml_dir=path.resolve().parent)
    plan.info["is_group"] = "group" in config
    return plan


@functools.lru_cache(maxsize=1)
def _builtin_task_manager():
    """lm-eval's index of its ~15k built-in tasks (several seconds to build: built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _folder_task_manager(folder: str, with_builtins: bool):
    """lm-eval's TaskManager over one folder of YAMLs (read when the task loads, never executed
    here); with lm-eval's built-in tasks too when the YAML is a group that may name them."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=folder, include_defaults=with_builtins)


# ---------------------------------------------------------------------------------------------
# Offline handling
# ---------------------------------------------------------------------------------------------

def _env_offline() -> bool:
    true = {"1", "ON", "YES", "TRUE"}
    return any(os.environ.get(v, "").upper() in true for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the Hugging Face endpoint be opened (once per process)?"""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_mode(active: bool):
    """Switch datasets/huggingface_hub to offline mode (they read the environment only at import
    time, so setting HF_DATASETS_OFFLINE later has no effect) and restore the flags afterwards."""
    if not active:
        yield
        return
    import datasets.config as dconfig
    import huggingface_hub.constants as hconstants

    saved = (dconfig.HF_HUB_OFFLINE, getattr(dconfig, "HF_DATASETS_OFFLINE", None), hconstants.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = True
    if hasattr(dconfig, "HF_DATASETS_OFFLINE"):
        dconfig.HF_DATASETS_OFFLINE = True
    hconstants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE = saved[0]
        if saved[1] is not None:
            dconfig.HF_DATASETS_OFFLINE = saved[1]
        hconstants.HF_HUB_OFFLINE = saved[2]


def _dataset_unavailable(exc: BaseException) -> bool:
    """Is this the datasets/hub error of a dataset that is neither cached nor downloadable?"""
    names = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError", "HfHubHTTPError",
             "RepositoryNotFoundError"}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if type(exc).__name__ in names or isinstance(exc, ConnectionError) or (
            isinstance(exc, FileNotFoundError) and ("is not cached" in text or "on the Hub" in text)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _hub_dataset_of(plan: TaskPlan, exc: BaseException) -> str:
    """`'path'` or `'path' (config)` of the dataset a hub task needed."""
    entry = None
    try:
        entry = _builtin_task_manager().task_index.get(plan.name)
    except Exception:  # noqa: BLE001
        pass
    cfg = (entry.cfg or {}) if entry is not None else {}
    path = cfg.get("dataset_path")
    if not path:
        match = re.search(r"'([\w.\-]+/[\w.\-]+)'", str(exc))
        path = match.group(1) if match else None
    if not path:
        return "its dataset"
    name = cfg.get("dataset_name")
    return f"'{path}'" + (f" ({name})" if name else "")


def offline_message(plan: TaskPlan, exc: BaseException, offline: bool) -> str:
    """One sentence: which dataset is missing and the two ways to get it."""
    dataset = _hub_dataset_of(plan, exc)
    mirror = LOCAL_MIRROR_OF.get(plan.name)
    local = (f"or give --leaderboard-data DIR with a local copy in DIR/{MIRRORS[mirror].data_subdir}/ to run the "
             f"offline mirror {mirror} (tasks/README.md)" if mirror else
             "or run a task YAML that reads a local copy (dataset_path: json with data_files, tasks/README.md)")
    if offline:
        return (f"{plan.name}: dataset {dataset} is not in the local Hugging Face cache and the Hub is offline or "
                f"unreachable, so download it once with network access (any online run of this task fills the "
                f"cache) {local}.")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{plan.name}: dataset {dataset} could not be loaded from the Hub ({type(exc).__name__}: {first}); {local}."


# ---------------------------------------------------------------------------------------------
# lm-eval model wrapper
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _harness_lm_class():
    from lm_eval.models.huggingface import HFLM

    try:  # lm-eval ≥ 0.4.10 moved the HF helpers to utils_hf
        from lm_eval.models.utils_hf import stop_sequences_criteria
    except ImportError:  # pragma: no cover - older lm-eval
        from lm_eval.models.utils import stop_sequences_criteria

    class HarnessLM(HFLM):
        """HFLM over an already-loaded model: progress bars on/off, and generation without KV
        cache for dynamic scaling (HFLM hard-codes use_cache=True)."""

        def __init__(self, *args, show_progress: bool = True, use_kv_cache: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.show_progress = show_progress
            self.use_kv_cache = use_kv_cache

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.show_progress)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not self.show_progress)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.show_progress)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if self.use_kv_cache:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            temperature = generation_kwargs.pop("temperature", 0.0)
            if temperature == 0.0 and generation_kwargs.get("do_sample") is None:
                generation_kwargs["do_sample"] = False
            if not (generation_kwargs.get("do_sample") is False and temperature == 0.0):
                generation_kwargs["temperature"] = temperature
            criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
            return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                       pad_token_id=self.tokenizer.pad_token_id, use_cache=False,
                                       **generation_kwargs)

    return HarnessLM


def wrap_model(model, tokenizer, max_length: int, batch_size: int = 1, show_progress: bool = True,
               use_kv_cache: bool = True):
    """The model object itself inside lm-eval's HFLM, with an explicit max_length."""
    return _harness_lm_class()(pretrained=model, tokenizer=tokenizer, max_length=int(max_length),
                               batch_size=int(batch_size), show_progress=show_progress, use_kv_cache=use_kv_cache)


# ---------------------------------------------------------------------------------------------
# Results → rows
# ---------------------------------------------------------------------------------------------

def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic):
                return float(value)
        except ImportError:
            pass
        return None
    return float(value)


def leaf_tasks(results: dict, name: str) -> list[str]:
    """The leaf tasks under a group (itself when it is a task), depth first."""
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    leaves = []
    for child in children:
        leaves += leaf_tasks(results, child)
    return leaves


def _n_samples(results: dict, name: str) -> int | None:
    counts = results.get("n-samples", {})
    total = 0
    for leaf in leaf_tasks(results, name):
        entry = counts.get(leaf)
        if entry is None:
            return None
        total += int(entry.get("effective", entry.get("original", 0)))
    return total


def macro_mean(results: dict, group: str, metric: str = "acc") -> dict:
    """Unweighted mean of `metric` over the group's leaf tasks (the paper's MMLU number), its
    standard error (independent subjects: √Σse²/k), the size-weighted mean recomputed from the
    same rows, and the subject accuracies."""
    per_subject, stderrs, sizes = {}, [], []
    for leaf in leaf_tasks(results, group):
        entry = results["results"].get(leaf, {})
        value = _number(entry.get(f"{metric},none"))
        if value is None:
            continue
        per_subject[leaf] = value
        se = _number(entry.get(f"{metric}_stderr,none"))
        stderrs.append(se if se is not None else math.nan)
        sizes.append(_n_samples(results, leaf) or 0)
    if not per_subject:
        raise LeaderboardError(f"{group}: lm-eval reported no per-subject {metric}.")
    k = len(per_subject)
    values = list(per_subject.values())
    weighted = sum(v * n for v, n in zip(values, sizes)) / sum(sizes) if sum(sizes) else math.nan
    return {"macro": sum(values) / k, "stderr": math.sqrt(sum(se * se for se in stderrs)) / k,
            "weighted": weighted, "subjects": per_subject, "n_samples": sum(sizes)}


def result_rows(results: dict, key: dict, plan: TaskPlan) -> list[dict]:
    """Tidy leaderboard rows from one simple_evaluate result: every numeric metric of every task
    and group (`metric` for lm-eval's `none` filter, `metric,filter` otherwise); for MMLU groups
    `acc_macro` (the paper's number) and the group's own number renamed `acc_weighted`."""
    rows = []
    n_shot = results.get("n-shot", {})
    macro_group = plan.name in MACRO_GROUPS
    groups = set(results.get("group_subtasks", {}))
    for name, entry in results["results"].items():
        for metric_key, value in entry.items():
            if "," not in metric_key or "_stderr," in metric_key:
                continue
            number = _number(value)
            if number is None:
                continue
            metric, filter_name = metric_key.split(",", 1)
            stderr = _number(entry.get(f"{metric}_stderr,{filter_name}"))
            label = metric if filter_name == "none" else f"{metric},{filter_name}"
            if macro_group and name in groups and label == "acc":
                label = "acc_weighted"
            shots = n_shot.get(name, plan.num_fewshot)
            rows.append(dict(key, task=name, metric=label, value=number,
                             stderr=stderr if stderr is not None else math.nan,
                             num_fewshot=int(shots) if shots is not None else plan.num_fewshot,
                             n_samples=_n_samples(results, name)))
    if macro_group and plan.name in results["results"]:
        macro = macro_mean(results, plan.name)
        rows.append(dict(key, task=plan.name, metric="acc_macro", value=macro["macro"], stderr=macro["stderr"],
                         num_fewshot=plan.num_fewshot if plan.num_fewshot is not None else n_shot.get(plan.name),
                         n_samples=macro["n_samples"]))
    return rows


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def provenance_path(out_dir: str | os.PathLike, spec, task: str) -> Path:
    """out_dir/lm_eval/<method>_<factor>_<task>.json"""
    return Path(out_dir) / "lm_eval" / f"{_safe(spec.label)}_{spec.factor:g}_{_safe(task)}.json"


def _save_results(path: Path, results: dict, extra: dict, save_samples: bool) -> None:
    from lm_eval.utils import handle_non_serializable

    from .results import atomic_write_text

    samples = results.pop("samples", None)
    body = dict(results, evalharness=extra)
    atomic_write_text(path, json.dumps(body, indent=2, default=handle_non_serializable) + "\n")
    if save_samples and samples:
        lines = []
        for task, items in samples.items():
            for item in items:
                lines.append(json.dumps(dict(item, task=task), default=handle_non_serializable))
        atomic_write_text(path.with_name(path.stem + "_samples.jsonl"), "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# The task runner
# ---------------------------------------------------------------------------------------------

def _done_cells(store) -> tuple[set, set]:
    """(keys of (key columns, task, metric) rows, keys of (key columns, task)) already in the store
    (including the folders it resumes from)."""
    with_metric = store.done("leaderboard")  # CELL_COLUMNS: key columns, task, metric
    return with_metric, {key[:-1] for key in with_metric}


def _is_done(plan: TaskPlan, key: dict, done: tuple[set, set]) -> bool:
    from .results import _normalise_key

    base = tuple(_normalise_key(key[c]) for c in ("model", "method", "factor", "original_ctx")) + (_normalise_key(plan.name),)
    if plan.metric:
        return base + (_normalise_key(plan.metric),) in done[0]
    return base in done[1]


def run_leaderboard(model, tokenizer, model_name: str, specs, tasks: Sequence[str], store, manifest, out_dir,
                    limit: int | float | dict[str, int] | None = None, batch_size: int = 1, max_length: int | None = None, seed: int = 0,
                    show_progress: bool = True, data_dir: str | os.PathLike | None = None,
                    save_samples: bool = False, bootstrap_iters: int = 1000) -> list[str]:
    """Evaluate every (spec, task) cell not already in the store; return the failed cells.

    Each spec is applied to `model` in place (`apply_scaling`) and lm-eval evaluates that object
    with max_length = `max_length` or `default_max_length(spec)`. Rows go to leaderboard.csv as
    soon as a task finishes; lm-eval's results JSON goes to out_dir/lm_eval/ (with `save_samples`,
    also the per-example requests and log-likelihoods). `data_dir` runs the paper tasks as the
    offline mirrors in tasks/ on local files. Seeds of python, numpy, torch and the few-shot
    sampler are all `seed`. `bootstrap_iters` only matters for metrics without a closed-form
    standard error (lm-eval's own default is 100000).
    """
    import lm_eval

    from .results import key_row, record_failure
    from .scaling import apply_scaling

    plans = plan_tasks(tasks, data_dir)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="evalharness-tasks-") as tmp:
        mirror_dir = None
        mirror_data: dict[str, dict] = {}
        mirror_names = [p.name for p in plans if p.kind == "mirror"]
        if mirror_names:
            for name in dict.fromkeys(mirror_names):  # one mirror at a time: bad data fails only its task
                try:
                    mirror_dir = mirror_dir or copy_tasks(Path(tmp) / "tasks")
                    mirror_data[name] = point_mirror(mirror_dir, name, data_dir)
                except LeaderboardError as exc:
                    for plan in plans:
                        if plan.name == name:
                            plan.error = str(exc)
        offline = None  # decided on the first hub task
        managers: dict = {}

        def task_manager_for(plan: TaskPlan):
            if plan.kind == "hub":
                return _builtin_task_manager()
            folder, builtins = (str(mirror_dir), False) if plan.kind == "mirror" else (
                str(plan.yaml_dir), bool(plan.info.get("is_group")))
            if (folder, builtins) not in managers:
                managers[folder, builtins] = _folder_task_manager(folder, builtins)
            return managers[folder, builtins]

        for spec in specs:
            resolved = apply_scaling(model, spec)
            key = key_row(model_name, resolved)
            done = _done_cells(store)
            todo = [p for p in plans if not _is_done(p, key, done)]
            if not todo:
                continue
            length = int(max_length) if max_length else default_max_length(resolved)
            cell_batch = 1 if resolved.is_dynamic else batch_size
            lm = wrap_model(model, tokenizer, length, cell_batch, show_progress, use_kv_cache=not resolved.is_dynamic)
            for plan in todo:
                cell = f"leaderboard|{model_name}|{resolved.short}|{plan.name}"
                if plan.error:
                    record_failure(manifest, failed, cell, plan.error)
                    continue
                if plan.kind == "hub" and offline is None:
                    offline = _env_offline() or not hub_reachable()
                start = time.monotonic()
                task_limit = limit.get(plan.requested) if isinstance(limit, dict) else limit
                try:
                    task_manager = task_manager_for(plan)
                    with _offline_mode(bool(offline)):
                        results = lm_eval.simple_evaluate(
                            model=lm, tasks=[plan.name], num_fewshot=plan.num_fewshot, limit=task_limit,
                            task_manager=task_manager, bootstrap_iters=bootstrap_iters, log_samples=save_samples,
                            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                            fewshot_random_seed=seed,
                        )
                    rows = result_rows(results, key, plan)
                    if plan.metric and not any(r["task"] == plan.name and r["metric"] == plan.metric for r in rows):
                        raise LeaderboardError(f"{plan.name}: lm-eval reported no {plan.metric} "
                                               f"(got {sorted({r['metric'] for r in rows if r['task'] == plan.name})}).")
                    extra = {"spec": str(resolved), "max_length": length, "batch_size": cell_batch, "limit": task_limit,
                             "seed": seed, "task": plan.name, "requested": plan.requested, "kind": plan.kind,
                             "data": mirror_data.get(plan.name)}
                    path = provenance_path(out_dir, resolved, plan.name)
                    _save_results(path, results, extra, save_samples)
                    store.append("leaderboard", rows)
                    info = {"seconds": round(time.monotonic() - start, 1), "max_length": length, "lm_eval_json": str(path)}
                    if plan.name in mirror_data and "subjects" in mirror_data[plan.name]:
                        info["subjects"] = mirror_data[plan.name]["subjects"]
                    manifest.cell(cell, "done", **info)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise anything; one cell fails
                    record_failure(manifest, failed, cell, _failure_text(plan, exc, bool(offline)))
    return failed


def _failure_text(plan: TaskPlan, exc: BaseException, offline: bool) -> str:
    if isinstance(exc, LeaderboardError):
        return str(exc)
    if plan.kind == "hub" and _dataset_unavailable(exc):
        return offline_message(plan, exc, offline)
    if isinstance(exc, KeyError) and "not a registered task" in str(exc):
        return (f"{plan.name!r} is not an lm-eval task, group or tag name (nor a task YAML path); "
                f"`lm_eval ls tasks` lists them.")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"

