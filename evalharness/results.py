"""Result rows, CSV schemas, the result store (rows added per finished cell by atomic rewrites) and the run manifest.

Every table is tidy (one row per observation) and starts with the key columns
`model, method, factor, original_ctx`. The store rewrites a table atomically (temp file +
rename) on each append, so a kill never leaves a torn CSV, and `done` answers "is this cell
already computed?" so a rerun into the same folder resumes.

Concurrency: every read-modify-write of a run folder (a table append, an aggregate, a manifest
update) holds the folder's lock (`filelock`, `OUT/.evalharness.lock`) and re-reads the file
inside it, so any number of processes may write into one folder and no row is lost; a process
that waits long for the lock says whom it waits for. Data-parallel ranks write their own shard
folders under the same lock.

Damage: a table whose last row was cut off (a crash or a full disk outside these atomic writes)
is read without that row, with a warning, and the cell is recomputed; a damaged `manifest.json`
is rebuilt from the tables (the truth) with a warning. A damaged file is kept as
`NAME.damaged-<UTC time>` before anything replaces it. What cannot be repaired raises
`ResultFolderError`, one sentence naming the file; a write that fails (disk full) raises
`ResultWriteError`, naming the file, with the previous version of that file intact.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import pandas as pd
from filelock import FileLock, Timeout

from . import registry
from .columns import BOOL, KEY_COLUMNS
from .errors import EvalHarnessError

# Every task's result tables (each task package's `schema`), in registry order; the columns that
# identify one cell of each table (rows with equal values are the same observation).
SCHEMAS: dict[str, list[str]] = registry.table_schemas()
CELL_COLUMNS: dict[str, list[str]] = registry.cell_columns()
VALUE_RANGES: dict[str, dict[str, tuple | str]] = registry.value_ranges()


LOCK_NAME = ".evalharness.lock"
LOCK_NOTICE_AFTER_S = 5.0  # wait this long for a folder's lock before saying whom we wait for


class ResultFolderError(EvalHarnessError):
    """A run folder file that cannot be read or repaired (one sentence naming the file). Not a
    ValueError on purpose: cell loops catch ValueError as a failed cell, this must stop the run."""


class ResultWriteError(OSError):
    """A result file could not be written (e.g. the disk is full); the previous version is intact."""


def warn(message: str) -> None:
    """One warning line on stderr (repairs the user should know about)."""
    print(f"warning: {message}", file=sys.stderr)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _lock_holders(folder: Path) -> str:
    """Who else is writing into `folder`: the unfinished runs of its manifest whose process lives."""
    holders = []
    for run in read_manifest(folder / "manifest.json", quiet=True).get("runs", []):
        pid = run.get("pid") if isinstance(run, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and run.get("end") is None and _pid_alive(pid):
            command = " ".join(str(part) for part in run.get("command") or [])
            holders.append(f"pid {pid} ({command})" if command else f"pid {pid}")
    return "; ".join(holders) or "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike):
    """Hold the run folder's lock (re-entrant within a process; released on exit, and by the OS
    when a holder dies). Waits as long as needed, saying whom it waits for after a few seconds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.resolve() / LOCK_NAME), is_singleton=True)
    try:
        lock.acquire(timeout=LOCK_NOTICE_AFTER_S)
    except Timeout:
        print(f"waiting for {_lock_holders(folder)} to finish writing into {folder} ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
    # The writer's pid in the temp name tells a later cleanup whether its writer still lives.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; result files are for everyone to read
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, ResultWriteError):
            reason = exc.strerror or str(exc)
            raise ResultWriteError(exc.errno, f"could not write {path} ({reason}); its previous version "
                                   "and every row written before are intact — free the space or fix the "
                                   "folder and rerun the same command to resume") from exc
        raise


def _stale_temp_file(path: Path) -> bool:
    """A temp file whose writer is gone: its pid (`.NAME.PID.RANDOM.tmp`) is not running, or it
    has no pid (written by an older version)."""
    parts = path.name[1:].rsplit(".", 3)
    if len(parts) == 4 and parts[1].isdigit():
        return not _pid_alive(int(parts[1]))
    return True


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; ResultFolderError (one sentence) when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResultFolderError(f"{path} cannot be read ({exc.strerror or exc}); fix its permissions or move "
                                "it away and rerun.") from None


def _keep_damaged(path: Path) -> Path:
    """Copy a damaged file to `NAME.damaged-<UTC time>` (never overwriting an earlier copy)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{counter}")
    shutil.copy2(path, target)
    return target


def write_table(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g"))


def normalise_key(value):
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


def _complete_prefix(path: Path, text: str) -> tuple[int, str | None]:
    """Length of the part of a CSV text made of whole records, and what was wrong with the rest.

    A table this module writes ends with a newline and every record has the header's field count.
    A cut-off last record (no final newline, or an unclosed quote) is repairable: it is left out.
    A record with the wrong field count before the end is not: ResultFolderError."""
    lines = text.splitlines(keepends=True)
    consumed = 0

    def feed():
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line

    reader = csv.reader(feed(), strict=True)
    good_end, header, number = 0, None, 0
    try:
        for number, record in enumerate(reader, 1):
            if header is None:
                header = record
            elif not record:  # a blank line, as pandas reads it: nothing
                pass
            elif len(record) != len(header):
                if consumed == len(text) and not text.endswith("\n"):
                    return good_end, "its last row is incomplete"
                raise ResultFolderError(f"{path} row {number} has {len(record)} fields where the header has "
                                        f"{len(header)}; it was not written by this harness intact — move "
                                        "it away (or fix that row) and rerun.")
            if consumed == len(text) and not text.endswith("\n"):
                return good_end, "its last row is incomplete" if number > 1 else "its header is incomplete"
            good_end = consumed
    except csv.Error:
        return good_end, "its last row is incomplete"
    return good_end, None


_WARNED: set[tuple] = set()


def read_csv_text(path: Path, table: str) -> tuple[pd.DataFrame, str | None]:
    """A table file as a frame of its complete rows, and the damage found (None if intact).

    Raises ResultFolderError for a file that is not a table (not UTF-8, no key columns, a broken
    row before the end)."""
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultFolderError(f"{path} is not UTF-8 text (byte {exc.start}), so it is not a table this "
                                "harness wrote; move it away and rerun.") from None
    end, damage = _complete_prefix(path, text)
    if end == 0:
        return pd.DataFrame(columns=SCHEMAS[table]), damage or ("it is empty" if not text.strip() else None)
    frame = pd.read_csv(io.StringIO(text[:end]), keep_default_na=False, na_values=[""],
                        dtype={"doc_id": str, "continuation": str})
    missing = [column for column in KEY_COLUMNS if column not in frame.columns]
    if missing:
        raise ResultFolderError(f"{path} has no {', '.join(missing)} column, so it is not a {table} table; "
                                "move it away and rerun.")
    check_values(path, table, frame)
    return frame, damage


def check_values(path: Path, table: str, frame: pd.DataFrame) -> None:
    """ResultFolderError naming the first value outside its column's range (`VALUE_RANGES`): text in a
    number column, a negative count, a fraction above 1, ... Empty cells (not measured) pass."""
    for column, bounds in VALUE_RANGES.get(table, {}).items():
        if column not in frame.columns:
            continue
        raw = frame[column]
        if bounds == BOOL:
            bad = raw.notna() & ~raw.astype(str).isin(["True", "False"])
            valid = "True or False"
        else:
            low, high = bounds
            values = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & (values.isna() | (values < low if low is not None else False)
                                 | (values > high if high is not None else False))
            valid = ("a number" + (f" ≥ {low:g}" if low is not None else "")
                     + (f" and ≤ {high:g}" if high is not None else ""))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = raw.iloc[row]
            shown = repr(value) if isinstance(value, str) else f"{value}"
            raise ResultFolderError(f"{path} line {row + 2} has {column} = {shown} where this harness "
                                    f"writes {valid}; it was not written by this harness intact — move it away "
                                    "(or fix that row) and rerun.")
def cell_key(table: str, row: dict) -> tuple:
    """The identity of a row's cell in `table` (`CELL_COLUMNS`), normalised for CSV round trips."""
    return tuple(normalise_key(row.get(column)) for column in CELL_COLUMNS[table])


class ResultStore:
    """The tables of one run folder."""

    def __init__(self, out_dir: str | os.PathLike, resume_from: Sequence[str | os.PathLike] = (),
                 lock_dir: str | os.PathLike | None = None):
        """`resume_from`: other run folders whose finished cells count as done here too (the main
        folder, for a data-parallel rank writing its own shard). `lock_dir`: the folder whose lock
        guards writes here (default `out_dir`; the main folder for a rank's shard)."""
        self.out_dir = Path(out_dir)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else self.out_dir
        self.resume_from = [ResultStore(folder) for folder in resume_from]

    def locked(self):
        """Context manager: hold this folder's lock (re-entrant) across a read-modify-write."""
        return folder_lock(self.lock_dir)

    def remove_stale_temp_files(self) -> None:
        """Delete temp files left behind by writers that are no longer running."""
        if not self.out_dir.is_dir():
            return
        with self.locked():
            for stale in self.out_dir.glob(".*.tmp"):
                if _stale_temp_file(stale):
                    stale.unlink(missing_ok=True)

    def path(self, table: str) -> Path:
        return self.out_dir / f"{table}.csv"

    def _load(self, table: str) -> tuple[pd.DataFrame, str | None]:
        path = self.path(table)
        if not path.exists():
            return pd.DataFrame(columns=SCHEMAS[table]), None
        frame, damage = read_csv_text(path, table)
        frame = upgrade_columns(table, frame)
        if damage:
            stat = path.stat()
            if (str(path), stat.st_size, stat.st_mtime_ns) not in _WARNED:
                _WARNED.add((str(path), stat.st_size, stat.st_mtime_ns))
                warn(f"{path}: {damage} (cut off by a crash or a full disk); reading the {len(frame)} "
                     "complete rows, the missing cell will be recomputed and the damaged file kept as "
                     f"{path.name}.damaged-<time> when the table is next written.")
        return frame, damage

    def read(self, table: str) -> pd.DataFrame:
        """The table's complete rows (an empty frame with the schema's columns if there is none)."""
        return self._load(table)[0]

    def _write(self, table: str, frame: pd.DataFrame, damage: str | None) -> None:
        if damage:
            _keep_damaged(self.path(table))
        write_table(self.path(table), frame.reindex(columns=SCHEMAS[table]))

    def cell_key(self, table: str, row: dict) -> tuple:
        return cell_key(table, row)

    def done(self, table: str) -> set[tuple]:
        """Keys of every cell already in the table."""
        frame = self.read(table)
        done = {self.cell_key(table, row) for row in frame.to_dict("records")}
        for other in self.resume_from:
            done |= other.done(table)
        return done

    def append(self, table: str, rows: Sequence[dict]) -> None:
        """Add rows (replacing rows of the same cell) and rewrite the table atomically, re-reading
        it under the folder's lock so rows another process wrote meanwhile are kept."""
        if not rows:
            return
        new = pd.DataFrame(list(rows), columns=SCHEMAS[table])
        with self.locked():
            frame, damage = self._load(table)
            if len(frame) and table in CELL_COLUMNS:
                new_keys = {self.cell_key(table, row) for row in new.to_dict("records")}
                keep = [self.cell_key(table, row) not in new_keys for row in frame.to_dict("records")]
                frame = frame[keep]
            frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
            self._write(table, frame, damage)

    def replace(self, table: str, frame: pd.DataFrame) -> None:
        """Rewrite the table with `frame`'s rows (a column the frame lacks, e.g. one added to the
        schema after the rows were written, is left empty; a damaged previous version is kept aside)."""
        with self.locked():
            damage = self._load(table)[1] if self.path(table).exists() else None
            self._write(table, frame, damage)

    def derive(self, table: str, source: str, function) -> None:
        """Rewrite `table` as `function(source table)` with both read and write under the lock, so
        an aggregate never reflects a stale view of its source."""
        with self.locked():
            self.replace(table, function(self.read(source)))


def read_table(results_dir: str | os.PathLike, table: str) -> pd.DataFrame:
    """`<dir>/<table>.csv` through `ResultStore.read`, or an empty frame with the schema's columns
    when the file is missing or unreadable (summaries and figures never fail a run)."""
    try:
        return ResultStore(results_dir).read(table)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return pd.DataFrame(columns=SCHEMAS.get(table, []))


def upgrade_columns(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """A table written before a column existed, in today's terms: each task package's schema
    `upgrade(table, frame)`, where it has one, for its own tables."""
    for module in registry.schema_modules():
        if table in module.SCHEMAS and hasattr(module, "upgrade"):
            frame = module.upgrade(table, frame)
    return frame


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    try:
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
    import torch  # lazy: ≈ 1.4 s; reading and writing tables (`plot`, notebooks) never needs it

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


def _manifest_problem(data) -> str | None:
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    if not isinstance(data.get("runs"), list) or not isinstance(data.get("cells"), dict):
        return "it lacks its 'runs' list or 'cells' object"
    return None


def read_manifest(path: str | os.PathLike, quiet: bool = False) -> dict:
    """A manifest's content, without writing anything: a damaged one reads as rebuilt from the
    tables next to it (with a warning unless `quiet`); a missing one as empty."""
    path = Path(path)
    data, problem = _load_manifest(path)
    if problem is None:
        return data
    if not quiet:
        warn(f"{path} is damaged ({problem}); reading it as rebuilt from the tables.")
    return rebuild_manifest(path.parent, problem, None)


def _load_manifest(path: Path) -> tuple[dict, str | None]:
    if not path.exists():
        return {"runs": [], "cells": {}}, None
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, f"not UTF-8 text at byte {exc.start}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    problem = _manifest_problem(data)
    return (data, None) if problem is None else ({}, problem)


def rebuild_manifest(folder: Path, problem: str, damaged_copy: str | None) -> dict:
    """A manifest rebuilt from the tables of `folder`: the runs and cell statuses it held are
    unknown; what was computed is what the tables hold (resuming reads only the tables)."""
    store = ResultStore(folder)
    tables = {}
    for table in SCHEMAS:
        if store.path(table).exists():
            frame = store.read(table)
            rows = frame.to_dict("records")
            cells = len({store.cell_key(table, row) for row in rows}) if table in CELL_COLUMNS else len(rows)
            tables[table] = {"rows": len(frame), "cells": cells}
    return {"runs": [], "cells": {},
            "rebuilt": {"time": now(), "reason": problem, "damaged_copy": damaged_copy, "tables": tables}}


class Manifest:
    """manifest.json of a run folder: what ran, with what, and how each cell ended.

    Every change re-reads the file under the folder's lock, changes it and writes it atomically,
    so processes sharing the folder never erase each other's runs or cells. A damaged file is
    kept as `manifest.json.damaged-<time>` and rebuilt from the tables, with a warning."""

    def __init__(self, out_dir: str | os.PathLike, lock_dir: str | os.PathLike | None = None):
        self.path = Path(out_dir) / "manifest.json"
        self.lock_dir = Path(lock_dir) if lock_dir is not None else Path(out_dir)
        self.run_id: str | None = None
        self.data = self._current()

    def _current(self) -> dict:
        """The file's content; a damaged file is set aside and rebuilt (under the lock)."""
        data, problem = _load_manifest(self.path)
        if problem is None:
            return data
        with folder_lock(self.lock_dir):
            data, problem = _load_manifest(self.path)  # another process may have repaired it
            if problem is None:
                return data
            kept = _keep_damaged(self.path)
            data = rebuild_manifest(self.path.parent, problem, kept.name)
            self._write(data)
        warn(f"{self.path} was damaged ({problem}); rebuilt it from the tables (kept the damaged file as "
             f"{kept.name}).")
        return data

    def update(self, change) -> None:
        """Apply `change(data)` to the file's current content under the lock and save it."""
        with folder_lock(self.lock_dir):
            self.data = self._current()
            change(self.data)
            self._write(self.data)

    def start(self, command: list[str], args: dict, extra: dict) -> None:
        self.run_id = f"{os.getpid()}-{now()}"
        run = {"command": command, "args": args, "environment": environment(), **extra, "start": now(),
               "end": None, "pid": os.getpid(), "run_id": self.run_id}
        self.update(lambda data: data["runs"].append(run))

    def cell(self, name: str, status: str, error: str | None = None, **info) -> None:
        entry = {"status": status, "time": now(), **info}
        if error is not None:
            entry["error"] = error
        self.update(lambda data: data["cells"].__setitem__(name, entry))

    def merge_cells(self, cells: dict) -> None:
        """Add or replace many cells at once (a data-parallel shard's)."""
        self.update(lambda data: data["cells"].update(cells))

    def finish(self, status: str = "finished") -> None:
        def close(data: dict) -> None:
            if self.run_id is None:  # a manifest object that did not start a run closes the last one
                run = data["runs"][-1] if data["runs"] else None
            else:
                run = next((run for run in data["runs"] if run.get("run_id") == self.run_id), None)
            if run is not None:
                run["end"] = now()
                run["status"] = status

        self.update(close)

    def failed_cells(self) -> dict:
        self.data = self._current()
        return {k: v for k, v in self.data["cells"].items() if v["status"] == "failed"}

    def _write(self, data: dict) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def check_run_folder(folder: str | os.PathLike) -> None:
    """Before any heavy work: every table and the manifest of an existing run folder can be read
    or repaired (warnings say what will be repaired); raises ResultFolderError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    store = ResultStore(folder)
    for table in SCHEMAS:
        if store.path(table).exists():
            store.read(table)
    read_manifest(folder / "manifest.json")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def key_row(model: str, spec) -> dict:
    """The common key columns of a row for a model name and a resolved ScalingSpec."""
    return {"model": model, "method": spec.label, "factor": spec.factor, "original_ctx": spec.original_ctx}
