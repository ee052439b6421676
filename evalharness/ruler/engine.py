"""RULER through lm-eval's own tasks: `RulerCells` is the runner task `ruler`, one cell per (scaling
spec, RULER task, length) run by `lm_eval.simple_evaluate` on the scaled model object. Every method
and resumed run sees the same prompts; a cell's score (the mean of the per-sample metric) must equal
lm-eval's aggregate; errors inside lm-eval fail the cell, errors in evalharness's own code propagate.

Protocol: docs/tasks-and-protocols.md#ruler
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import hub
from ..errors import CellFailure, UsageError, delegated_failures
from ..leaderboard.extract import in_run_folder, provenance_path, save_results
from ..leaderboard.lm import wrap_model
from ..leaderboard.mirrors import lm_eval_tasks_dir
from ..leaderboard.protocol import lm_eval_seeds
from ..leaderboard.run import one_process_view
from ..options import comma_items
from ..plan import Cell, cell_name
from ..prefill import prefill_chunk_for
from ..results import cell_key, key_row
from ..runner import Task

# lm-eval's RULER tasks whose data is generated locally (no download).
OFFLINE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
# lm-eval's RULER tasks that download a haystack (Paul Graham essays) or QA data set (SQuAD, HotpotQA).
DOWNLOAD_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery",
                  "ruler_qa_squad", "ruler_qa_hotpot")
ALIASES = {"vt": "ruler_vt", "cwe": "ruler_cwe", "fwe": "ruler_fwe", "qa_squad": "ruler_qa_squad",
           "qa_hotpot": "ruler_qa_hotpot"}
# The generation budget of every RULER task (`max_gen_toks`, the generators' `tokens_to_generate`).
MAX_GEN_TOKENS = 128


class RulerTaskFailure(CellFailure):
    """One RULER cell failed (lm-eval raised, data unreachable, scores inconsistent)."""


def resolve_tasks(text: str) -> list[str]:
    """`--ruler-tasks`: `ruler` = the offline tasks; otherwise a comma list of lm-eval RULER task
    names (or the short names vt, cwe, fwe, qa_squad, qa_hotpot), duplicates dropped.

    Raises:
        UsageError: an unknown name (one sentence listing the valid ones).
    """
    names = comma_items(text, "--ruler-tasks")
    if not names:
        raise UsageError(f"--ruler-tasks {text!r} names no task; give ruler or RULER task names.")
    tasks: list[str] = []
    for name in names:
        if name == "ruler":
            tasks += OFFLINE_TASKS
            continue
        name = ALIASES.get(name, name)
        if name not in OFFLINE_TASKS + DOWNLOAD_TASKS:
            raise UsageError(f"--ruler-tasks: {name!r} is not a RULER task; valid: ruler (the offline ones: "
                             f"{', '.join(OFFLINE_TASKS)}) or {', '.join(DOWNLOAD_TASKS)}.")
        tasks.append(name)
    return list(dict.fromkeys(tasks))


def lm_eval_task_folder() -> Path:
    """lm-eval's own folder of RULER task YAMLs (and their generators)."""
    return lm_eval_tasks_dir() / "ruler"


def sample_scores(samples: list[dict], length: int) -> list[tuple[int, float]]:
    """(doc_id, the task's own per-sample metric at `length`) of each logged sample, by doc_id."""
    key = str(int(length))
    missing = [s.get("doc_id") for s in samples if key not in s or float(s[key]) < 0]
    if missing:
        raise RulerTaskFailure(f"lm-eval logged no per-sample metric {key!r} for samples {missing[:3]}.")
    return sorted((int(s["doc_id"]), float(s[key])) for s in samples)


def mean_and_stderr(scores: Sequence[float]) -> tuple[float, float]:
    """Mean x̄ and its standard error √(Σ(x−x̄)²/(n−1)) / √n (NaN for n < 2)."""
    n = len(scores)
    if n == 0:
        raise RulerTaskFailure("no samples were scored.")
    mean = sum(scores) / n
    if n < 2:
        return mean, math.nan
    variance = sum((x - mean) ** 2 for x in scores) / (n - 1)
    return mean, math.sqrt(variance / n)


def cell_scores(results: dict, task: str, length: int) -> tuple[list[tuple[int, float]], float, float]:
    """(per-sample (doc_id, score), mean, stderr) of one cell from `simple_evaluate`'s output
    (log_samples=True), checked against lm-eval's aggregate for `length` where it computed one."""
    scores = sample_scores(results.get("samples", {}).get(task, []), length)
    mean, stderr = mean_and_stderr([score for _, score in scores])
    aggregate = results.get("results", {}).get(task, {}).get(f"{int(length)},none")
    if isinstance(aggregate, (int, float)) and not math.isclose(aggregate, mean, rel_tol=1e-9, abs_tol=1e-12):
        raise RulerTaskFailure(f"{task} at {length}: the mean of the samples, {mean}, differs from lm-eval's "
                               f"aggregate {aggregate}.")
    return scores, mean, stderr


def failure_text(task: str, exc: BaseException) -> str:
    """One sentence for a failed cell."""

    if isinstance(exc, RulerTaskFailure):
        return str(exc)
    if task == "ruler_cwe" and isinstance(exc, ZeroDivisionError):
        return ("ruler_cwe: lm-eval's generator made samples without any word to find (its smallest prompt did "
                "not fit the length with this tokenizer) and its metric divided by zero; run ruler_cwe at longer "
                "--lengths.")
    if isinstance(exc, ModuleNotFoundError):
        return (f"{task}: lm-eval's RULER tasks need the python package {exc.name!r}, which is not installed "
                f"(pip install 'lm_eval[ruler]').")
    if task in DOWNLOAD_TASKS and (hub.unavailable_reason(exc) or isinstance(exc, (OSError, ConnectionError))):
        return (f"{task}: its data (essays, SQuAD or HotpotQA) must be downloaded and cannot be reached; "
                f"the offline RULER tasks are {', '.join(OFFLINE_TASKS)}.")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{task}: {type(exc).__name__}: {text}"


# The python/numpy seed of the draws the generator checks measure (so a check answers the same every time).
CHECK_SEED = 0
# lm-eval's ruler_vt builds its few-shot example with a hard-coded budget of 500 tokens, 5 noise lines at
# least and 30 generated tokens (vt_utils.get_dataset / sys_vartrack_w_noise_random); the task itself
# starts from 10 noise lines. When even the smallest of these does not fit, lm-eval's retry loop never ends.
VT_EXAMPLE_BUDGET, VT_EXAMPLE_NOISES, VT_TASK_NOISES, VT_GENERATED = 500, 5, 10, 30


def vt_stall_reason(tokenizer, length: int) -> str | None:
    """Why lm-eval's `ruler_vt` generator would loop forever with this tokenizer at `length`, or None.

    Measures, as lm-eval does and with its own `vt_utils` functions (on draws seeded with CHECK_SEED;
    python and numpy random states restored afterwards), the smallest few-shot example (5 noise
    lines, one 4-hop chain) against its 500-token budget, then the smallest task prompt (10 noise
    lines) with lm-eval's few-shot example against `length`: past either, lm-eval's search may end at
    zero noise lines, and it retries a sample that does not fit without ever giving up.
    """

    from lm_eval.tasks.ruler import vt_utils  # lazy: ≈ 3.4 s with its dependencies; RULER checks only

    def tokens(text: str) -> int:
        return len(tokenizer(text).input_ids)

    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(CHECK_SEED)
    np.random.seed(CHECK_SEED)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # vt_utils prints while it generates
            text, answer = vt_utils.generate_input_output(VT_EXAMPLE_NOISES, 1, 4, is_icl=True)
            example = tokens(f"{text} {answer}") + VT_GENERATED  # as lm-eval measures it
            if example > VT_EXAMPLE_BUDGET:
                return (f"ruler_vt: lm-eval's generator needs its smallest few-shot example within "
                        f"{VT_EXAMPLE_BUDGET} tokens, and this tokenizer makes it {example}, so it would loop "
                        "forever (a byte-level tokenizer cannot run ruler_vt).")
            icl = vt_utils.sys_vartrack_w_noise_random(tokenizer=tokenizer, num_samples=1,
                                                       max_seq_length=VT_EXAMPLE_BUDGET,
                                                       incremental=VT_EXAMPLE_NOISES)[0]
            example = tokens(icl["input"] + " " + " ".join(icl["outputs"]) + "\n\n")
            text, answer = vt_utils.generate_input_output(VT_TASK_NOISES, 1, 4)
            prompt = tokens(f"{text} {answer}") + VT_GENERATED + example
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    if prompt > length:
        return (f"ruler_vt: its smallest prompt with the few-shot example takes {prompt} tokens of this "
                f"tokenizer, more than the length {length}, so lm-eval's generator would loop forever; "
                "run ruler_vt at longer --lengths.")
    return None


# lm-eval's ruler_cwe searches the word count from 10 up (10 of them the common words to find) with a
# generation budget of 120 tokens; when 10 words do not fit, it builds prompts with no common word at
# all (an empty answer, which its metric divides by) or, when not even those fit, retries forever.
CWE_MIN_WORDS, CWE_GENERATED = 10, 120


def cwe_problem_reason(tokenizer, length: int) -> str | None:
    """Why lm-eval's `ruler_cwe` generator cannot make a real sample at `length` with this tokenizer
    (its smallest prompt, 10 words, measured as lm-eval does with its own
    `cwe_utils.generate_input_output` on a draw seeded with CHECK_SEED; random states restored), or
    None. The words drawn change the count a little, so at a length right at the margin lm-eval's own
    draw may still come out empty; its metric then divides by zero, reported by `failure_text`."""

    from lm_eval.tasks.ruler import cwe_utils  # lazy: ≈ 3.9 s with its dependencies; RULER checks only

    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(CHECK_SEED)
    try:
        example, text, answer = cwe_utils.generate_input_output(CWE_MIN_WORDS, length)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    listed = " ".join(f"{i + 1}. {word}" for i, word in enumerate(answer))
    needed = len(tokenizer(example + "\n" + text + " " + listed).input_ids) + CWE_GENERATED
    if needed > length:
        return (f"ruler_cwe: its smallest prompt ({CWE_MIN_WORDS} words and the example) takes {needed} tokens of "
                f"this tokenizer, more than the length {length}, so lm-eval's generator would make samples "
                "without any word to find; run ruler_cwe at longer --lengths.")
    return None


def generator_problem(task: str, tokenizer, length: int) -> str | None:
    """A sentence when lm-eval's generator for `task` cannot make real samples at `length` with this
    tokenizer (ruler_vt, ruler_cwe; see their checks), else None."""
    if task == "ruler_vt":
        return vt_stall_reason(tokenizer, length)
    if task == "ruler_cwe":
        return cwe_problem_reason(tokenizer, length)
    return None


# The lm-eval module whose TEMPLATE (and CONFIG["tokens_to_generate"], where it has one) each task's
# generator fills; the niah tasks generate up to MAX_GEN_TOKENS.
TEMPLATE_MODULES = {"niah": "niah_utils", "ruler_vt": "vt_utils", "ruler_cwe": "cwe_utils",
                    "ruler_fwe": "fwe_utils", "ruler_qa": "qa_utils"}


def template_tokens(task: str, tokenizer) -> int:
    """Tokens of `task`'s prompt template with every field empty (measured with lm-eval's own template
    and this tokenizer) plus the tokens it generates: no prompt of the task is shorter."""

    prefix = next(p for p in TEMPLATE_MODULES if task.startswith(p))
    # importing niah_utils makes nltk try to fetch punkt_tab and print about it: not our message
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        module = importlib.import_module(f"lm_eval.tasks.ruler.{TEMPLATE_MODULES[prefix]}")
    text = re.sub(r"\{[^{}]*\}", "", module.TEMPLATE)
    generated = getattr(module, "CONFIG", {}).get("tokens_to_generate", MAX_GEN_TOKENS)
    return len(tokenizer(text).input_ids) + int(generated)


def check_lengths(tasks: Sequence[str], tokenizer, lengths: Sequence[int]) -> None:
    """UsageError (one sentence) when the shortest length cannot hold a task's template and what it
    generates: lm-eval's generators would search forever for a context that fits (ruler_fwe does)."""
    shortest = min(lengths)
    for task in tasks:
        needed = template_tokens(task, tokenizer)
        if needed >= shortest:
            raise UsageError(f"RULER length {shortest} is too short for {task}: its template and generated "
                             f"answer alone take {needed} tokens of this tokenizer; give --lengths above {needed}.")


# lm-eval generator modules holding random state of their own across calls: cwe_utils draws from a
# module-level random.Random(42) that every generation advances (simple_evaluate's seeds do not reach it).
STATEFUL_GENERATORS = {"ruler_cwe": "lm_eval.tasks.ruler.cwe_utils"}


def fresh_generator(task: str) -> None:
    """Make lm-eval execute the task's generator module anew on its next load (its YAML loader reuses
    a module only while it is in `sys.modules`), so every cell of a task sees the generator as a
    fresh process does: the same prompts for every method and on every resume."""

    if task in STATEFUL_GENERATORS:
        sys.modules.pop(STATEFUL_GENERATORS[task], None)


def rerotates(spec, dynamic_cache: str) -> bool:
    """Whether a cell of `spec` generates on the re-rotated KV cache (`--dynamic-cache rerotate`, a
    dynamic evalharness method; `native` keeps transformers' module and full forwards)."""
    return dynamic_cache == "rerotate" and spec.is_dynamic and spec.method != "native"


def uses_kv_cache(spec, length: int, dynamic_cache: str = "recompute") -> bool:
    """Whether the generation of a cell at `length` runs on the KV cache (`leaderboard.lm`'s rule):
    always for static methods; for dynamic ones when the whole generation, up to length + 128
    tokens, stays within one scale (≤ L), or when they re-rotate the cache."""
    return (not spec.is_dynamic or rerotates(spec, dynamic_cache)
            or spec.scale_at(int(length) + MAX_GEN_TOKENS) == spec.scale_at(1))


def chunks_prefill(spec, length: int, dynamic_cache: str = "recompute") -> bool:
    """Whether `--prefill-chunk` applies to a cell at `length`: its generation runs on the plain KV
    cache (not full forwards, not the re-rotated cache)."""
    return uses_kv_cache(spec, length, dynamic_cache) and not rerotates(spec, dynamic_cache)


def check_dynamic_cache(manifest: dict, dynamic_cache: str, specs=None) -> None:
    """UsageError when the run folder already holds RULER cells of a dynamic method of this run
    (`specs`; None: every method) generated with another `--dynamic-cache` (its rows would mix two
    decodings in one series). The mode of each dynamic cell is in its manifest entry; cells of methods
    this run does not evaluate, and static cells (no mode recorded), never conflict, so rerunning a
    static-only command into a folder that also holds re-rotated cells resumes as usual."""
    dynamic = None if specs is None else {spec.short for spec in specs if spec.is_dynamic}
    for name, entry in manifest.get("cells", {}).items():
        if not name.startswith("ruler|") or entry.get("status") != "done" or "dynamic_cache" not in entry:
            continue
        if dynamic is not None and name.rsplit("|", 3)[1] not in dynamic:  # ruler|model|spec|task|length
            continue
        if entry["dynamic_cache"] != dynamic_cache:
            raise UsageError(f"this folder's RULER cell {name} was generated with --dynamic-cache "
                             f"{entry['dynamic_cache']}; rerun with --dynamic-cache {entry['dynamic_cache']} or "
                             f"write to another --out.")


def forward_tokens_bound(length: int, samples: int, kv_cache: bool) -> int:
    """Tokens the forwards of one cell process, at most: a prompt of P ≤ length − 128 tokens, then
    up to 128 greedy steps; with the KV cache one prefill + one token per step (≤ length per
    sample), without it a full forward of P + i tokens at step i (≤ 128 · length per sample)."""
    return int(samples) * int(length) * (1 if kv_cache else MAX_GEN_TOKENS)


class RulerCells(Task):
    """Cells: (spec, task, length), length-major (an interrupted run has whole lengths for every
    method), then spec, then task. Rows: ruler_samples.csv (one per sample) and ruler.csv (one per
    cell), appended when the cell finishes; see the module docstring for the score and the rules."""

    name = "ruler"
    table = "ruler"

    def __init__(self, model_name: str, tokenizer, specs, tasks: Sequence[str], lengths: Sequence[int], out_dir,
                 samples: int = 10, seed: int | None = None, batch_size: int = 1, show_progress: bool = True,
                 save_samples: bool = False, dynamic_cache: str = "recompute",
                 prefill_chunk: int | str | None = None):
        self.dynamic_cache, self.prefill_chunk = dynamic_cache, prefill_chunk
        self.model_name, self.tokenizer, self.specs = model_name, tokenizer, list(specs)
        self.tasks, self.lengths = list(tasks), [int(n) for n in lengths]
        self.out_dir, self.samples, self.batch_size = out_dir, int(samples), int(batch_size)
        self.seeds, self.show_progress, self.save_samples = lm_eval_seeds(seed), show_progress, save_samples
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._managers: dict[int, object] = {}
        self._tasks: dict[tuple[str, int], object] = {}  # lm-eval Task objects of the current length
        self._lm = None  # (spec, length, wrapped model) of the last cell

    def _row_key(self, spec, task: str, length: int) -> dict:
        return dict(key_row(self.model_name, spec), task=task, context_length=int(length))

    def cells(self, session) -> list[Cell]:
        cells = []
        for length in self.lengths:
            for spec in self.specs:
                kv_cache = uses_kv_cache(spec, length, self.dynamic_cache)
                chunkable = chunks_prefill(spec, length, self.dynamic_cache)
                cells += [Cell(self.name, spec, (task, length),
                               cell_name("ruler", self.model_name, spec.short, task, length),
                               tokens=forward_tokens_bound(length, self.samples, kv_cache),
                               length=length + MAX_GEN_TOKENS, kv_cache=kv_cache, chunkable=chunkable)
                          for task in self.tasks]
        return cells

    def pending(self, cell: Cell, done: set) -> bool:
        return cell_key(self.table, self._row_key(cell.spec, *cell.unit)) not in done

    def _task_manager(self, length: int):
        """One lm-eval TaskManager per length over lm-eval's RULER folder only, with the model's
        tokenizer and the length as task metadata."""
        from lm_eval.tasks import TaskManager  # lazy: ≈ 1.7 s; only when a RULER cell runs

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="evalharness-ruler-")
            self.tokenizer.save_pretrained(self._tmp.name)
        if length not in self._managers:
            self._managers[length] = TaskManager(
                include_path=str(lm_eval_task_folder()), include_defaults=False,
                metadata={"tokenizer": self._tmp.name, "max_seq_lengths": [int(length)]})
        return self._managers[length]

    def _lm_eval_task(self, task: str, length: int):
        """lm-eval's Task with its generated samples, built once per (task, length) and shared by every
        method's cell: generated as `simple_evaluate` would (python, numpy and torch seeded with
        lm-eval's seeds first, the generator module fresh), so a resumed run regenerates the same
        prompts; only the current length's tasks are kept (cells are length-major)."""
        if (task, length) not in self._tasks:
            if any(held != length for _, held in self._tasks):
                self._tasks.clear()
            random.seed(self.seeds["random_seed"])
            np.random.seed(self.seeds["numpy_random_seed"])
            torch.manual_seed(self.seeds["torch_random_seed"])
            fresh_generator(task)
            self._tasks[task, length] = self._task_manager(length).load([task])["tasks"][task]
        return self._tasks[task, length]

    def _wrapped(self, session, spec, length: int):
        if self._lm is None or self._lm[:2] != (spec, length):
            batch = 1 if spec.is_dynamic else self.batch_size
            chunk = (prefill_chunk_for(session.model, self.prefill_chunk, length + MAX_GEN_TOKENS, kv_cache=True)
                     if chunks_prefill(spec, length, self.dynamic_cache) else None)
            self._lm = (spec, length, wrap_model(session.model, self.tokenizer, length + MAX_GEN_TOKENS, batch,
                                                 self.show_progress, use_kv_cache=not spec.is_dynamic,
                                                 rerotate=rerotates(spec, self.dynamic_cache), prefill_chunk=chunk))
        return self._lm[2]

    def run(self, cell: Cell, pending, session) -> dict:
        import lm_eval  # lazy, as in `leaderboard/lm.py`


        task, length = cell.unit
        spec = cell.spec
        start = time.monotonic()
        problem = generator_problem(task, self.tokenizer, length)
        if problem:
            raise RulerTaskFailure(problem)
        with delegated_failures(lambda exc: RulerTaskFailure(failure_text(task, exc))):
            lm = self._wrapped(session, spec, length)
            lm.progress = session.progress
            with hub.forced_offline(hub.work_offline()), one_process_view():
                generated = self._lm_eval_task(task, length)
                results = lm_eval.simple_evaluate(model=lm, tasks=[generated], limit=self.samples,
                                                  task_manager=self._task_manager(length), log_samples=True,
                                                  **self.seeds)
            scores, score, stderr = cell_scores(results, task, length)
        path = provenance_path(self.out_dir, spec, f"{task}_{length}")
        save_results(path, results, {"spec": str(spec), "task": task, "context_length": length,
                                      "max_length": length + MAX_GEN_TOKENS, "limit": self.samples,
                                      "seeds": self.seeds}, self.save_samples,
                     {self._tmp.name: f"{self.model_name} tokenizer (temporary copy)"})
        key = self._row_key(spec, task, length)
        session.store.append("ruler_samples", [dict(key, doc_id=doc, score=value) for doc, value in scores])
        session.store.append(self.table, [dict(key, score=score, n=len(scores), stderr=stderr)])
        info = {"seconds": round(time.monotonic() - start, 1), "score": score, "n": len(scores),
                "lm_eval_json": in_run_folder(self.out_dir, path), "seeds": self.seeds}
        if spec.is_dynamic:
            info["dynamic_cache"] = "rerotate" if rerotates(spec, self.dynamic_cache) else "recompute"
        return info

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._managers.clear()
        self._tasks.clear()
        self._lm = None


__all__ = ["ALIASES", "DOWNLOAD_TASKS", "MAX_GEN_TOKENS", "OFFLINE_TASKS", "RulerCells", "RulerTaskFailure",
           "cell_scores", "check_lengths", "chunks_prefill", "cwe_problem_reason", "generator_problem",
           "mean_and_stderr", "resolve_tasks", "sample_scores", "uses_kv_cache", "vt_stall_reason"]
