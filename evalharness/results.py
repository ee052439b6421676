"""Result rows, CSV schemas, the append-only store and the run manifest.

Every table is tidy (one row per observation) and starts with the key columns
`model, method, factor, original_ctx`. The store rewrites a table atomically (temp file +
rename) on each append, so a kill never leaves a torn CSV, and `done` answers "is this cell
already computed?" so a rerun into the same folder resumes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

KEY_COLUMNS = ["model", "method", "factor", "original_ctx"]

SCHEMAS: dict[str, list[str]] = {
    "perplexity_docs": KEY_COLUMNS + [
        "dataset", "doc_id", "doc_tokens", "protocol", "context_length", "stride", "scored_tokens",
        "nll_sum", "n_windows", "ppl", "ppl_window_mean",
    ],
    "perplexity": KEY_COLUMNS + [
        "dataset", "protocol", "context_length", "stride", "n_docs", "scored_tokens", "ppl",
        "ppl_window_mean", "ppl_ci_low", "ppl_ci_high",
    ],
    "passkey": KEY_COLUMNS + [
        "context_length", "prompt_tokens", "depth", "trial", "seed", "scoring", "passkey", "continuation", "correct",
        "key_forced_argmax",
    ],
    "leaderboard": KEY_COLUMNS + ["task", "metric", "value", "stderr", "num_fewshot", "n_samples"],
}

# Columns that identify one cell of each table (rows with equal values are the same observation).
CELL_COLUMNS: dict[str, list[str]] = {
    "perplexity_docs": KEY_COLUMNS + ["dataset", "doc_id", "protocol", "context_length", "stride"],
    "passkey": KEY_COLUMNS + ["context_length", "depth", "trial", "seed", "scoring"],
    "leaderboard": KEY_COLUMNS + ["task", "metric"],
}


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends (main thread only), so Ctrl-C or a polite kill lets
    the current write finish; the handler runs right after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and os.replace: readers see old or new, never half.
    SIGINT/SIGTERM wait until the file is in place."""
    with signals_deferred():
        _atomic_write(Path(path), text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; result files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_table(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g"))


def _normalise_key(value):
    """Make CSV round-trips compare equal to fresh values (1 vs 1.0 vs '1')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


class ResultStore:
    """The tables of one run folder."""

    def __init__(self, out_dir: str | os.PathLike, resume_from: Sequence[str | os.PathLike] = ()):
        """`resume_from`: other run folders whose finished cells count as done here too (the main
        folder, for a data-parallel rank writing its own shard)."""
        self.out_dir = Path(out_dir)
        self.resume_from = [ResultStore(folder) for folder in resume_from]

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed writer left behind. Only the folder's single writer may call
        this, before it writes (another process's temp file may be in flight otherwise)."""
        for stale in self.out_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def path(self, table: str) -> Path:
        return self.out_dir / f"{table}.csv"

    def read(self, table: str) -> pd.DataFrame:
        path = self.path(table)
        if not path.exists():
            return pd.DataFrame(columns=SCHEMAS[table])
        return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"doc_id": str, "continuation": str})

    def cell_key(self, table: str, row: dict) -> tuple:
        return tuple(_normalise_key(row.get(column)) for column in CELL_COLUMNS[table])

    def done(self, table: str) -> set[tuple]:
        """Keys of every cell already in the table."""
        frame = self.read(table)
        done = {self.cell_key(table, row) for row in frame.to_dict("records")}
        for other in self.resume_from:
            done |= other.done(table)
        return done

    def append(self, table: str, rows: Sequence[dict]) -> None:
        """Add rows (replacing rows of the same cell) and rewrite the table atomically."""
        if not rows:
            return
        frame = self.read(table)
        new = pd.DataFrame(list(rows), columns=SCHEMAS[table])
        if len(frame) and table in CELL_COLUMNS:
            new_keys = {self.cell_key(table, row) for row in new.to_dict("records")}
            keep = [self.cell_key(table, row) not in new_keys for row in frame.to_dict("records")]
            frame = frame[keep]
        frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
        write_table(self.path(table), frame.reindex(columns=SCHEMAS[table]))

    def replace(self, table: str, frame: pd.DataFrame) -> None:
        """Rewrite the table with `frame`'s rows (a column the frame lacks, e.g. one added to the
        schema after the rows were written, is left empty)."""
        write_table(self.path(table), frame.reindex(columns=SCHEMAS[table]))


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def environment() -> dict:
    import torch

    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "datasets": _version("datasets"),
        "lm_eval": _version("lm_eval"),
        "evalharness": _version("evalharness"),
        "device_name": device,
        "cpu_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


class Manifest:
    """manifest.json of a run folder: what ran, with what, and how each cell ended."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"runs": [], "cells": {}}

    def start(self, command: list[str], args: dict, extra: dict) -> None:
        self.data["runs"].append(
            {
                "command": command,
                "args": args,
                "environment": environment(),
                **extra,
                "start": now(),
                "end": None,
            }
        )
        self.save()

    def cell(self, name: str, status: str, error: str | None = None, **info) -> None:
        entry = {"status": status, "time": now(), **info}
        if error is not None:
            entry["error"] = error
        self.data["cells"][name] = entry
        self.save()

    def finish(self, status: str = "finished") -> None:
        if self.data["runs"]:
            self.data["runs"][-1]["end"] = now()
            self.data["runs"][-1]["status"] = status
        self.save()

    def failed_cells(self) -> dict:
        return {k: v for k, v in self.data["cells"].items() if v["status"] == "failed"}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")


# What one evaluation cell may raise without stopping the run: NaN/inf (NonFiniteError is an
# ArithmeticError), out of memory (torch.OutOfMemoryError is a RuntimeError), bad lengths.
CELL_ERRORS = (ArithmeticError, RuntimeError, ValueError)


def record_failure(manifest: "Manifest", failed: list, cell: str, error: BaseException | str) -> None:
    """Note a failed cell in the manifest and the run's list, and give back cached GPU memory so
    the next cell starts clean."""
    failed.append(cell)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    manifest.cell(cell, "failed", error=text)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def key_row(model: str, spec) -> dict:
    """The common key columns of a row for a model name and a resolved ScalingSpec."""
    return {"model": model, "method": spec.label, "factor": spec.factor, "original_ctx": spec.original_ctx}
